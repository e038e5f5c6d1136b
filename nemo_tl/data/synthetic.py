"""Synthetic speech-like audio and manifests for tests and benchmarks.

Each character is rendered as a short tone of its own frequency, so a model can learn the
mapping, and no speech synthesizer is needed. For real (synthesized) speech see
:mod:`nemo_tl.data.synth_corpus`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
import soundfile as sf


def tone_audio(text: str, sample_rate: int = 16000, char_seconds: float = 0.06, seed: int = 0) -> np.ndarray:
    """Render ``text`` as a sequence of per-character tones with a little noise (float32, mono)."""
    rng = np.random.default_rng(seed)
    n = int(char_seconds * sample_rate)
    t = np.arange(n) / sample_rate
    pieces = [np.zeros(n // 2, dtype=np.float32)]
    for ch in text:
        freq = 200.0 + 37.0 * (ord(ch) % 97)
        pieces.append((0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32))
    pieces.append(np.zeros(n // 2, dtype=np.float32))
    audio = np.concatenate(pieces)
    audio += 0.01 * rng.standard_normal(audio.shape[0]).astype(np.float32)
    return audio


def write_manifest(path: str, entries: Sequence[dict]) -> str:
    """Write NeMo JSON-lines manifest ``entries`` to ``path``; returns ``path``."""
    with open(path, "w", encoding="utf-8") as f:
        for e in entries:
            f.write(json.dumps(e, ensure_ascii=False) + "\n")
    return path


def make_tone_manifest(
    directory: str,
    texts: Sequence[str],
    name: str = "manifest",
    sample_rate: int = 16000,
    lang: str | None = None,
    seed: int = 0,
) -> str:
    """Write one wav per text under ``directory`` and a manifest ``{name}.json`` listing them.

    Returns the manifest path. Lines carry ``audio_filepath``, ``duration``, ``text`` and,
    when given, ``lang``.
    """
    audio_dir = os.path.join(directory, f"{name}_wav")
    os.makedirs(audio_dir, exist_ok=True)
    entries = []
    for i, text in enumerate(texts):
        audio = tone_audio(text, sample_rate=sample_rate, seed=seed + i)
        wav = os.path.join(audio_dir, f"{i:05d}.wav")
        sf.write(wav, audio, sample_rate)
        entry = {"audio_filepath": wav, "duration": round(len(audio) / sample_rate, 4), "text": text}
        if lang is not None:
            entry["lang"] = lang
        entries.append(entry)
    return write_manifest(os.path.join(directory, f"{name}.json"), entries)
