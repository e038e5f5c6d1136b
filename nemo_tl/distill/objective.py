"""The teacher-student objective: teacher weights γ_k and the total loss (pure tensor functions).

L = φ L_CTC + α Σ_k γ_k (L_tok^k + β L_unc^k) + w_h Σ_k γ_k L_hidden^k

(Kim et al. 2021 eqs. 7-9 with Abbasi et al.'s hard-label weight φ and intermediate-layer KD).
γ_k may vary per utterance: conditional distillation (Meng et al., in Abbasi et al. §V) drops a
teacher on the utterances it transcribes wrongly, and confidence weighting scales γ_k by the
teacher's mean max-probability.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from nemo_tl.distill.teachers import TeacherOutputs
from nemo_tl.losses.kd import hidden_kd_loss, token_kd_loss, uncertainty_kd_loss
from nemo_tl.losses.masks import frame_mask

__all__ = [
    "KDWeights",
    "distillation_loss",
    "distillation_terms",
    "distillation_total",
    "greedy_ctc_matches",
    "mean_max_probability",
    "teacher_weights",
]

TEACHER_WEIGHTINGS = ("fixed", "confidence")


@dataclass(frozen=True)
class KDWeights:
    """Scalar hyper-parameters of the objective: φ, α, β, T and w_h."""

    hard_label_weight: float = 1.0  # φ
    alpha: float = 2.5  # α
    beta: float = 1.0  # β
    temperature: float = 1.0  # T
    hidden_weight: float = 0.0  # w_h


def greedy_ctc_matches(
    log_probs: torch.Tensor,
    lengths: torch.Tensor,
    targets: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int,
) -> torch.Tensor:
    """(B,) bool: whether the greedy CTC transcript of ``log_probs`` equals the reference.

    Args:
        log_probs: (B, T, V+1) frame log-probabilities (or logits).
        lengths: (B,) valid frames.
        targets: (B, U) reference label ids, padded.
        target_lengths: (B,) reference lengths.
        blank: the blank id (V for NeMo character models).
    """
    best = log_probs.argmax(dim=-1)
    matches = []
    for b in range(best.shape[0]):
        path = best[b, : int(lengths[b])]
        if path.numel():
            keep = torch.ones_like(path, dtype=torch.bool)
            keep[1:] = path[1:] != path[:-1]
            path = path[keep & (path != blank)]
        ref = targets[b, : int(target_lengths[b])].to(path.device)
        matches.append(path.numel() == ref.numel() and bool(torch.equal(path, ref.to(path.dtype))))
    return torch.tensor(matches, device=log_probs.device)


def mean_max_probability(log_probs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B,) the teacher's confidence: mean over valid frames of max_c p(c). log_probs: (B, T, V+1)."""
    mask = frame_mask(lengths, log_probs.shape[1]).to(log_probs.dtype)
    best = log_probs.float().log_softmax(dim=-1).max(dim=-1).values.exp()
    return (best * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def teacher_weights(
    gammas: Sequence[float],
    batch_size: int,
    *,
    keep: Sequence[torch.Tensor] | None = None,
    confidences: Sequence[torch.Tensor] | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Per-utterance teacher weights γ_{k,b}, shape (K, B).

    - fixed (``confidences`` None): γ_{k,b} = γ_k · m_{k,b};
    - confidence: γ_{k,b} ∝ γ_k · m_{k,b} · c_{k,b}, rescaled so that Σ_k γ_{k,b} = Σ_k γ_k m_{k,b}
      (with equal γ_k: proportional to the teacher's confidence c, summing to Σγ_k).

    m_{k,b} is 1, or, for conditional distillation, whether teacher k transcribed utterance b
    correctly (``keep``; a dropped teacher leaves that utterance to the hard labels).

    Args:
        gammas: K fixed weights γ_k.
        keep: K (B,) bool tensors, or None (keep all).
        confidences: K (B,) tensors c_{k,b} > 0, or None (fixed weighting).
    """
    # Filled on the device, not copied from a host list: a blocking host-to-device copy would make
    # every training step wait here for the forwards queued before it.
    weights = torch.stack([torch.full((batch_size,), float(g), device=device) for g in gammas])
    if keep is not None:
        weights = weights * torch.stack([m.to(device=weights.device, dtype=weights.dtype) for m in keep])
    if confidences is not None:
        total = weights.sum(dim=0, keepdim=True)
        scaled = weights * torch.stack([c.to(device=weights.device, dtype=weights.dtype) for c in confidences])
        weights = scaled / scaled.sum(dim=0, keepdim=True).clamp(min=torch.finfo(weights.dtype).tiny) * total
    return weights


def _crop(x: torch.Tensor, frames: int, time_dim: int) -> torch.Tensor:
    return x.narrow(time_dim, 0, frames) if x.shape[time_dim] > frames else x


def distillation_terms(
    student_logits: torch.Tensor,
    student_lengths: torch.Tensor,
    teachers: Sequence[TeacherOutputs],
    weights: torch.Tensor,
    hp: KDWeights,
    *,
    student_logvar: torch.Tensor | None = None,
    student_hidden: Mapping[int, torch.Tensor] | None = None,
    hidden_pairs: Sequence[tuple[int, int]] = (),
    projections: Mapping[str, torch.nn.Module] | None = None,
) -> dict[str, torch.Tensor]:
    """The KD parts of the objective: ``tok_kd_loss``, ``unc_kd_loss`` and ``hidden_kd_loss``.

    Each is Σ_k mean_b γ_{k,b} L^k_b. They need no hard labels, so a training step can queue
    them before the CTC loss (whose CUDA kernel reads the target lengths on the host, a sync):
    their many small kernels then launch while the GPU still runs the forwards.

    Args:
        student_logits: (B, T, V+1) student logits; the corrupted g of an uncertainty decoder in training.
        student_lengths: (B,) student encoder lengths.
        teachers: K teacher outputs on the same utterances.
        weights: (K, B) γ_{k,b} from :func:`teacher_weights`.
        hp: T (the other weights apply in :func:`distillation_total`).
        student_logvar: (B, T, V+1) student log σ²; the uncertainty term is used when it is given
            and every teacher has a ``logvar``.
        student_hidden: student block index -> (B, D_s, T) block outputs.
        hidden_pairs: (student block, teacher block) pairs for hidden KD.
        projections: ``f"{k}:{student block}:{teacher block}"`` -> module mapping D_s to D_t, where the widths differ.
    """
    if weights.shape != (len(teachers), student_logits.shape[0]):
        raise ValueError(
            f"teacher weights have shape {tuple(weights.shape)}, expected (K, B) = "
            f"({len(teachers)}, {student_logits.shape[0]}); build them with teacher_weights()"
        )
    zero = student_logits.new_zeros(())
    tok, unc, hid = zero, zero, zero
    use_unc = student_logvar is not None and all(t.logvar is not None for t in teachers)
    for k, out in enumerate(teachers):
        lengths = torch.minimum(student_lengths, out.lengths.to(student_lengths.device))
        frames = min(student_logits.shape[1], out.log_probs.shape[1])
        w = weights[k].to(student_logits.device)
        per_utt = token_kd_loss(
            _crop(student_logits, frames, 1),
            _crop(out.log_probs, frames, 1),
            lengths,
            temperature=hp.temperature,
            reduction="none",
        )
        tok = tok + (w * per_utt).mean()
        if use_unc:
            per_utt = uncertainty_kd_loss(
                _crop(student_logvar, frames, 1), _crop(out.logvar, frames, 1), lengths, reduction="none"
            )
            unc = unc + (w * per_utt).mean()
        for s_block, t_block in hidden_pairs:
            s_h, t_h = student_hidden[s_block], out.hidden[t_block]
            frames_h = min(s_h.shape[2], t_h.shape[2])
            key = f"{k}:{s_block}:{t_block}"
            proj = projections[key] if projections is not None and key in projections else None
            per_utt = hidden_kd_loss(
                _crop(s_h, frames_h, 2), _crop(t_h, frames_h, 2), lengths, projection=proj, reduction="none"
            )
            hid = hid + (w * per_utt).mean()
    return {"tok_kd_loss": tok, "unc_kd_loss": unc, "hidden_kd_loss": hid}


def distillation_total(ctc_loss: torch.Tensor, terms: Mapping[str, torch.Tensor], hp: KDWeights) -> dict[str, torch.Tensor]:
    """``train_loss`` = φ·``ctc_loss`` + α·(``tok_kd_loss`` + β·``unc_kd_loss``) + w_h·``hidden_kd_loss``, with its parts."""
    tok, unc, hid = terms["tok_kd_loss"], terms["unc_kd_loss"], terms["hidden_kd_loss"]
    total = hp.hard_label_weight * ctc_loss + hp.alpha * (tok + hp.beta * unc) + hp.hidden_weight * hid
    return {"train_loss": total, "ctc_loss": ctc_loss, "tok_kd_loss": tok, "unc_kd_loss": unc, "hidden_kd_loss": hid}


def distillation_loss(
    ctc_loss: torch.Tensor,
    student_logits: torch.Tensor,
    student_lengths: torch.Tensor,
    teachers: Sequence[TeacherOutputs],
    weights: torch.Tensor,
    hp: KDWeights,
    **kwargs,
) -> dict[str, torch.Tensor]:
    """The total teacher-student loss and its parts: :func:`distillation_terms` then :func:`distillation_total`.

    Args:
        ctc_loss: scalar L_CTC of the student (NeMo's CTC loss, ``mean_batch``).
        student_logits, student_lengths, teachers, weights, hp, and the keywords
            ``student_logvar``, ``student_hidden``, ``hidden_pairs``, ``projections``: as for
            :func:`distillation_terms`.

    Returns:
        ``train_loss`` = φ·``ctc_loss`` + α·(``tok_kd_loss`` + β·``unc_kd_loss``) + w_h·``hidden_kd_loss``,
        where each KD part is Σ_k mean_b γ_{k,b} L^k_b.
    """
    terms = distillation_terms(student_logits, student_lengths, teachers, weights, hp, **kwargs)
    return distillation_total(ctc_loss, terms, hp)
