"""Freezing the k lowest encoder blocks (Kunze et al. 2017, §5, Fig. 3).

A frozen block keeps its weights and its BatchNorm running statistics, and no gradient is
computed through it. The guarantee is kept by a forward pre-hook on each frozen block, so
it holds whoever calls ``.train()`` or ``.unfreeze()`` (NeMo's ``transcribe()`` does), after
Lightning's validation loop, checkpoint resume, ``.nemo`` restore and under DDP.
"""

from __future__ import annotations

import torch

from nemo_tl.errors import input_error

_FROZEN_FLAG = "_nemo_tl_frozen"


def _keep_frozen(module: torch.nn.Module, args) -> None:
    """Forward pre-hook: the block runs in eval mode with no parameter requiring grad."""
    if module.training:
        module.eval()
    for p in module.parameters():
        if p.requires_grad:
            p.requires_grad_(False)


def encoder_blocks(encoder: torch.nn.Module, *, where: str = "model.transfer.freeze_encoder_blocks"):
    """The ordered blocks of a NeMo ConvASREncoder (``encoder.encoder``, C1 first)."""
    blocks = getattr(encoder, "encoder", None)
    if not isinstance(blocks, torch.nn.Sequential):
        raise input_error(
            f"freezing encoder blocks needs a ConvASREncoder-style encoder with an `encoder` Sequential; "
            f"this model's encoder is a {type(encoder).__name__}",
            where=where,
            fix="set freeze_encoder_blocks: 0 for this encoder",
        )
    return blocks


def freeze_encoder_blocks(
    encoder: torch.nn.Module, k: int, *, where: str = "model.transfer.freeze_encoder_blocks"
) -> list[torch.nn.Module]:
    """Freeze the ``k`` lowest blocks of ``encoder.encoder`` and return them.

    Raises:
        InputError: ``k`` is negative, not an integer, or larger than the number of blocks.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise input_error(f"must be a non-negative integer, got {k!r}", where=where, fix="use 0 to freeze nothing")
    if k == 0:
        return []
    blocks = encoder_blocks(encoder, where=where)
    if k > len(blocks):
        raise input_error(
            f"asks to freeze {k} blocks but the encoder has only {len(blocks)} (maximum {len(blocks)})",
            where=where,
            fix=f"use a value from 0 to {len(blocks)}",
        )
    frozen = list(blocks[:k])
    for block in frozen:
        for p in block.parameters():
            p.requires_grad_(False)
        block.eval()
        if not getattr(block, _FROZEN_FLAG, False):
            block.register_forward_pre_hook(_keep_frozen)
            setattr(block, _FROZEN_FLAG, True)
    return frozen


def frozen_block_count(encoder: torch.nn.Module) -> int:
    """How many of the lowest encoder blocks are frozen (by :func:`freeze_encoder_blocks`)."""
    blocks = getattr(encoder, "encoder", None)
    if not isinstance(blocks, torch.nn.Sequential):
        return 0
    n = 0
    for block in blocks:
        if not getattr(block, _FROZEN_FLAG, False):
            break
        n += 1
    return n
