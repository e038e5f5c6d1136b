"""Train a multilingual RNN-T: multi-softmax with LID head (Joshi et al. 2021) or a baseline.

    python examples/train_multisoftmax_rnnt.py \
        model.train_ds.manifest_filepath=[en_train.json,hi_train.json] \
        model.validation_ds.manifest_filepath=[en_dev.json,hi_dev.json] \
        trainer.max_steps=100000

Baselines: ``--config-name vanilla_rnnt`` / ``--config-name onehot_rnnt`` (or
``model.architecture=vanilla``); LSP: ``model.language_specific_prediction=true``.
Every manifest line carries ``lang``; each training batch holds one language, drawn ∝ hours
(``model.train_ds.mixing``). The final model is written to ``save_to`` (default ``<exp_dir>/<name>.nemo``).

A pretrained start, either way:

    # the base's preprocessor and encoder (CTC or RNN-T, chars or BPE; .nemo or a NeMo name); an RNN-T base
    # also starts each language's embedding and joint rows of the labels it shares
    python examples/train_multisoftmax_rnnt.py ... '~model.preprocessor' '~model.encoder' \
        +model.transfer.base_model=en_ctc.nemo +model.transfer.freeze_encoder_blocks=2
    # NeMo's own keys, into the config's architecture (shapes must match; include/exclude as in NeMo)
    python examples/train_multisoftmax_rnnt.py ... +init_from_nemo_model=en_ctc.nemo
    python examples/train_multisoftmax_rnnt.py ... \
        '+init_from_pretrained_model={base: {name: stt_en_conformer_ctc_small, include: [encoder]}}'
"""

import os

import lightning.pytorch as pl
from nemo.core.config import hydra_runner
from nemo.utils.exp_manager import exp_manager

from nemo_tl.models.multisoftmax_rnnt import MultiSoftmaxRNNTModel
from nemo_tl.utils.scripts import output_path
from nemo_tl.utils.training import quiet_restore_logs

CONF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "conf")


@hydra_runner(config_path=CONF, config_name="multisoftmax_rnnt")
def main(cfg):
    quiet_restore_logs()  # NeMo logs a restored model's dataset configs, one label a line
    trainer = pl.Trainer(**cfg.trainer)
    log_dir = exp_manager(trainer, cfg.get("exp_manager", None))
    save_to = output_path(cfg, log_dir)  # checked before training: an unwritable path stops here
    model = MultiSoftmaxRNNTModel(cfg=cfg.model, trainer=trainer)
    model.maybe_init_from_pretrained_checkpoint(cfg)  # init_from_nemo_model / init_from_pretrained_model
    trainer.fit(model)
    if cfg.model.get("test_ds") is not None and cfg.model.test_ds.get("manifest_filepath"):
        trainer.test(model)
    model.save_to(save_to)  # atomic
    print(f"saved: {save_to}")


if __name__ == "__main__":
    main()
