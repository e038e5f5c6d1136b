"""Frame-level language-identification loss of the integrated LID head (Joshi et al. 2021, §4.2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nemo_tl.losses.masks import frame_mask

__all__ = ["frame_lid_loss"]


def frame_lid_loss(logits: torch.Tensor, lengths: torch.Tensor, lang_ids: torch.Tensor) -> torch.Tensor:
    """Cross entropy of every valid frame against its utterance's language.

    Every frame of utterance b is labelled with that utterance's language ``lang_ids[b]``;
    frames at or beyond ``lengths[b]`` (padding) contribute nothing, neither loss nor gradient.

    Args:
        logits: LID logits, shape (B, T, L).
        lengths: valid encoder frames per utterance, shape (B,).
        lang_ids: language index per utterance, shape (B,).

    Returns:
        Scalar: the mean CE over all valid frames of the batch (0 when there are none).
    """
    if logits.dim() != 3 or lengths.shape != (logits.shape[0],) or lang_ids.shape != (logits.shape[0],):
        raise ValueError(
            f"logits {tuple(logits.shape)}, lengths {tuple(lengths.shape)} and lang_ids {tuple(lang_ids.shape)} "
            "must be (B, T, L), (B,) and (B,)"
        )
    batch, frames, _ = logits.shape
    valid = frame_mask(lengths.to(logits.device), frames)
    targets = lang_ids.to(logits.device).long().unsqueeze(1).expand(batch, frames)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    ce = ce.view(batch, frames) * valid
    return ce.sum() / valid.sum().clamp(min=1)
