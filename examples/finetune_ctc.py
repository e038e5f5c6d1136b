"""Fine-tune a pretrained CTC model (QuartzNet, or a BPE FastConformer) to a new language, accent or domain.

    python examples/finetune_ctc.py model.transfer.base_model=base.nemo \
        model.train_ds.manifest_filepath=train.json model.validation_ds.manifest_filepath=dev.json \
        trainer.max_epochs=5

Replay against forgetting (target + a share of source data), WER reported per dev set:

    python examples/finetune_ctc.py model.transfer.base_model=base.nemo \
        'model.train_ds.manifest_filepath=[de_train.json,en_train.json]' \
        '+model.train_ds.mixing={weights:[0.8,0.2]}' \
        'model.validation_ds.manifest_filepath=[de_dev.json,en_dev.json]'

Options of Kunze et al. 2017: model.transfer.freeze_encoder_blocks=k, model.transfer.vocabulary=reinit,
model.transfer.reinitialize=true (train-from-scratch control). The final model is saved to
``save_to`` (default ``<exp_dir>/<name>.nemo``).

A subword base (EncDecCTCModelBPE: stt_en_fastconformer_ctc_large, nvidia/parakeet-ctc-0.6b) with a
target tokenizer (``python -m nemo_tl.transfer.tokenizer``):

    python examples/finetune_ctc.py --config-name fastconformer_ctc_finetune \
        model.transfer.base_model=stt_en_fastconformer_ctc_large model.tokenizer.dir=tokenizers/de_bpe256 \
        model.train_ds.manifest_filepath=de_train.json model.validation_ds.manifest_filepath=de_dev.json

The model class follows the base's class (RNN-T, TDT and hybrid bases: ``examples/finetune_rnnt.py``).
"""

import lightning.pytorch as pl
from nemo.core.config import hydra_runner
from nemo.utils.exp_manager import exp_manager
from omegaconf import OmegaConf

from nemo_tl.utils.atomic import atomic_save_to
from nemo_tl.utils.scripts import final_report, output_path, transfer_model
from nemo_tl.utils.training import quiet_restore_logs


@hydra_runner(config_path="../conf", config_name="quartznet_finetune")
def main(cfg):
    quiet_restore_logs()  # NeMo logs a restored model's dataset configs, one label a line
    trainer = pl.Trainer(**cfg.trainer)
    log_dir = exp_manager(trainer, cfg.get("exp_manager", None))
    save_to = output_path(cfg, log_dir)  # checked before training: an unwritable path stops here
    model = transfer_model(cfg.model, trainer, heads="ctc")
    trainer.fit(model)
    atomic_save_to(model, save_to)
    print(f"saved: {save_to}")
    print(OmegaConf.to_yaml(model.cfg.transfer))
    print("final greedy WER and CER per validation set:")
    print(final_report(model))


if __name__ == "__main__":
    main()
