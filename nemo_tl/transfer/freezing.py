"""Freezing the k lowest encoder blocks (Kunze et al. 2017, §5, Fig. 3).

The blocks of an encoder, lowest first:

- NeMo's ConvASREncoder (QuartzNet, Jasper, Citrinet): the entries of ``encoder.encoder`` (C1 first);
- NeMo's ConformerEncoder (Conformer, FastConformer; Squeezeformer has the same shape):
  ``[pre_encode, *layers]``, so k=1 freezes the subsampling and k=2 also the first layer.

A frozen block keeps its weights and its normalization running statistics, and no gradient is
computed for its parameters. The guarantee is kept by a forward pre-hook on each frozen block, so
it holds whoever calls ``.train()`` or ``.unfreeze()`` (NeMo's ``transcribe()`` does), after
Lightning's validation loop, checkpoint resume, ``.nemo`` restore and under DDP.

Parameters shared between a frozen block and a block that is not frozen stay trainable. A
Conformer built with ``untie_biases: false`` shares its relative-position biases ``pos_bias_u`` and
``pos_bias_v`` (one pair, held by every layer's self-attention) across all layers: they stay
trainable unless every layer is frozen, and their gradient is taken through the frozen layers'
attention as well (those layers' weights still do not move).
"""

from __future__ import annotations

import torch
from nemo.utils import logging

from nemo_tl.errors import input_error

__all__ = ["block_description", "encoder_blocks", "freeze_encoder_blocks", "frozen_block_count", "frozen_parameters"]

_FROZEN_FLAG = "_nemo_tl_frozen"
_FROZEN_NAMES = "_nemo_tl_frozen_params"  # names (within the block) of the parameters the block keeps frozen


def _keep_frozen(module: torch.nn.Module, args) -> None:
    """Forward pre-hook: the block runs in eval mode with none of its own frozen parameters requiring grad."""
    if module.training:
        module.eval()
    names = getattr(module, _FROZEN_NAMES, None)
    for name, p in module.named_parameters():
        if p.requires_grad and (names is None or name in names):
            p.requires_grad_(False)


def _is_conformer_like(encoder: torch.nn.Module) -> bool:
    return isinstance(getattr(encoder, "layers", None), torch.nn.ModuleList) and isinstance(
        getattr(encoder, "pre_encode", None), torch.nn.Module
    )


def block_description(encoder: torch.nn.Module) -> str:
    """What one freezable block is for ``encoder`` (for messages), e.g. ``"pre_encode (ConvSubsampling), then 2 layers"``."""
    if _is_conformer_like(encoder):
        return (
            f"a block of this {type(encoder).__name__} is the subsampling `pre_encode` "
            f"({type(encoder.pre_encode).__name__}, block 1) or one of its {len(encoder.layers)} `layers` "
            f"(blocks 2..{len(encoder.layers) + 1})"
        )
    return f"a block of this {type(encoder).__name__} is one entry of `encoder.encoder` (C1 first)"


def encoder_blocks(
    encoder: torch.nn.Module, *, where: str = "model.transfer.freeze_encoder_blocks"
) -> list[torch.nn.Module]:
    """The ordered blocks of a NeMo encoder, lowest first.

    ConvASREncoder: the entries of ``encoder.encoder`` (C1 first). ConformerEncoder (FastConformer
    too): ``[pre_encode, *layers]``.

    Raises:
        InputError: the encoder has neither shape.
    """
    if _is_conformer_like(encoder):
        return [encoder.pre_encode, *encoder.layers]
    blocks = getattr(encoder, "encoder", None)
    if isinstance(blocks, torch.nn.Sequential):
        return list(blocks)
    raise input_error(
        "freezing encoder blocks needs a ConvASREncoder (an `encoder` Sequential) or a ConformerEncoder "
        f"(`pre_encode` and `layers`); this model's encoder is a {type(encoder).__name__}",
        where=where,
        fix="set freeze_encoder_blocks: 0 for this encoder",
    )


def freeze_encoder_blocks(
    encoder: torch.nn.Module, k: int, *, where: str = "model.transfer.freeze_encoder_blocks"
) -> list[torch.nn.Module]:
    """Freeze the ``k`` lowest blocks of ``encoder`` (see :func:`encoder_blocks`) and return them.

    A parameter that a frozen block shares with a block that is not frozen stays trainable (a
    Conformer's tied ``pos_bias_u``/``pos_bias_v`` unless every layer is frozen); this is logged.

    Raises:
        InputError: ``k`` is negative, not an integer, or larger than the number of blocks (the
            message names the maximum and what a block is for this encoder).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise input_error(f"must be a non-negative integer, got {k!r}", where=where, fix="use 0 to freeze nothing")
    if k == 0:
        return []
    blocks = encoder_blocks(encoder, where=where)
    if k > len(blocks):
        raise input_error(
            f"asks to freeze {k} blocks but the encoder has only {len(blocks)} (maximum {len(blocks)}); "
            + block_description(encoder),
            where=where,
            fix=f"use a value from 0 to {len(blocks)}",
        )
    frozen, trainable = blocks[:k], blocks[k:]
    kept_trainable = {id(p) for block in trainable for p in block.parameters()}
    shared: dict[int, str] = {}
    for block in frozen:
        names = set()
        for name, p in block.named_parameters():
            if id(p) in kept_trainable:
                shared.setdefault(id(p), name)
                continue
            p.requires_grad_(False)
            names.add(name)
        setattr(block, _FROZEN_NAMES, frozenset(names))
        block.eval()
        if not getattr(block, _FROZEN_FLAG, False):
            block.register_forward_pre_hook(_keep_frozen)
            setattr(block, _FROZEN_FLAG, True)
    if shared:
        logging.info(
            f"freeze_encoder_blocks={k}: {len(shared)} parameter(s) shared with blocks that are not frozen stay "
            f"trainable ({', '.join(sorted(set(shared.values())))}); a Conformer with untie_biases: false shares "
            f"pos_bias_u/pos_bias_v across all layers, and they are frozen only when every layer is "
            f"(freeze_encoder_blocks={len(blocks)})"
        )
    return frozen


def frozen_parameters(blocks: list[torch.nn.Module]) -> list[torch.nn.Parameter]:
    """The parameters :func:`freeze_encoder_blocks` froze in ``blocks`` (shared, still trainable ones excluded).

    What a model removes from its optimizer's parameter groups.
    """
    out, seen = [], set()
    for block in blocks:
        names = getattr(block, _FROZEN_NAMES, None)
        for name, p in block.named_parameters():
            if (names is None or name in names) and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def frozen_block_count(encoder: torch.nn.Module) -> int:
    """How many of the lowest encoder blocks are frozen (by :func:`freeze_encoder_blocks`); 0 for other encoders."""
    if not _is_conformer_like(encoder) and not isinstance(getattr(encoder, "encoder", None), torch.nn.Sequential):
        return 0
    n = 0
    for block in encoder_blocks(encoder):
        if not getattr(block, _FROZEN_FLAG, False):
            break
        n += 1
    return n
