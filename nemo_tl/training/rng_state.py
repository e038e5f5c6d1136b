"""Exact resume: the RNG states of every rank travel in the Lightning checkpoint.

Dither, SpecAugment and dropout draw from torch's RNG (and NeMo's augmentations from numpy's and
``random``'s). Lightning checkpoints none of them, so a resumed run draws other masks and noise
than the run it continues. :class:`ResumeRNGState` saves the CPU RNG states of torch, numpy and
``random`` of every rank under :data:`RNG_CHECKPOINT_KEY` and puts them back at the first training
batch after the resume, so a resumed CPU run repeats the uninterrupted one (with
:mod:`nemo_tl.data.mixing`'s sampler state, which continues the epoch's batch sequence).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

__all__ = ["RNG_CHECKPOINT_KEY", "ResumeRNGState"]

RNG_CHECKPOINT_KEY = "nemo_tl_rng"


def rng_states() -> dict[str, Any]:
    """This process's CPU RNG states: torch, numpy and python ``random``."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_states(states: Mapping[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])


class ResumeRNGState(pl.Callback):
    """Saves every rank's RNG states in the checkpoint; restores them at the first batch after a resume.

    Each rank gets back its own states when the world size is the one saved, else every rank
    takes rank 0's. A checkpoint without them resumes with the RNG as it is (not exactly).
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        states = rng_states()
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            # Lightning builds the checkpoint on every rank (rank 0 writes it): gather all ranks' states.
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, states)
            checkpoint[RNG_CHECKPOINT_KEY] = gathered
        else:
            checkpoint[RNG_CHECKPOINT_KEY] = [states]

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        ranks = checkpoint.get(RNG_CHECKPOINT_KEY)
        if ranks:
            same_world = len(ranks) == trainer.world_size
            self._pending = ranks[trainer.global_rank] if same_world else ranks[0]

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._pending is not None:
            # Here, not in on_load_checkpoint: making the resumed epoch's loader iterator draws
            # from torch's RNG, which the uninterrupted run did at the start of the epoch.
            set_rng_states(self._pending)
            self._pending = None
