"""LID-free decoding for the multi-softmax RNN-T (Joshi et al. 2021, §4.2 and §6.3).

Pure functions on frame-level LID log-posteriors; no model needed:

- :func:`early_stopping`: the decoder switch-off rule and the average decoder time T_avg;
- :func:`average_posteriors`: the utterance-level language posteriors (mean over valid frames);
- :func:`choose_language`: the language with the highest average posterior among the decoders still on.

Frames are counted from 1. With s_l(t) = Σ_{t'≤t} log P_{t'}(l), decoder l is switched off at the
first frame t with t > τ and s_l(t) < s_max(t) − s_th (s_max over all languages, Joshi et al.'s rule),
except that at least one decoder stays on: if at frame t the rule would switch off every decoder still
on, the one among them with the highest s_l(t) stays on (the lowest index on ties) and runs to the end.
t_l^off is the switch-off frame, or T if l stays on, and T_avg = Σ_l t_l^off / T ≥ 1.
"""

from __future__ import annotations

import math

import torch

from nemo_tl.losses.masks import frame_mask

__all__ = ["average_posteriors", "choose_language", "early_stopping"]


def _batched(log_post: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Bring ``log_post`` to (B, T, L) and ``lengths`` to (B,); says whether the input was unbatched."""
    unbatched = log_post.dim() == 2
    if unbatched:
        log_post = log_post.unsqueeze(0)
    if log_post.dim() != 3:
        raise ValueError(f"log_post must have shape (T, L) or (B, T, L), got {tuple(log_post.shape)}")
    batch, frames, _ = log_post.shape
    if lengths is None:
        lengths = torch.full((batch,), frames, dtype=torch.long, device=log_post.device)
    else:
        lengths = torch.as_tensor(lengths, device=log_post.device).long().reshape(-1)
        if lengths.numel() != batch:
            raise ValueError(f"lengths {tuple(lengths.shape)} must be (B,) with B = {batch} (log_post {tuple(log_post.shape)})")
    return log_post, lengths.clamp(min=0, max=frames), unbatched


def early_stopping(
    log_post: torch.Tensor,
    lengths: torch.Tensor | None = None,
    *,
    min_frames: float,
    threshold: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decoder switch-off frames, still-on decoders and T_avg (Joshi et al. 2021, eq. 1-2).

    Args:
        log_post: frame-level LID log-posteriors log P_t(l), shape (T, L) or (B, T, L).
        lengths: valid frames per utterance T_b, shape (B,); all T when None.
        min_frames: τ, the minimum wait in encoder frames (``math.inf``: never switch off).
        threshold: s_th ≥ 0, the score margin below the best language (``math.inf``: never).

    Returns:
        ``(t_off, active, t_avg)``: t_l^off per utterance and language (long, (B, L)), whether
        decoder l is still on at the last frame (bool, (B, L); at least one per utterance), and
        T_avg = Σ_l t_l^off / T_b ≥ 1 (float, (B,)); unbatched input gives (L,), (L,) and a scalar.
        An utterance with no frames keeps every decoder on and has T_avg = L.
    """
    if not (min_frames >= 0) or not (threshold >= 0):
        raise ValueError(f"min_frames (τ) and threshold (s_th) must be ≥ 0 (inf: never), got {min_frames} and {threshold}")
    log_post, lengths, unbatched = _batched(log_post, lengths)
    batch, frames, langs = log_post.shape
    valid = frame_mask(lengths, frames)  # (B, T)

    scores = torch.cumsum(log_post.double().masked_fill(~valid.unsqueeze(-1), 0.0), dim=1)  # s_l(t), (B, T, L)
    best = scores.max(dim=-1, keepdim=True).values  # s_max(t)
    t = torch.arange(1, frames + 1, device=log_post.device).view(1, frames, 1)
    off = (scores < best - threshold) & (t > min_frames) & valid.unsqueeze(-1)  # (B, T, L)

    switched = off.any(dim=1)  # (B, L)
    first = off.double().argmax(dim=1) + 1  # first frame (counted from 1) where the rule holds
    # The rule does not depend on which decoders are on, so the decoders still on at frame t are those
    # whose first switch-off frame is ≥ t. If every decoder is switched off, the last ones go off together
    # at t_last = max_l first_l: the one of them with the highest s_l(t_last) stays on instead.
    last = torch.where(switched, first, torch.zeros_like(first)).max(dim=1).values  # (B,)
    at_last = scores.gather(1, (last - 1).clamp(min=0).view(batch, 1, 1).expand(batch, 1, langs)).squeeze(1)
    candidates = switched & (first == last.unsqueeze(1))  # (B, L): switched off together at t_last
    keep = at_last.masked_fill(~candidates, -math.inf).argmax(dim=1)  # highest s_l(t_last), lowest index on ties
    every_off = switched.all(dim=1)  # (B,)
    switched = switched & ~(every_off.unsqueeze(1) & torch.nn.functional.one_hot(keep, langs).bool())
    t_off = torch.where(switched, first.long(), lengths.unsqueeze(1).expand(batch, langs))
    active = ~switched
    denom = lengths.double()
    t_avg = torch.where(lengths > 0, t_off.double().sum(dim=1) / denom.clamp(min=1), torch.full_like(denom, langs))
    if unbatched:
        return t_off[0], active[0], t_avg[0]
    return t_off, active, t_avg


def average_posteriors(log_post: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Utterance language posteriors: the mean of P_t(l) over the valid frames.

    Args:
        log_post: log P_t(l), shape (T, L) or (B, T, L).
        lengths: valid frames per utterance, shape (B,).

    Returns:
        (B, L) (or (L,) for unbatched input); uniform 1/L for an utterance with no frames.
    """
    log_post, lengths, unbatched = _batched(log_post, lengths)
    langs = log_post.shape[-1]
    valid = frame_mask(lengths, log_post.shape[1]).unsqueeze(-1)
    total = (log_post.exp() * valid).sum(dim=1)
    avg = torch.where(
        lengths.unsqueeze(1) > 0, total / lengths.clamp(min=1).unsqueeze(1), torch.full_like(total, 1.0 / langs)
    )
    return avg[0] if unbatched else avg


def choose_language(avg_post: torch.Tensor, active: torch.Tensor, t_off: torch.Tensor | None = None) -> torch.Tensor:
    """Index of the language with the highest average posterior among the decoders still on.

    Args:
        avg_post: (B, L) or (L,) average posteriors.
        active: same shape, bool: decoder still on at the last frame.
        t_off: same shape, switch-off frames t_l^off (from :func:`early_stopping`).

    Returns:
        (B,) long (or a scalar). :func:`early_stopping` leaves at least one decoder on; for an
        ``active`` with none on, the choice is among the decoders switched off last (largest
        t_l^off; without ``t_off``, among all languages).
    """
    if t_off is None:
        t_off = torch.zeros_like(avg_post, dtype=torch.long)
    last = t_off == t_off.max(dim=-1, keepdim=True).values
    candidates = torch.where(active.any(dim=-1, keepdim=True), active, last)
    return avg_post.masked_fill(~candidates, -math.inf).argmax(dim=-1)
