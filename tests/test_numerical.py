"""Numerical faults: a NaN or Inf loss skips the step instead of reaching the weights."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch

from nemo_tl.models import TransferCTCModel
from tests.conftest import EN_LABELS
from tests.helpers import fit, snapshot


class _Snapshots(pl.Callback):
    """Model state before and after every training batch."""

    def __init__(self) -> None:
        self.before: list[dict[str, torch.Tensor]] = []
        self.after: list[dict[str, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before.append(snapshot(pl_module))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after.append(snapshot(pl_module))


def _poison_loss(model: TransferCTCModel, bad_calls: set[int], value: float) -> None:
    """Add ``value`` (NaN or Inf) to the CTC loss on the given 1-based calls."""
    real, calls = model.loss.forward, [0]

    def poisoned(*args, **kwargs):
        calls[0] += 1
        loss = real(*args, **kwargs)
        return loss + value if calls[0] in bad_calls else loss

    model.loss.forward = poisoned


class _OwnStep(TransferCTCModel):
    """A subclass with its own training_step (as DistillCTCModel and MultiSoftmaxRNNTModel have)."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)["loss"]
        return {"loss": loss * math.nan if batch_idx == 0 else loss}


def _assert_step_skipped(snaps: _Snapshots, skipped: int) -> None:
    for name, before in snaps.before[skipped].items():  # BatchNorm statistics included
        assert torch.equal(before, snaps.after[skipped][name]), name
    for k in set(range(len(snaps.after))) - {skipped}:  # the other steps trained
        assert any(not torch.equal(v, snaps.after[k][n]) for n, v in snaps.before[k].items() if v.is_floating_point())


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_nonfinite_loss_step_is_skipped_and_counted(base_nemo, en_manifest, value):
    model = TransferCTCModel.from_base(base_nemo, labels=EN_LABELS, freeze_encoder_blocks=1)
    _poison_loss(model, {2}, value)
    snaps = _Snapshots()
    trainer = fit(model, en_manifest, steps=3, callbacks=[snaps])
    assert len(snaps.after) == 3
    _assert_step_skipped(snaps, 1)
    assert model.skipped_nonfinite_steps == 1
    assert trainer.callback_metrics["skipped_nonfinite_steps"].item() == 1
    assert all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point())


def test_training_step_defined_by_a_subclass_is_guarded_once(base_nemo, en_manifest):
    model = _OwnStep.from_base(base_nemo, labels=EN_LABELS)
    snaps = _Snapshots()
    trainer = fit(model, en_manifest, steps=2, callbacks=[snaps])
    _assert_step_skipped(snaps, 0)
    assert model.skipped_nonfinite_steps == 1  # counted once although two wrapped steps ran
    assert trainer.callback_metrics["skipped_nonfinite_steps"].item() == 1
