"""Fine-tune a pretrained RNN-T, TDT or hybrid RNN-T/CTC model to a new language, accent or domain.

    python -m nemo_tl.transfer.tokenizer de_train.json --out tokenizers/de_bpe256 --vocab-size 256
    python examples/finetune_rnnt.py \
        model.transfer.base_model=stt_en_fastconformer_transducer_large model.tokenizer.dir=tokenizers/de_bpe256 \
        model.train_ds.manifest_filepath=de_train.json 'model.validation_ds.manifest_filepath=[de_dev.json,en_dev.json]'

The model class follows the base's class (EncDecRNNTBPEModel, TDT included → TransferRNNTBPEModel;
EncDecHybridRNNTCTCBPEModel → TransferHybridRNNTCTCBPEModel; a character EncDecRNNTModel →
TransferRNNTModel, with ``model.labels`` in place of ``model.tokenizer``). ``model.transfer``:
vocabulary keep_shared | same | reinit, new_label_init zero | random | compose, freeze_encoder_blocks k
(a FastConformer's blocks are [pre_encode, *layers]), reinitialize (the from-scratch control). Replay
and per-manifest validation work as in ``examples/finetune_ctc.py``. The final model is saved to
``save_to`` (default ``<exp_dir>/<name>.nemo``).
"""

import lightning.pytorch as pl
from nemo.core.config import hydra_runner
from nemo.utils.exp_manager import exp_manager
from omegaconf import OmegaConf

from nemo_tl.utils.atomic import atomic_save_to
from nemo_tl.utils.scripts import final_report, output_path, transfer_model
from nemo_tl.utils.training import quiet_restore_logs


@hydra_runner(config_path="../conf", config_name="fastconformer_rnnt_finetune")
def main(cfg):
    quiet_restore_logs()
    trainer = pl.Trainer(**cfg.trainer)
    log_dir = exp_manager(trainer, cfg.get("exp_manager", None))
    save_to = output_path(cfg, log_dir)  # checked before training: an unwritable path stops here
    model = transfer_model(cfg.model, trainer, heads="rnnt")
    print(f"{type(model).__name__}: {model.transfer_report}")
    trainer.fit(model)
    atomic_save_to(model, save_to)
    print(f"saved: {save_to}")
    print(OmegaConf.to_yaml(model.cfg.transfer))
    print("final greedy WER and CER per validation set:")
    print(final_report(model))


if __name__ == "__main__":
    main()
