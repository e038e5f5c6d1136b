"""The multi-softmax model's NeMo decodings: one ``RNNTDecoding`` and one ``WER`` metric per language.

Each language's decoding runs over that language's prediction network, joint and labels, so NeMo's
greedy / beam decoders and its WER work unchanged; the CUDA-graph mode of each is limited by
:mod:`nemo_tl.multilingual.cuda_graphs`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from nemo.collections.asr.metrics.wer import WER
from nemo.collections.asr.parts.submodules.rnnt_decoding import RNNTDecoding, RNNTDecodingConfig
from omegaconf import DictConfig, OmegaConf

from nemo_tl.compat import metric_sync_disabled
from nemo_tl.multilingual.cuda_graphs import limit_graphs_mode

__all__ = ["full_decoding_config", "language_decodings", "language_wer_counts", "language_wers"]


def full_decoding_config(decoding_cfg: DictConfig) -> DictConfig:
    """``decoding_cfg`` over NeMo's ``RNNTDecodingConfig`` defaults (as ``EncDecRNNTModel`` merges it)."""
    defaults = OmegaConf.create(OmegaConf.to_container(OmegaConf.structured(RNNTDecodingConfig)))
    return OmegaConf.merge(defaults, decoding_cfg)


def language_decodings(
    decoder, joint, vocabularies: Mapping[str, Sequence[str]], decoding_cfg: DictConfig, graphs_mode: str
) -> dict[str, RNNTDecoding]:
    """One NeMo ``RNNTDecoding`` per language, over ``decoder[lang]``, ``joint[lang]`` and that language's labels."""
    decodings = {
        lang: RNNTDecoding(decoding_cfg=decoding_cfg, decoder=decoder[lang], joint=joint[lang], vocabulary=list(labels))
        for lang, labels in vocabularies.items()
    }
    for decoding in decodings.values():
        limit_graphs_mode(decoding, graphs_mode)
    return decodings


def language_wers(decodings: Mapping[str, RNNTDecoding], cfg: DictConfig) -> torch.nn.ModuleDict:
    """One NeMo ``WER`` per language over its decoding (``use_cer`` and ``log_prediction`` from the model ``cfg``)."""
    return torch.nn.ModuleDict(
        {
            lang: WER(
                decoding=decoding,
                batch_dim_index=0,
                use_cer=cfg.get("use_cer", False),
                log_prediction=cfg.get("log_prediction", False),
                dist_sync_on_step=True,
            )
            for lang, decoding in decodings.items()
        }
    )


def language_wer_counts(model: Any, groups: Iterable[tuple], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Word errors and reference words (two long scalars) of ``model``'s greedy decoding, summed over all ranks.

    ``groups``: ``(lang, encoded (b, D, T), encoded_len (b,), transcript (b, U), transcript_len (b,))``
    per language in the batch (``lang`` None: the union softmax), as ``model._language_groups`` yields them.
    """
    num = torch.zeros((), dtype=torch.long, device=device)
    denom = torch.zeros((), dtype=torch.long, device=device)
    for lang, enc, enc_len, tr, tr_len in groups:
        wer = model.wer if lang is None else model.lang_wer[lang]
        # Ranks may see different languages in a batch: no sync per language, one all-reduce below.
        with metric_sync_disabled(wer):
            if model.joint.fuse_loss_wer:  # NeMo's fused step without the loss: decodes fused_batch_size at a time
                by_lang = {} if lang is None else {"lang": lang}
                _, _, n, d = model.joint(
                    encoder_outputs=model._decoding_input(enc),
                    decoder_outputs=None,
                    encoder_lengths=enc_len,
                    transcripts=tr,
                    transcript_lengths=tr_len,
                    compute_wer=True,
                    **by_lang,
                )
            else:
                wer.update(
                    predictions=model._decoding_input(enc), predictions_lengths=enc_len, targets=tr, targets_lengths=tr_len
                )
                _, n, d = wer.compute()
                wer.reset()
        num, denom = num + n.to(num.device), denom + d.to(denom.device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(num)
        torch.distributed.all_reduce(denom)
    return num, denom
