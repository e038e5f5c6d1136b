"""Quiet logs for nemo_tl's commands, a training-time callback, and a quiet single-device Lightning
Trainer for the demo and the reproduction scripts."""

from __future__ import annotations

import logging as pylogging
import time
from collections.abc import Sequence

import lightning.pytorch as pl  # importing it sets its logger to INFO: quiet_logs must run after this
import torch


def quiet_logs() -> None:
    """Silence NeMo's and Lightning's info logs and Python warnings (for printed result tables)."""
    import warnings

    from nemo.utils import logging

    try:  # NeMo imports the standalone pytorch_lightning too, which sets its logger to INFO on import
        import pytorch_lightning  # noqa: F401
    except ImportError:
        pass
    logging.setLevel(logging.ERROR)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        pylogging.getLogger(name).setLevel(pylogging.ERROR)
    warnings.filterwarnings("ignore")


_RESTORE_NOTICES = (
    "If you intend to do training or fine-tuning",
    "If you intend to do validation",
    "If you intend to do testing",
)


class _RestoreNoticeFilter(pylogging.Filter):
    """Drops NeMo's notices that a restored model has no data loaders (each prints its dataset
    config, every label on a line of its own)."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        return not str(record.msg).startswith(_RESTORE_NOTICES)


def quiet_restore_logs() -> None:
    """Silence the dataset configs that ``ModelPT.restore_from`` logs (NeMo's ``modelPT`` warnings
    "If you intend to do training ... Train config: ..."), and nothing else, in nemo_tl's commands."""
    logger = pylogging.getLogger("nemo_logger")  # the Python logger behind nemo.utils.logging
    if not any(isinstance(f, _RestoreNoticeFilter) for f in logger.filters):
        logger.addFilter(_RestoreNoticeFilter())


class TrainingTimer(pl.Callback):
    """Wall-clock seconds of the optimisation only: from Lightning's ``on_train_start`` to
    ``on_train_end`` (the data loaders, model set-up and sanity checks before it are not counted)."""

    def __init__(self):
        self.seconds = 0.0
        self._start: float | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        _synchronize()
        self._start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        if self._start is not None:
            _synchronize()  # count the queued GPU work of the last steps
            self.seconds += time.perf_counter() - self._start
            self._start = None


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def accelerator() -> str:
    """``"gpu"`` when CUDA is available, else ``"cpu"``."""
    return "gpu" if torch.cuda.is_available() else "cpu"


def quick_trainer(max_steps: int, callbacks: Sequence = (), root_dir: str | None = None):
    """A Trainer for ``max_steps`` steps on one device: bf16-mixed on a GPU, fp32 on CPU; no logger,
    checkpoints, progress bar or validation. ``root_dir``: the run's directory (what a run writes
    there, e.g. the EWC Fisher cache; default the working directory)."""
    import lightning.pytorch as pl

    gpu = accelerator() == "gpu"
    return pl.Trainer(max_steps=max_steps, accelerator=accelerator(), devices=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, limit_val_batches=0, precision="bf16-mixed" if gpu else 32,
                      callbacks=list(callbacks), default_root_dir=root_dir)
