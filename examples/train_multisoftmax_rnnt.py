"""Train a multilingual RNN-T: multi-softmax with LID head (Joshi et al. 2021) or a baseline.

    python examples/train_multisoftmax_rnnt.py \
        model.train_ds.manifest_filepath=[en_train.json,hi_train.json] \
        model.validation_ds.manifest_filepath=[en_dev.json,hi_dev.json] \
        trainer.max_steps=100000

Baselines: ``--config-name vanilla_rnnt`` / ``--config-name onehot_rnnt`` (or
``model.architecture=vanilla``); LSP: ``model.language_specific_prediction=true``.
Every manifest line carries ``lang``; each training batch holds one language, drawn ∝ hours
(``model.train_ds.mixing``). The final model is written to ``<exp_dir>/<name>.nemo``.
"""

import os

import lightning.pytorch as pl
from nemo.core.config import hydra_runner
from nemo.utils.exp_manager import exp_manager

from nemo_tl.models.multisoftmax_rnnt import MultiSoftmaxRNNTModel

CONF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "conf")


@hydra_runner(config_path=CONF, config_name="multisoftmax_rnnt")
def main(cfg):
    trainer = pl.Trainer(**cfg.trainer)
    log_dir = exp_manager(trainer, cfg.get("exp_manager", None))
    model = MultiSoftmaxRNNTModel(cfg=cfg.model, trainer=trainer)
    trainer.fit(model)
    if cfg.model.get("test_ds") is not None and cfg.model.test_ds.get("manifest_filepath"):
        trainer.test(model)
    path = os.path.join(str(log_dir), f"{cfg.name}.nemo")
    model.save_to(path)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
