"""The multi-softmax RNN-T loss: each utterance through its language's prediction network, joint and softmax.

:func:`language_rnnt_losses` builds one NeMo ``RNNTLoss`` per language (over that language's labels +
blank); :func:`language_rnnt_loss` sums the per-language losses of a batch split by language
(:func:`~nemo_tl.multilingual.dataset.language_groups`), weighted by their share of the batch. The
union-softmax baselines (vanilla, onehot) go through the same function with one group and NeMo's one loss.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from nemo.collections.asr.losses.rnnt import RNNTLoss

__all__ = ["language_rnnt_loss", "language_rnnt_losses"]


def language_rnnt_losses(
    vocabularies: Mapping[str, Sequence[str]], loss_name: str, loss_kwargs: Any, reduction: str
) -> torch.nn.ModuleDict:
    """One NeMo ``RNNTLoss`` per language over its labels (+ blank), ``loss_name`` / ``loss_kwargs`` as NeMo reads them."""
    return torch.nn.ModuleDict(
        {
            lang: RNNTLoss(num_classes=len(labels), loss_name=loss_name, loss_kwargs=loss_kwargs, reduction=reduction)
            for lang, labels in vocabularies.items()
        }
    )


def language_rnnt_loss(
    decoder: torch.nn.Module,
    joint: torch.nn.Module,
    loss: torch.nn.Module,
    groups: Iterable[tuple[str | None, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
    batch_size: int,
) -> torch.Tensor:
    """The RNN-T loss (a scalar) of a batch of ``batch_size`` utterances, given per language.

    ``groups``: ``(lang, encoded (b, D, T), encoded_len (b,), transcript (b, U), transcript_len (b,))`` per
    language in the batch; ``lang`` None: the union softmax (``decoder``, ``joint`` and ``loss`` are NeMo's
    own). Else ``decoder`` / ``joint`` take ``lang=`` and ``loss`` is ``{lang: RNNTLoss}``. Each group's
    loss is weighted by b / ``batch_size``. With ``joint.fuse_loss_wer`` NeMo's fused joint computes joint
    and loss ``joint.fused_batch_size`` utterances at a time (no (b, T, U + 1, V + 1) tensor for the group).
    """
    total: torch.Tensor | None = None
    for lang, enc, enc_len, tr, tr_len in groups:
        by_lang = {} if lang is None else {"lang": lang}
        dec, target_length, _ = decoder(targets=tr, target_length=tr_len, **by_lang)
        if joint.fuse_loss_wer:
            value, _, _, _ = joint(
                encoder_outputs=enc,
                decoder_outputs=dec,
                encoder_lengths=enc_len,
                transcripts=tr,
                transcript_lengths=target_length,
                **by_lang,
            )
        else:
            logits = joint(encoder_outputs=enc, decoder_outputs=dec, **by_lang)
            loss_fn = loss if lang is None else loss[lang]
            value = loss_fn(log_probs=logits, targets=tr, input_lengths=enc_len, target_lengths=target_length)
        weighted = value * (enc.shape[0] / batch_size)
        total = weighted if total is None else total + weighted
    if total is None:
        raise ValueError(f"no utterances to compute the loss of (batch_size {batch_size}, no groups)")
    return total
