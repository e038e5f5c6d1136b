"""The padded-frame mask shared by the losses and LID-free decoding."""

from __future__ import annotations

import torch

__all__ = ["frame_mask"]


def frame_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """Boolean mask (B, T = ``max_len``), True on the first ``lengths[b]`` frames of utterance b.

    Frames at or beyond an utterance's length (padding) are False; ``lengths`` (B,) may be of
    any integer or float dtype.
    """
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths.to(torch.long)[:, None]
