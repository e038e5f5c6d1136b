"""The multi-softmax model's NeMo decodings: one ``RNNTDecoding`` and one ``WER`` metric per language.

Each language's decoding runs over that language's prediction network, joint and labels, so NeMo's
greedy / beam decoders and its WER work unchanged; the CUDA-graph mode of each is limited by
:mod:`nemo_tl.multilingual.cuda_graphs`. :func:`change_language_decodings` is the multi-softmax
model's ``change_decoding_strategy``; :func:`model_decodings` lists every decoding a model holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from nemo.collections.asr.metrics.wer import WER
from nemo.collections.asr.parts.submodules.rnnt_decoding import RNNTDecoding, RNNTDecodingConfig
from nemo.collections.asr.parts.utils.rnnt_utils import Hypothesis
from nemo.utils import logging
from omegaconf import DictConfig, OmegaConf, open_dict

from nemo_tl.compat import metric_sync_disabled
from nemo_tl.data.batches import LanguageBatch
from nemo_tl.decoding.lid_free import average_posteriors
from nemo_tl.multilingual.cuda_graphs import limit_graphs_mode
from nemo_tl.multilingual.lid_free import built_stacked_decoding

__all__ = [
    "change_language_decodings",
    "decode_language",
    "decoding_input",
    "full_decoding_config",
    "language_decodings",
    "language_wer_counts",
    "language_wers",
    "model_decodings",
    "validation_metrics",
]


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


def change_language_decodings(model: Any, decoding_cfg: DictConfig | None = None, verbose: bool = True) -> None:
    """NeMo's ``change_decoding_strategy`` for a multi-softmax ``model``: one decoding and WER metric per language.

    ``decoding_cfg`` (None: ``model.cfg.decoding``) goes over NeMo's defaults and becomes
    ``model.cfg.decoding``. ``model.decoding`` / ``model.wer`` are the first language's (what NeMo helpers
    that read them see); with ``joint.fuse_loss_wer`` each language's joint gets its language's loss and
    WER, as ``EncDecRNNTModel.__init__`` does for its one joint.
    """
    if decoding_cfg is None:
        decoding_cfg = model.cfg.decoding
    decoding_cfg = model.set_decoding_type_according_to_loss(full_decoding_config(decoding_cfg))
    model.lang_decoding = language_decodings(
        model.decoder, model.joint, model.vocabularies, decoding_cfg, model.multilingual.cuda_graphs_mode
    )
    model.lang_wer = language_wers(model.lang_decoding, model.cfg)
    first = model.languages[0]
    model.decoding = model.lang_decoding[first]
    model.wer = model.lang_wer[first]
    if model.joint.fuse_loss_wer:  # the fused joints compute WER with these new metrics
        model.joint.set_loss(model.loss)
        model.joint.set_wer(model.lang_wer)
    for lang in model.languages:
        model.joint[lang].temperature = decoding_cfg.get("temperature", 1.0)
    with open_dict(model.cfg):
        model.cfg.decoding = decoding_cfg
    if verbose:
        logging.info(f"Changed decoding strategy of every language to\n{OmegaConf.to_yaml(decoding_cfg)}")


def model_decodings(model: Any) -> list[RNNTDecoding]:
    """Every NeMo decoding ``model`` holds: one per language (or the union one) and the batched LID-free one."""
    if not model.is_multisoftmax:
        return [model.decoding] if getattr(model, "decoding", None) is not None else []
    decodings = list(getattr(model, "lang_decoding", {}).values())
    stacked = built_stacked_decoding(model)
    if stacked is not None:
        decodings.append(stacked.decoding)
    return decodings


def decoding_input(joint: torch.nn.Module, encoded: torch.Tensor) -> torch.Tensor:
    """The encoder output (B, D, T) in the ``joint``'s parameter dtype, as the decoders take it.

    Under bf16/fp16 autocast a convolutional (BatchNorm) encoder returns half-precision output,
    while NeMo's CUDA-graph decoder turns autocast off and projects the encoder output with the
    joint's fp32 weights (a dtype error). Without graphs nothing changes: autocast casts the
    fp32 copy back to the same half-precision values for the matmuls.
    """
    dtype = next(joint.parameters()).dtype
    return encoded.to(dtype) if encoded.is_floating_point() and encoded.dtype != dtype else encoded


def decode_language(model: Any, lang: str | None, encoded: torch.Tensor, encoded_len: torch.Tensor) -> list[Hypothesis]:
    """B hypotheses of ``lang``'s decoder (``lang`` None: the union softmax): encoded (B, D, T), encoded_len (B,)."""
    decoding = model.lang_decoding[lang] if model.is_multisoftmax else model.decoding
    return decoding.rnnt_decoder_predictions_tensor(encoded, encoded_len, return_hypotheses=True)


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
                    encoder_outputs=decoding_input(model.joint, enc),
                    decoder_outputs=None,
                    encoder_lengths=enc_len,
                    transcripts=tr,
                    transcript_lengths=tr_len,
                    compute_wer=True,
                    **by_lang,
                )
            else:
                wer.update(
                    predictions=decoding_input(model.joint, enc), predictions_lengths=enc_len, targets=tr, targets_lengths=tr_len
                )
                _, n, d = wer.compute()
                wer.reset()
        num, denom = num + n.to(num.device), denom + d.to(denom.device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(num)
        torch.distributed.all_reduce(denom)
    return num, denom


def validation_metrics(
    model: Any, batch: LanguageBatch, encoded: torch.Tensor, encoded_len: torch.Tensor
) -> dict[str, torch.Tensor]:
    """One validation batch's greedy WER counts (summed over all ranks) and, with a LID head, utterance LID accuracy.

    ``encoded`` (B, D, T), ``encoded_len`` (B,): ``model``'s encoder output for ``batch``. Returns
    ``val_wer_num``, ``val_wer_denom``, ``val_wer`` and ``val_lid_acc`` (argmax of the average LID posterior).
    """
    groups = model._language_groups(batch.lang_ids, encoded, encoded_len, batch.tokens, batch.token_lens)
    num, denom = language_wer_counts(model, groups, encoded.device)
    metrics = {"val_wer_num": num, "val_wer_denom": denom, "val_wer": num.float() / denom.clamp(min=1)}
    if model.lid_head is not None:
        post = average_posteriors(model.lid_log_posteriors(encoded), encoded_len)
        metrics["val_lid_acc"] = (post.argmax(dim=-1) == batch.lang_ids).float().mean()
    return metrics
