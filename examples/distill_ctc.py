"""Distil one or more CTC teachers into a QuartzNet student (Kim et al. 2021, Abbasi et al. 2020).

    python examples/distill_ctc.py \
        'model.distillation.teachers=[{model:libri.nemo,weight:1.0},{model:ted.nemo,weight:1.0}]' \
        model.train_ds.manifest_filepath=train.json model.validation_ds.manifest_filepath=dev.json

Options: model.distillation.uncertainty=false (teachers without an uncertainty head),
model.distillation.conditional=true, model.distillation.teacher_weighting=confidence,
model.distillation.cache=DIR (offline KD; or build DIR/teacher_<k> first with
``python -m nemo_tl.distill.cache TEACHER.nemo train.json --out DIR/teacher_<k>``),
'+model.transfer={base_model:libri.nemo,vocabulary:same}' (start the student from a teacher).
The student is saved to ``save_to`` (default ``<exp_dir>/<name>.nemo``) and restores without its teachers.
"""

import lightning.pytorch as pl
from nemo.core.config import hydra_runner
from nemo.utils.exp_manager import exp_manager

from nemo_tl.models.distill_ctc import DistillCTCModel
from nemo_tl.utils.atomic import atomic_save_to
from nemo_tl.utils.scripts import final_report, output_path
from nemo_tl.utils.training import quiet_restore_logs


@hydra_runner(config_path="../conf", config_name="distill_ctc")
def main(cfg):
    quiet_restore_logs()  # NeMo logs a restored model's dataset configs, one label a line
    trainer = pl.Trainer(**cfg.trainer)
    log_dir = exp_manager(trainer, cfg.get("exp_manager", None))
    save_to = output_path(cfg, log_dir)  # checked before training: an unwritable path stops here
    model = DistillCTCModel(cfg=cfg.model, trainer=trainer)
    trainer.fit(model)
    atomic_save_to(model, save_to)
    print(f"saved: {save_to}")
    print("final greedy WER and CER per validation set:")
    print(final_report(model))


if __name__ == "__main__":
    main()
