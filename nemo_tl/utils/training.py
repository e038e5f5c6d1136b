"""A quiet single-device Lightning Trainer for the demo and the reproduction scripts."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def quiet_logs() -> None:
    """Silence NeMo's and Lightning's info logs and Python warnings (for printed result tables)."""
    import logging as pylogging
    import warnings

    import lightning.pytorch  # noqa: F401  (importing it sets its logger to INFO: import first, then silence)
    from nemo.utils import logging

    logging.setLevel(logging.ERROR)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        pylogging.getLogger(name).setLevel(pylogging.ERROR)
    warnings.filterwarnings("ignore")


def accelerator() -> str:
    """``"gpu"`` when CUDA is available, else ``"cpu"``."""
    return "gpu" if torch.cuda.is_available() else "cpu"


def quick_trainer(max_steps: int, callbacks: Sequence = ()):
    """A Trainer for ``max_steps`` steps on one device: bf16-mixed on a GPU, fp32 on CPU; no logger,
    checkpoints, progress bar or validation."""
    import lightning.pytorch as pl

    gpu = accelerator() == "gpu"
    return pl.Trainer(max_steps=max_steps, accelerator=accelerator(), devices=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, limit_val_batches=0, precision="bf16-mixed" if gpu else 32,
                      callbacks=list(callbacks))
