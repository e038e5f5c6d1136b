"""Knowledge-distillation losses for frame-synchronous (CTC) models.

Pure functions of tensors and lengths, after Kim et al. 2021 ("Multi-domain knowledge
distillation via uncertainty-matching for end-to-end ASR models") and the intermediate-layer
KD of Abbasi et al. 2020. For CTC models the "tokens" i of the papers are encoder frames, so
teacher and student outputs are compared frame by frame.

Every loss is masked by ``lengths`` (frames at or beyond an utterance's length do not count),
**summed over the valid frames of an utterance and averaged over the batch**, like NeMo's
CTC loss with ``reduction="mean_batch"``. ``reduction="none"`` returns the per-utterance sums
(B,) instead, for per-utterance teacher weights γ_k.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nemo_tl.losses.masks import frame_mask

__all__ = ["frame_mask", "hidden_kd_loss", "token_kd_loss", "uncertainty_kd_loss"]

_REDUCTIONS = ("mean_batch", "none")


def _check_pair(student: torch.Tensor, teacher: torch.Tensor, lengths: torch.Tensor, what: str, layout: str) -> None:
    if student.dim() != 3 or student.shape != teacher.shape:
        raise ValueError(
            f"student {what} {tuple(student.shape)} and teacher {what} {tuple(teacher.shape)} must both be {layout}"
        )
    if lengths.dim() != 1 or lengths.shape[0] != student.shape[0]:
        raise ValueError(f"lengths {tuple(lengths.shape)} must be (B,) with B = {student.shape[0]} ({what} {layout})")


def _reduce(per_frame: torch.Tensor, lengths: torch.Tensor, reduction: str) -> torch.Tensor:
    """Mask (B, T) per-frame losses, sum over frames, then average over the batch (or not)."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(_REDUCTIONS)}, got {reduction!r}")
    mask = frame_mask(lengths, per_frame.shape[1])
    per_utt = per_frame.masked_fill(~mask, 0.0).sum(dim=1)
    return per_utt.mean() if reduction == "mean_batch" else per_utt


def token_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    lengths: torch.Tensor,
    temperature: float = 1.0,
    reduction: str = "mean_batch",
) -> torch.Tensor:
    """Token-level KD (Kim et al. eq. 2) with Hinton's temperature, scaled by T².

    L_tok = T² · Σ_i Σ_c −p̂_T(c | θ_T) log p_T(c | θ), with p_T = softmax(f / T), summed over
    the valid frames i of an utterance and averaged over the batch. Being a cross-entropy it
    includes the teacher's entropy, a constant that does not change the gradient.

    Args:
        student_logits: (B, T, V) student logits or log-probabilities (same result: softmax
            is shift-invariant). In training with an uncertainty decoder, the corrupted g (eq. 5).
        teacher_logits: (B, T, V) teacher logits or log-probabilities; treated as a constant.
        lengths: (B,) number of valid frames per utterance.
        temperature: T > 0, applied to both softmaxes.
        reduction: ``"mean_batch"`` (scalar) or ``"none"`` (B,) per-utterance sums.
    """
    _check_pair(student_logits, teacher_logits, lengths, "logits", "(B, T, V)")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    t = float(temperature)
    teacher_p = F.softmax(teacher_logits.detach().float() / t, dim=-1)
    student_logp = F.log_softmax(student_logits.float() / t, dim=-1)
    per_frame = -(teacher_p * student_logp).sum(dim=-1) * (t * t)
    return _reduce(per_frame, lengths, reduction)


def normalized_sigma(logvar: torch.Tensor) -> torch.Tensor:
    """σ / ‖σ‖₂ over the last dimension, from log σ², computed stably.

    σ_c / ‖σ‖₂ = exp(½ (log σ²_c − logsumexp_c' log σ²_c')).
    """
    return torch.exp(0.5 * (logvar - torch.logsumexp(logvar, dim=-1, keepdim=True)))


def uncertainty_kd_loss(
    student_logvar: torch.Tensor,
    teacher_logvar: torch.Tensor,
    lengths: torch.Tensor,
    reduction: str = "mean_batch",
) -> torch.Tensor:
    """Uncertainty-matching KD (Kim et al. eq. 6).

    L_unc = Σ_i ‖ σ̂_i / ‖σ̂_i‖₂ − σ_i / ‖σ_i‖₂ ‖², with σ = exp(½ · log σ²), σ̂ the teacher's,
    summed over the valid frames i of an utterance and averaged over the batch.

    Args:
        student_logvar: (B, T, V) student log σ².
        teacher_logvar: (B, T, V) teacher log σ²; treated as a constant.
        lengths: (B,) number of valid frames per utterance.
        reduction: ``"mean_batch"`` (scalar) or ``"none"`` (B,) per-utterance sums.
    """
    _check_pair(student_logvar, teacher_logvar, lengths, "logvar", "(B, T, V)")
    diff = normalized_sigma(teacher_logvar.detach().float()) - normalized_sigma(student_logvar.float())
    return _reduce(diff.pow(2).sum(dim=-1), lengths, reduction)


def hidden_kd_loss(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    lengths: torch.Tensor,
    projection: torch.nn.Module | None = None,
    reduction: str = "mean_batch",
) -> torch.Tensor:
    """Intermediate-layer (hidden-state) KD: squared error of block outputs.

    L_hidden = Σ_i (1/D_t) ‖ P h_i − ĥ_i ‖², over the valid frames i of an utterance, averaged
    over the batch; P is ``projection`` (identity when None).

    Args:
        student_hidden: (B, D_s, T) student block output (NeMo encoder layout).
        teacher_hidden: (B, D_t, T) teacher block output; treated as a constant.
        lengths: (B,) number of valid frames per utterance.
        projection: a learned module mapping (B, D_s, T) to (B, D_t, T), e.g.
            ``torch.nn.Conv1d(D_s, D_t, kernel_size=1)``; required when D_s ≠ D_t.
        reduction: ``"mean_batch"`` (scalar) or ``"none"`` (B,) per-utterance sums.
    """
    if projection is not None:
        student_hidden = projection(student_hidden)
    if student_hidden.dim() != 3 or student_hidden.shape != teacher_hidden.shape:
        raise ValueError(
            f"student hidden {tuple(student_hidden.shape)} and teacher hidden {tuple(teacher_hidden.shape)} "
            "must both be (B, D, T) with the same D and T (pass a projection, e.g. Conv1d(D_s, D_t, 1), "
            "when the widths differ)"
        )
    _check_pair(student_hidden, teacher_hidden, lengths, "hidden", "(B, D, T)")
    per_frame = (student_hidden.float() - teacher_hidden.detach().float()).pow(2).mean(dim=1)
    return _reduce(per_frame, lengths, reduction)
