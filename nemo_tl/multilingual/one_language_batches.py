"""What one language per training batch asks of DDP and of BatchNorm encoders.

- DDP: a one-language batch leaves the other languages' embeddings, joints and softmaxes without
  gradient, which DDP's default refuses: :func:`expect_unused_parameters` tells Lightning's DDP
  strategy (before it wraps the model) to expect that.
- BatchNorm: every batch is normalized with one language's statistics, while inference uses running
  statistics mixed over languages. :class:`FreezeBatchNormAfter` makes the encoder's BatchNorm layers
  normalize with their running statistics from step N on (``model.freeze_batch_norm_after``), and
  :func:`batch_norm_warning` says so when a BatchNorm encoder trains a LID head on one-language batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from nemo.utils import logging

from nemo_tl.compat import ddp_find_unused_parameters

__all__ = [
    "BATCH_NORMS",
    "FreezeBatchNormAfter",
    "batch_norm_warning",
    "expect_unused_parameters",
    "prepare_one_language_batches",
]

BATCH_NORMS = (torch.nn.modules.batchnorm._BatchNorm,)  # batch statistics shared across utterances


def expect_unused_parameters(trainer: pl.Trainer | None) -> bool:
    """Under a DDP strategy, set ``find_unused_parameters=True`` (before DDP wraps the model); True if set."""
    from lightning.pytorch.strategies import DDPStrategy

    strategy = getattr(trainer, "strategy", None)
    return isinstance(strategy, DDPStrategy) and bool(ddp_find_unused_parameters(strategy))


class FreezeBatchNormAfter(pl.Callback):
    """From optimizer step ``after`` on, the encoder's BatchNorm layers normalize with running statistics.

    Frozen statistics (estimated over many batches of every language) make training see what
    inference sees and keep the differences between languages in the encoder output. The affine
    weights keep training. Applied at every batch, since Lightning switches the model back to
    training mode (after validation).
    """

    def __init__(self, after: int):
        self.after = int(after)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int):
        if trainer.global_step >= self.after:
            for module in pl_module.encoder.modules():
                if isinstance(module, BATCH_NORMS):
                    module.eval()


def batch_norm_warning(
    encoder: torch.nn.Module, train_ds: Mapping | None, lid_enabled: bool, freeze_after: int | None
) -> str | None:
    """The warning for a BatchNorm encoder training a LID head on one-language batches, or None."""
    mixing = (train_ds or {}).get("mixing") or {}
    if not lid_enabled or not mixing.get("per_batch", False) or freeze_after is not None:
        return None
    norms = sorted({type(m).__name__ for m in encoder.modules() if isinstance(m, BATCH_NORMS)})
    if not norms:
        return None
    return (
        f"model.encoder uses {', '.join(norms)} and every training batch holds one language "
        "(model.train_ds.mixing.per_batch): the batch statistics then come from one language, which "
        "hides much of what the LID head learns from. Use an encoder without BatchNorm (the default "
        "ConformerEncoder with conv_norm_type: layer_norm), model.freeze_batch_norm_after=N (running "
        "statistics from step N on) or model.train_ds.mixing.per_batch=false."
    )


def prepare_one_language_batches(model: Any, stage: str | None) -> None:
    """At the model's ``setup``: multi-softmax under DDP expects unused parameters; a fit warns about BatchNorm."""
    if model.is_multisoftmax and expect_unused_parameters(model.trainer):
        logging.info("MultiSoftmaxRNNTModel: DDP set to find_unused_parameters=True (one language a batch)")
    if stage in (None, "fit"):
        warning = batch_norm_warning(
            model.encoder, model.cfg.get("train_ds"), model.lid_head is not None,
            model.multilingual.freeze_batch_norm_after,
        )
        if warning:
            logging.warning(warning)
