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


def _scale_loss(model: TransferCTCModel, call: int, factor: float) -> None:
    """Multiply the CTC loss by ``factor`` on the given 1-based call."""
    real, calls = model.loss.forward, [0]

    def scaled(*args, **kwargs):
        calls[0] += 1
        loss = real(*args, **kwargs)
        return loss * factor if calls[0] == call else loss

    model.loss.forward = scaled


def test_with_gradient_accumulation_only_the_bad_batch_is_left_out(base_nemo, en_manifest):
    """Two batches per optimizer step, the second NaN: the step uses the first's gradients, as if the second gave 0."""
    skipped, reference = (TransferCTCModel.from_base(base_nemo, labels=EN_LABELS) for _ in range(2))
    start = {n: p.detach().clone() for n, p in skipped.named_parameters()}
    _scale_loss(skipped, 2, math.nan)
    _scale_loss(reference, 2, 0.0)
    for model in (skipped, reference):
        torch.manual_seed(0)
        fit(model, en_manifest, steps=1, accumulate_grad_batches=2)
    assert skipped.skipped_nonfinite_steps == 1 and reference.skipped_nonfinite_steps == 0
    trained = dict(reference.named_parameters())
    for name, p in skipped.named_parameters():
        assert torch.equal(p, trained[name]), name
    assert any(not torch.equal(p, start[n]) for n, p in skipped.named_parameters())  # the first batch trained


def test_running_statistics_are_put_back_and_layers_in_eval_mode_cost_nothing(monkeypatch):
    from nemo_tl.training import RunningStatistics

    net = torch.nn.Sequential(torch.nn.Conv1d(2, 4, 1), torch.nn.BatchNorm1d(4), torch.nn.BatchNorm1d(4))
    stats, before = RunningStatistics(), snapshot(net)
    stats.save(net)
    net(torch.randn(3, 2, 5))
    stats.restore()
    assert all(torch.equal(v, snapshot(net)[k]) for k, v in before.items())
    stats.save(net)
    net(torch.randn(3, 2, 5))
    stats.discard()  # the step went through: its statistics stay
    moved = snapshot(net)
    stats.restore()
    assert all(torch.equal(v, snapshot(net)[k]) for k, v in moved.items())

    copied, real = [], torch._foreach_copy_
    monkeypatch.setattr(torch, "_foreach_copy_", lambda dst, src: copied.append(len(dst)) or real(dst, src))
    net[1].eval()
    stats.save(net)
    # the layer still training: one fused copy per dtype (mean and variance; the int64 batch count), since a
    # list of mixed dtypes would leave torch's fused kernel for one copy per tensor
    assert copied == [2, 1]
    net.eval()
    stats.save(net)
    stats.restore()
    assert copied == [2, 1]  # every layer in eval mode: nothing copied
