"""Skip a training step whose loss is NaN or Inf, on every rank, and put back the BatchNorm statistics it moved.

How this differs from NeMo's ``skip_nan_grad`` (``model.skip_nan_grad: true``, done in
``ASRModel.on_after_backward``): NeMo runs the backward, checks every gradient for NaN/Inf (a host
sync per parameter) and, when one is found, zeroes the gradients. The optimizer then still steps:
momentum and weight decay move the weights, the scheduler and Adam's step counts advance on a
zero gradient, and the running statistics the bad batch moved in every BatchNorm layer stay (NaN
once the audio was). Here the loss is checked once a step, with one host sync placed after the
backward is queued (where NovoGrad's step waits for the gradients anyway): a non-finite loss on any
rank leaves every ``.grad`` None on every rank, so the optimizer leaves every weight and its state as
they were (with gradient accumulation, the check comes before the bad batch's backward, which is
left out alone); the BatchNorm statistics are put back;
the step is warned about, naming the batch's utterances whose audio is not finite, and counted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from nemo_tl.compat import attached_trainer, logs_this_step

__all__ = ["SKIPPED_CHECKPOINT_KEY", "SKIPPED_LOG_KEY", "RunningStatistics", "SkipNonFiniteStepMixin",
           "describe_nonfinite_audio"]

SKIPPED_CHECKPOINT_KEY = "nemo_tl_skipped_nonfinite_steps"
SKIPPED_LOG_KEY = "skipped_nonfinite_steps"


class RunningStatistics:
    """The running statistics of a module's BatchNorm layers (any layer tracking running statistics), saved and put back.

    ``save`` copies those of the layers in training mode (running mean, variance and batch count)
    with one fused ``_foreach_copy_`` per dtype into tensors kept from step to step; ``restore`` copies them
    back, once, after a ``save``. The layers are found on the first ``save`` after ``forget``; a step
    then costs a look at each layer's mode and the copy, and nothing at all (no copy) while every
    layer is in eval mode (frozen blocks, NeMo's ``freeze()``).
    """

    def __init__(self) -> None:
        self._layers: list[torch.nn.Module] | None = None
        self._modes: list[bool] = []
        self._buffers: list[list[torch.Tensor]] = []  # one list per dtype
        self._copies: list[list[torch.Tensor]] = []
        self._saved = False

    def forget(self) -> None:
        """Find the layers again at the next ``save`` (after modules or their devices changed)."""
        self._layers, self._modes = None, []

    def save(self, module: torch.nn.Module) -> None:
        if self._layers is None:
            self._layers = [m for m in module.modules() if getattr(m, "track_running_stats", False)]
        modes = [m.training for m in self._layers]
        if modes != self._modes:
            self._modes = modes
            buffers = [
                b
                for m in self._layers
                if m.training
                for b in (m.running_mean, m.running_var, m.num_batches_tracked)
                if b is not None
            ]
            # One list per dtype: torch's fused foreach kernels need a single dtype (float statistics, int64
            # batch counts); a mixed list falls back to one copy kernel per tensor.
            by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
            for b in buffers:
                by_dtype.setdefault(b.dtype, []).append(b)
            self._buffers = list(by_dtype.values())
            self._copies = [[torch.empty_like(b) for b in group] for group in self._buffers]
        with torch.no_grad():
            for copies, buffers in zip(self._copies, self._buffers):
                torch._foreach_copy_(copies, buffers)
        self._saved = True

    def restore(self) -> None:
        if self._saved:
            with torch.no_grad():
                for buffers, copies in zip(self._buffers, self._copies):
                    torch._foreach_copy_(buffers, copies)
        self._saved = False

    def discard(self) -> None:
        """The saved values will not be needed (the step went through)."""
        self._saved = False


class SkipNonFiniteStepMixin:
    """A NaN or Inf loss on any rank skips the training step on every rank (see the module docstring).

    A mixin for a NeMo model, listed before the NeMo class. Two Lightning hooks do the work, so
    whatever ``training_step`` returned is checked, a subclass's own included, once a step:

    - ``on_train_batch_start``: the BatchNorm running statistics are saved (:class:`RunningStatistics`)
      and the batch kept for the warning.
    - ``backward``: Lightning's backward is queued, then the loss is checked (one host sync, where the
      optimizer would wait anyway; under DDP the verdict is summed over the ranks, so all ranks skip
      together). A non-finite loss leaves every ``.grad`` None (the optimizer then moves no weight
      and no state), the statistics are put back, the step is warned about and counted in
      :attr:`skipped_nonfinite_steps` (logged; kept in checkpoints). With gradient accumulation the
      loss is checked before its backward instead, so only the bad batch's gradients are left out.
    """

    _skipped_nonfinite_steps: int = 0
    _running_statistics: RunningStatistics | None = None
    _step_batch: Any = None

    @property
    def skipped_nonfinite_steps(self) -> int:
        """Training steps skipped so far because the loss was NaN or Inf (kept across resume)."""
        return self._skipped_nonfinite_steps

    def on_train_start(self) -> None:
        if self._running_statistics is not None:
            self._running_statistics.forget()  # the model may have new modules, or a new device
        super().on_train_start()

    def on_train_batch_start(self, batch: Any, batch_idx: int, *args: Any) -> Any:
        result = super().on_train_batch_start(batch, batch_idx, *args)
        if self._running_statistics is None:
            self._running_statistics = RunningStatistics()
        self._running_statistics.save(self)
        self._step_batch = batch
        return result

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        batch, self._step_batch = self._step_batch, None
        statistics = self._running_statistics or RunningStatistics()
        trainer = attached_trainer(self)
        accumulating = trainer is not None and getattr(trainer, "accumulate_grad_batches", 1) > 1
        if accumulating:  # the bad batch's gradients must never join the good ones': check first
            skip = self._nonfinite_on_any_rank(loss, trainer)
            if not skip:
                super().backward(loss, *args, **kwargs)
        else:
            # The backward is queued first, then checked: the host then waits where the optimizer would
            # (NovoGrad reads a tensor on the host at its first parameter) instead of before the backward.
            super().backward(loss, *args, **kwargs)
            skip = self._nonfinite_on_any_rank(loss, trainer)
            if skip:
                for p in self.parameters():
                    p.grad = None  # the optimizer steps over parameters without gradient
        if skip:
            statistics.restore()
            self._skipped_nonfinite_steps += 1
            self._warn_skipped(loss, batch, trainer)
        else:
            statistics.discard()
        if trainer is not None and (skip or logs_this_step(trainer)):
            self.log(SKIPPED_LOG_KEY, float(self._skipped_nonfinite_steps), on_step=True, on_epoch=False,
                     batch_size=1)

    @staticmethod
    def _nonfinite_on_any_rank(loss: torch.Tensor, trainer: Any) -> bool:
        """Whether ``loss`` holds NaN/Inf here or on another rank; the step's one host sync."""
        loss = loss.detach()
        if trainer is None or trainer.world_size <= 1:
            return not math.isfinite(loss.item()) if loss.numel() == 1 else not bool(torch.isfinite(loss).all())
        bad = (~torch.isfinite(loss)).any().to(torch.float32).reshape(1)
        return trainer.strategy.reduce(bad, reduce_op="sum").item() > 0

    def _warn_skipped(self, loss: torch.Tensor, batch: Any, trainer: Any) -> None:
        from nemo.utils import logging

        here = ""
        if not bool(torch.isfinite(loss.detach()).all()):
            files = self._batch_audio_files(batch) if hasattr(self, "_batch_audio_files") and batch is not None else None
            here = f" (here: {loss.detach().flatten()[0].item()}{describe_nonfinite_audio(batch, files)})"
        logging.warning(
            f"non-finite training loss at global step {getattr(trainer, 'global_step', '?')}{here}: "
            f"step skipped on every rank, weights unchanged ({self._skipped_nonfinite_steps} skipped so far)"
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[SKIPPED_CHECKPOINT_KEY] = self._skipped_nonfinite_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._skipped_nonfinite_steps = int(checkpoint.get(SKIPPED_CHECKPOINT_KEY, 0))


def describe_nonfinite_audio(batch: Any, files: Sequence[str] | None = None, limit: int = 8) -> str:
    """``"; NaN/Inf audio in row 2 (/data/x.wav)"``: the rows of ``batch`` whose audio is not finite.

    ``batch`` holds audio (B, T) first and lengths (B,) second; ``files`` (the audio file of each
    row, when the batch carries sample ids) names the rows, else they are named by row and length.
    Empty when the batch has no such audio tensor.
    """
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        return ""
    signal, lengths = batch[0], batch[1]
    if not isinstance(signal, torch.Tensor) or not signal.is_floating_point() or signal.dim() < 2:
        return ""
    rows = (~torch.isfinite(signal.detach())).flatten(1).any(dim=1).nonzero().flatten().tolist()
    if not rows:
        named = f": {', '.join(files[:limit])}{' ...' if len(files) > limit else ''}" if files else ""
        return f"; the batch's audio is finite{named}"
    if files:
        return f"; NaN/Inf audio in {', '.join(f'row {r} ({files[r]})' for r in rows[:limit])}"
    where = ", ".join(f"row {r} ({int(lengths[r])} samples)" for r in rows[:limit])
    return (
        f"; NaN/Inf audio in {where} of {signal.shape[0]}: `python -m nemo_tl.data.validate` on the training "
        "manifests names the files"
    )
