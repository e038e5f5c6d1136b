"""What ``MultiSoftmaxRNNTModel.transcribe`` adds to NeMo's: the language of each file, τ and s_th."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from nemo.collections.asr.parts.mixins import TranscribeConfig

from nemo_tl.data.manifest import read_manifest
from nemo_tl.errors import input_error

__all__ = ["MultilingualTranscribeConfig", "file_languages"]


@dataclass
class MultilingualTranscribeConfig(TranscribeConfig):
    """NeMo's TranscribeConfig plus the language (one code, or one per file; None: LID-free) and τ, s_th."""

    languages: str | list[str] | None = None
    min_frames: float | None = None
    threshold: float | None = None
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
