"""What ``MultiSoftmaxRNNTModel.transcribe`` adds to NeMo's: the language of each file, τ and s_th, and the decoding.

:func:`transcribe_forward` encodes one batch (with the language one-hot where the model takes it);
:func:`transcribe_hypotheses` decodes one batch of encoder output: with the language known, by that
language's decoder; vanilla, by the union softmax (language from the script); multi-softmax without
a language, LID-free (:func:`nemo_tl.multilingual.lid_free.lid_free_decode`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from functools import partial
from typing import Any

import numpy as np
import torch
from nemo.collections.asr.parts.mixins import TranscribeConfig
from nemo.collections.asr.parts.utils.rnnt_utils import Hypothesis
from nemo.collections.asr.parts.utils.timestamp_utils import process_timestamp_outputs
from omegaconf import DictConfig

from nemo_tl.config_checks import checked_number
from nemo_tl.data.manifest import read_manifest
from nemo_tl.decoding.lid_free import average_posteriors
from nemo_tl.errors import input_error
from nemo_tl.multilingual.dataset import language_rows
from nemo_tl.multilingual.decoding import decode_language, decoding_input
from nemo_tl.multilingual.lid_free import lid_free_decode, script_language, stacked_decoding

__all__ = [
    "MultilingualTranscribeConfig",
    "batch_language_ids",
    "file_languages",
    "transcribe_config",
    "transcribe_forward",
    "transcribe_hypotheses",
    "transcribe_loader_config",
]


@dataclass
class MultilingualTranscribeConfig(TranscribeConfig):
    """NeMo's TranscribeConfig plus the language (one code, or one per file; None: LID-free) and τ, s_th."""

    languages: str | list[str] | None = None
    min_frames: float | None = None
    threshold: float | None = None
    keep_lid_posteriors: bool = False  # True: each hypothesis keeps .lid_log_posteriors, (T, L) float32 on the CPU
    _offset: int = field(default=0, repr=False)


def file_languages(
    audio: Any, lang: str | Sequence[str] | None, languages: Sequence[str], architecture: str
) -> str | list[str] | None:
    """``transcribe(lang=...)`` checked against the audio and the model's languages (InputError otherwise).

    Returns one code, one code per file, or None (LID-free; refused for the onehot model).
    """
    if lang is None:
        if architecture == "onehot":
            raise input_error(
                "the onehot model needs the language of every file",
                where="transcribe(lang=...)",
                fix="pass lang='xx' (or one per file); LID-free decoding needs architecture multisoftmax",
            )
        return None
    if isinstance(lang, str):
        names = [lang]
    else:
        names = list(lang)
        if isinstance(audio, str) and audio.endswith((".json", ".jsonl")):
            count = len(read_manifest(audio))
        elif isinstance(audio, (list, tuple)):
            count = len(audio)
        else:
            count = 1 if isinstance(audio, (str, np.ndarray, torch.Tensor)) else len(names)
        if len(names) != count:
            raise input_error(
                f"{len(names)} languages for {count} files",
                where="transcribe(lang=...)",
                fix="pass one language code, or one per file",
            )
    unknown = sorted({n for n in names if n not in languages})
    if unknown:
        raise input_error(
            f"unknown language(s) {', '.join(map(repr, unknown))} (known: {', '.join(languages)})",
            where="transcribe(lang=...)",
            fix="use one of the model's languages",
        )
    return lang if isinstance(lang, str) else names


def transcribe_config(
    override_config: TranscribeConfig | None,
    languages: str | list[str] | None,
    min_frames: float | None,
    threshold: float | None,
    **nemo_args: Any,
) -> MultilingualTranscribeConfig:
    """One ``transcribe`` call's config: ``override_config`` (else NeMo's arguments) plus the languages, τ, s_th."""
    if override_config is not None:  # keep the caller's settings, add the multilingual ones
        base = {f.name: getattr(override_config, f.name) for f in fields(TranscribeConfig)}
        trcfg = MultilingualTranscribeConfig(**base)
        trcfg.keep_lid_posteriors = bool(getattr(override_config, "keep_lid_posteriors", False))
    else:
        trcfg = MultilingualTranscribeConfig(**nemo_args)
    trcfg.return_hypotheses = True
    trcfg.languages = languages
    if min_frames is not None:
        min_frames = checked_number(min_frames, "transcribe(min_frames=...)", fix="give τ ≥ 0 frames (inf: never)")
    if threshold is not None:
        threshold = checked_number(threshold, "transcribe(threshold=...)", fix="give s_th ≥ 0 (inf: never)")
    trcfg.min_frames, trcfg.threshold = min_frames, threshold
    return trcfg


def transcribe_loader_config(config: dict, sample_rate: int, labels: Sequence[str]) -> DictConfig:
    """NeMo's plain char loader config for the files ``transcribe`` lists (no text, no language)."""
    manifest = config.get("manifest_filepath") or f"{config['temp_dir']}/manifest.json"
    batch_size = (
        config["batch_size"]
        if "manifest_filepath" in config
        else min(config["batch_size"], len(config["paths2audio_files"]))
    )
    return DictConfig(
        {
            "manifest_filepath": manifest,
            "sample_rate": sample_rate,
            "labels": list(labels),
            "batch_size": batch_size,
            "trim_silence": False,
            "shuffle": False,
            "num_workers": config.get("num_workers") or 0,
            "pin_memory": False,
        }
    )


def batch_language_ids(
    trcfg: TranscribeConfig, size: int, languages: Sequence[str], device: torch.device
) -> torch.Tensor | None:
    """Language indices (size,) of the next ``size`` files (batches come in file order); None: LID-free."""
    spec = getattr(trcfg, "languages", None)
    if spec is None:
        return None
    names = [spec] * size if isinstance(spec, str) else spec[trcfg._offset : trcfg._offset + size]
    trcfg._offset += size
    return torch.tensor([languages.index(name) for name in names], device=device)


def transcribe_forward(model: Any, batch: Any, trcfg: TranscribeConfig) -> dict[str, torch.Tensor | None]:
    """``model``'s encoder on one transcription batch (audio (B, S), lengths (B,), ...).

    Returns ``{"encoded": (B, D, T), "encoded_len": (B,), "lang_ids": (B,) or None (LID-free)}``.
    """
    signal, signal_len = batch[0], batch[1]
    lang_ids = batch_language_ids(trcfg, signal.shape[0], model.languages, signal.device)
    encoded, encoded_len = model.encode(signal, signal_len, lang_ids)
    return {"encoded": encoded, "encoded_len": encoded_len, "lang_ids": lang_ids}


def transcribe_hypotheses(
    model: Any, encoded: torch.Tensor, encoded_len: torch.Tensor, lang_ids: torch.Tensor | None, trcfg: TranscribeConfig
) -> list[Hypothesis]:
    """Decode one batch of ``model``'s encoder output: encoded (B, D, T), encoded_len (B,), lang_ids (B,) or None.

    Returns B NeMo hypotheses with ``.lang``, ``.lang_posteriors`` and ``.t_avg``
    (see :meth:`MultiSoftmaxRNNTModel.transcribe`).
    """
    encoded = decoding_input(model.joint, encoded)
    decode = partial(decode_language, model)
    batch = encoded.shape[0]
    log_post = model.lid_log_posteriors(encoded) if model.lid_head is not None else None
    avg = average_posteriors(log_post, encoded_len) if log_post is not None else None
    hyps: list[Hypothesis | None] = [None] * batch
    t_avg = torch.ones(batch, dtype=torch.double)
    chosen: list[str] = [""] * batch

    if lang_ids is not None:  # known language
        for lang, rows in language_rows(lang_ids, model.languages):
            idx = list(range(batch)) if rows is None else rows.tolist()
            sub = decode(lang, encoded[idx], encoded_len[idx])
            for i, h in zip(idx, sub):
                hyps[i], chosen[i] = h, lang
    elif not model.is_multisoftmax:  # vanilla: one union softmax; language from the script
        hyps = decode(None, encoded, encoded_len)
        for i, h in enumerate(hyps):
            chosen[i] = script_language(h.text, model.vocabularies, avg[i] if avg is not None else None)
    else:  # every language's decoder on the one encoder output; early stopping picks who runs to the end
        tau, s_th = getattr(trcfg, "min_frames", None), getattr(trcfg, "threshold", None)
        hyps, chosen, t_avg = lid_free_decode(
            encoded, encoded_len, model.languages, decode, stacked_decoding(model), log_post, avg,
            min_frames=model.multilingual.lid_free.min_frames if tau is None else tau,
            threshold=model.multilingual.lid_free.threshold if s_th is None else s_th,
        )

    if trcfg.timestamps:
        hyps = process_timestamp_outputs(hyps, model.encoder.subsampling_factor, model.cfg["preprocessor"]["window_stride"])
    for i, h in enumerate(hyps):
        h.lang = chosen[i]
        h.lang_posteriors = {lang: float(avg[i, j]) for j, lang in enumerate(model.languages)} if avg is not None else None
        h.t_avg = float(t_avg[i])
        if trcfg.keep_lid_posteriors and log_post is not None:
            h.lid_log_posteriors = log_post[i, : int(encoded_len[i])].float().cpu()
    return hyps
