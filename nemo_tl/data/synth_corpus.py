"""Synthesize a multilingual speech corpus with espeak-ng, as NeMo manifests.

::

    python -m nemo_tl.data.synth_corpus --langs en,de,ru,hi --hours 1 --out DIR \\
        [--utterances N] [--seed 0] [--splits train=0.8,dev=0.1,test=0.1] [--jobs N] \\
        [--texts digits|cldr|mixed] [--backend auto|espeakng-loader|libespeak-ng|cli]

Writes, for each language code ``L`` given, ``DIR/L/L_{train,dev,test}.json`` (NeMo manifests
with ``audio_filepath`` (absolute), ``duration``, ``text``, ``lang``; the language in the file
name keeps NeMo's per-set validation names, the manifest stems, apart), the 16 kHz mono 16-bit
wavs under ``DIR/L/<split>/``, and ``DIR/corpus.json`` (hours and utterances per language and
split, backend, the exact command, the request and each manifest's audio sha256).

Run again on the same ``DIR`` with the same request (languages, size, seed, texts, splits, backend
and its version), the corpus there is reused when every manifest's audio still has its recorded
sha256; otherwise it is synthesized again. One process synthesizes into a folder at a time (a lock
file, ``DIR/.synth_corpus.lock``): a second one started meanwhile waits, then reuses the corpus.

Languages: en, de, es, ru, hi, ta, gu, and any English accent voice of the installed espeak-ng
(en-us, en-gb, en-gb-scotland, en-029, en-gb-x-rp, en-gb-x-gbclan, en-gb-x-gbcwmd, en-us-nyc).
``lang`` in the manifests is the code exactly as given (lowercased): ``en-029`` utterances
carry ``"lang": "en-029"``, so accents are separate domains that a user can group; ``en`` is
spoken with the ``en-us`` voice. Texts, normalization and labels come from the base language
(:mod:`nemo_tl.data.texts`).

Splits are made over distinct texts (no text is in two splits). A text's split depends only on
the seed, not on the corpus size: a larger corpus with the same seed keeps the smaller one's
dev and test texts out of its train split.

Backends, tried in this order by ``auto``: ``espeakng-loader`` (libespeak-ng and voice data
from the PyPI wheel, through ctypes; what runs on a machine without apt), ``libespeak-ng``
(the system library, through ctypes), ``cli`` (the ``espeak-ng`` program, one process per
utterance). Each utterance gets a voice variant (+m1..+m8, +f1..+f5), speed, pitch, gain and
light white noise (25-45 dB SNR) drawn from a seeded generator, so a corpus is identical for
a seed and a backend, whatever ``--jobs`` (libespeak-ng keeps some state between utterances,
so every unit of utterances is synthesized in a freshly forked worker; the ``cli`` backend is
reproducible with espeak-ng up to 1.51 only, as 1.52 seeds its noise with the time).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import json
import math
import multiprocessing
import os
import shlex
import shutil
import subprocess
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from glob import glob

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from nemo_tl.data.synthetic import write_manifest
from nemo_tl.data.texts import TEXT_SOURCES, base_language, is_valid, labels_for, text_pool
from nemo_tl.errors import input_error

SAMPLE_RATE = 16000
DEFAULT_SPLITS = {"train": 0.8, "dev": 0.1, "test": 0.1}
VARIANTS = tuple(f"m{i}" for i in range(1, 9)) + tuple(f"f{i}" for i in range(1, 6))
DEFAULT_VOICES = {"en": "en-us"}
NOT_ACCENTS = {"en-shaw"}  # English in the Shavian alphabet, not an accent
BACKENDS = ("auto", "espeakng-loader", "libespeak-ng", "cli")
SPEED_WPM = (140, 210)  # espeak-ng's default is 175 words per minute
PITCH = (30, 70)  # 0-99, default 50
SNR_DB = (25.0, 45.0)
GAIN = (0.3, 0.9)  # peak level before noise
UNIT = 48  # utterances per worker task
_INSTALL_FIX = (
    "install espeak-ng (`apt-get install espeak-ng`) or the wheel (`pip install espeakng-loader`, "
    "which nemo_tl's synth extra installs: `pip install 'nemo_tl[synth]'`)"
)


# ---------------------------------------------------------------------------------------------
# Backends


class LibEspeak:
    """libespeak-ng through ctypes, synchronous synthesis into memory.

    ``lib_path``/``data_dir`` from the ``espeakng-loader`` wheel, or the system library with
    its compiled-in data directory (``data_dir=None``). The library is initialized lazily in
    each process (pool workers included).
    """

    AUDIO_OUTPUT_SYNCHRONOUS = 2
    INITIALIZE_DONT_EXIT = 0x8000
    RATE, PITCH = 1, 3
    CHARS_UTF8 = 1
    POS_CHARACTER = 1
    _CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

    def __init__(self, name: str, lib_path: str, data_dir: str | None):
        self.name, self.lib_path, self.data_dir = name, lib_path, data_dir
        self._lib = None
        self._chunks: list[np.ndarray] = []
        self._voice: str | None = None
        self.sample_rate = 0
        self.version = ""

    def __getstate__(self) -> dict:
        return {"name": self.name, "lib_path": self.lib_path, "data_dir": self.data_dir}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["name"], state["lib_path"], state["data_dir"])

    def _init(self) -> None:
        if self._lib is not None:  # a forked worker keeps its parent's initialized library
            return
        lib = ctypes.CDLL(self.lib_path)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [self._CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        if hasattr(lib, "espeak_ng_SetRandSeed"):  # 1.52+ seeds its noise source with the time
            lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Info.argtypes = [ctypes.c_void_p]
        lib.espeak_Info.restype = ctypes.c_char_p
        path = self.data_dir.encode() if self.data_dir else None
        rate = lib.espeak_Initialize(self.AUDIO_OUTPUT_SYNCHRONOUS, 0, path, self.INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise input_error(
                f"libespeak-ng at {self.lib_path} failed to initialize (data {self.data_dir})", fix=_INSTALL_FIX
            )
        self._callback = self._CALLBACK(self._collect)  # keep a reference for the library
        lib.espeak_SetSynthCallback(self._callback)
        self._lib, self.sample_rate, self._voice = lib, rate, None
        self.version = lib.espeak_Info(None).decode()

    def _collect(self, wav, n, events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def synth(self, text: str, voice: str, speed: int, pitch: int, seed: int = 0) -> tuple[np.ndarray, int]:
        """int16 samples and their sample rate for ``text`` spoken by ``voice`` (``"de+f2"``).

        ``seed`` seeds espeak-ng's noise source (fricatives): libc ``rand`` up to 1.51, its
        own generator from 1.52.
        """
        self._init()
        lib = self._lib
        if hasattr(lib, "espeak_ng_SetRandSeed"):
            lib.espeak_ng_SetRandSeed(seed)
        _libc().srand(seed)
        if voice != self._voice:
            if lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise input_error(
                    f"espeak-ng voice {voice!r} not found ({self.name})", fix="list voices with `espeak-ng --voices`"
                )
            self._voice = voice
        lib.espeak_SetParameter(self.RATE, speed, 0)
        lib.espeak_SetParameter(self.PITCH, pitch, 0)
        data = text.encode() + b"\0"
        self._chunks = []
        err = lib.espeak_Synth(data, len(data), 0, self.POS_CHARACTER, 0, self.CHARS_UTF8, None, None)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed with code {err} for {text!r} ({voice})")
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return audio.astype(np.int16), self.sample_rate

    def describe(self) -> dict:
        self._init()
        return {"name": self.name, "version": self.version, "library": self.lib_path, "data": self.data_dir}


@cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None)
    libc.srand.argtypes = [ctypes.c_uint]
    return libc


class CliEspeak:
    """The ``espeak-ng`` program: one process per utterance, wav read from its stdout."""

    def __init__(self, exe: str):
        self.name, self.exe = "cli", exe
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout
        self.version = out.split("text-to-speech:")[-1].split("Data at:")[0].strip()
        self.data_dir = out.split("Data at:")[-1].strip() if "Data at:" in out else None

    def synth(self, text: str, voice: str, speed: int, pitch: int, seed: int = 0) -> tuple[np.ndarray, int]:
        """int16 samples and their sample rate for ``text`` spoken by ``voice`` (``"de+f2"``).

        ``seed`` is unused: each process starts from the same noise state up to espeak-ng 1.51
        (Debian's); 1.52 seeds it with the time, so its program output is not reproducible.
        """
        cmd = [self.exe, "--stdout", "-v", voice, "-s", str(speed), "-p", str(pitch)]
        proc = subprocess.run(cmd, input=text.encode(), capture_output=True)
        wav = proc.stdout
        if proc.returncode != 0 or wav[:4] != b"RIFF" or len(wav) < 44:
            raise RuntimeError(f"espeak-ng failed for {text!r} ({voice}): {proc.stderr.decode(errors='replace')}")
        rate = int.from_bytes(wav[24:28], "little")
        return np.frombuffer(wav[44 : 44 + (len(wav) - 44) // 2 * 2], dtype=np.int16), rate

    def describe(self) -> dict:
        return {"name": self.name, "version": self.version, "program": self.exe, "data": self.data_dir}


def _loader_backend() -> LibEspeak | None:
    try:
        import espeakng_loader
    except ImportError:
        return None
    return LibEspeak("espeakng-loader", espeakng_loader.get_library_path(), espeakng_loader.get_data_path())


def _system_lib_backend() -> LibEspeak | None:
    lib = ctypes.util.find_library("espeak-ng")
    return LibEspeak("libespeak-ng", lib, None) if lib else None


def _cli_backend() -> CliEspeak | None:
    exe = shutil.which("espeak-ng")
    return CliEspeak(exe) if exe else None


def get_backend(name: str = "auto") -> LibEspeak | CliEspeak:
    """The espeak-ng backend ``name`` (one of :data:`BACKENDS`); ``auto`` takes the first available."""
    makers = {"espeakng-loader": _loader_backend, "libespeak-ng": _system_lib_backend, "cli": _cli_backend}
    if name not in BACKENDS:
        raise input_error(
            f"unknown backend {name!r}", where="synth_corpus --backend", fix=f"use one of {', '.join(BACKENDS)}"
        )
    for key in makers if name == "auto" else [name]:
        backend = makers[key]()
        if backend is not None:
            return backend
    raise input_error(f"no espeak-ng backend found (tried {name})", where="synth_corpus", fix=_INSTALL_FIX)


_BACKEND_SOURCES = {
    "espeakng-loader": "the espeakng-loader wheel",
    "libespeak-ng": "the system library",
    "cli": "the espeak-ng program",
}


def describe_backend(name: str = "auto") -> str:
    """One line naming the backend ``name`` resolves to, after it has spoken a test word.

    ``"espeakng-loader (espeak-ng 1.52.0 from the espeakng-loader wheel)"``; raises
    :class:`~nemo_tl.errors.InputError` when none is installed, ``RuntimeError`` when it cannot speak.
    """
    backend = get_backend(name)
    audio, _ = backend.synth("one", "en-us", 175, 50)
    if audio.size == 0:
        raise RuntimeError(f"espeak-ng backend {backend.name} gave no audio for a test word")
    return f"{backend.name} (espeak-ng {backend.version} from {_BACKEND_SOURCES[backend.name]})"


def _data_dir(backend: LibEspeak | CliEspeak) -> str | None:
    if backend.data_dir:
        return backend.data_dir
    for d in (
        "/usr/lib/x86_64-linux-gnu/espeak-ng-data",
        "/usr/lib/aarch64-linux-gnu/espeak-ng-data",
        "/usr/share/espeak-ng-data",
    ):
        if os.path.isdir(d):
            return d
    return None


def available_voices(backend: LibEspeak | CliEspeak) -> tuple[set[str], list[str]]:
    """Language codes of the backend's voices (``language`` lines of its voice files) and the
    :data:`VARIANTS` it has."""
    data = _data_dir(backend)
    if data is None:
        return set(), list(VARIANTS)
    langs = set()
    for path in glob(os.path.join(data, "lang", "**", "*"), recursive=True):
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                langs.update(
                    line.split()[1].lower() for line in f if line.startswith("language ") and len(line.split()) > 1
                )
    variants = [v for v in VARIANTS if os.path.isfile(os.path.join(data, "voices", "!v", v))]
    return langs, variants or list(VARIANTS)


def voice_for(lang: str, voices: set[str]) -> str:
    """The espeak-ng voice that speaks language code ``lang`` (``en`` -> ``en-us``)."""
    base_language(lang)
    voice = DEFAULT_VOICES.get(lang, lang)
    if voice in NOT_ACCENTS or (voices and voice not in voices):
        english = sorted(v for v in voices - NOT_ACCENTS if v.startswith("en-"))
        raise input_error(
            f"espeak-ng has no voice for {lang!r}",
            where="synth_corpus --langs",
            fix=f"use a voice espeak-ng has; English accents here: {', '.join(english)}",
        )
    return voice


# ---------------------------------------------------------------------------------------------
# Synthesis


@dataclass(frozen=True)
class Utterance:
    """One utterance to synthesize: text, voice and the seeded speaker/noise settings."""

    path: str
    text: str
    voice: str
    speed: int
    pitch: int
    gain: float
    snr_db: float
    noise_seed: int


_WORKER_BACKEND: LibEspeak | CliEspeak | None = None


def _set_worker_backend(backend: LibEspeak | CliEspeak) -> None:
    global _WORKER_BACKEND
    _WORKER_BACKEND = backend


def render(utt: Utterance, backend: LibEspeak | CliEspeak) -> float:
    """Synthesize ``utt`` to a 16 kHz mono 16-bit wav at ``utt.path``; returns its duration (s)."""
    samples, rate = backend.synth(utt.text, utt.voice, utt.speed, utt.pitch, utt.noise_seed)
    audio = samples.astype(np.float64) / 32768.0
    if rate != SAMPLE_RATE:
        g = math.gcd(rate, SAMPLE_RATE)
        audio = resample_poly(audio, SAMPLE_RATE // g, rate // g)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak > 0:
        audio *= utt.gain / peak
    rms = float(np.sqrt(np.mean(audio**2))) if audio.size else 0.0
    noise = np.random.default_rng(utt.noise_seed).standard_normal(audio.shape[0])
    audio += noise * rms * 10.0 ** (-utt.snr_db / 20.0)
    pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)
    sf.write(utt.path, pcm, SAMPLE_RATE, subtype="PCM_16")
    return pcm.shape[0] / SAMPLE_RATE


def _render_unit(utts: list[Utterance]) -> list[float]:
    return [render(u, _WORKER_BACKEND) for u in utts]


def parse_splits(spec: str | dict[str, float] | None) -> dict[str, float]:
    """``"train=0.8,dev=0.1,test=0.1"`` -> ``{"train": 0.8, ...}`` (fractions summing to 1)."""
    if spec is None:
        return dict(DEFAULT_SPLITS)
    if isinstance(spec, str):
        try:
            spec = {k.strip(): float(v) for k, v in (part.split("=") for part in spec.split(",") if part.strip())}
        except ValueError as e:
            raise input_error(
                f"cannot parse splits {spec!r}",
                where="synth_corpus --splits",
                fix="write e.g. train=0.8,dev=0.1,test=0.1",
            ) from e
    if not spec or any(v <= 0 for v in spec.values()) or abs(sum(spec.values()) - 1.0) > 1e-6:
        raise input_error(
            f"split fractions {spec} must be positive and sum to 1",
            where="synth_corpus --splits",
            fix="write e.g. train=0.8,dev=0.1,test=0.1",
        )
    return dict(spec)


def split_texts(texts: list[str], splits: dict[str, float], seed: int, lang: str) -> dict[str, list[str]]:
    """Assign each distinct text to one split at random (seeded); order within a split is kept."""
    edges = np.cumsum(list(splits.values()))
    u = np.random.default_rng([seed, zlib.crc32(lang.encode()), 3]).random(len(texts))
    which = np.minimum(np.searchsorted(edges, u, side="right"), len(splits) - 1)
    out = {name: [t for t, w in zip(texts, which) if w == i] for i, name in enumerate(splits)}
    for name, chosen in out.items():
        if not chosen:
            raise input_error(
                f"split {name!r} of {lang} got no texts out of {len(texts)}",
                where="synth_corpus --splits",
                fix="give it a larger fraction",
            )
    return out


def _utterance(
    out_dir: str,
    lang: str,
    split_idx: int,
    split: str,
    i: int,
    texts: list[str],
    voice: str,
    variants: list[str],
    seed: int,
) -> Utterance:
    rng = np.random.default_rng([seed, zlib.crc32(lang.encode()), split_idx, i])
    return Utterance(
        path=os.path.join(out_dir, lang, split, f"{i:06d}.wav"),
        text=texts[i % len(texts)],
        voice=f"{voice}+{variants[rng.integers(len(variants))]}",
        speed=int(rng.integers(SPEED_WPM[0], SPEED_WPM[1] + 1)),
        pitch=int(rng.integers(PITCH[0], PITCH[1] + 1)),
        gain=float(rng.uniform(*GAIN)),
        snr_db=float(rng.uniform(*SNR_DB)),
        noise_seed=int(rng.integers(2**31)),
    )


def _command(out_dir, langs, hours, utterances, seed, text_source, splits, jobs, backend) -> str:
    args = ["python", "-m", "nemo_tl.data.synth_corpus", "--langs", ",".join(langs), "--out", out_dir]
    args += ["--hours", str(hours)] if hours is not None else ["--utterances", str(utterances)]
    args += ["--seed", str(seed), "--texts", text_source, "--splits", ",".join(f"{k}={v}" for k, v in splits.items())]
    args += ["--jobs", str(jobs), "--backend", backend]
    return shlex.join(args)


def manifest_path(out_dir: str, lang: str, split: str) -> str:
    """Where :func:`synthesize_corpus` writes the manifest of ``lang``'s ``split``: ``out_dir/de/de_dev.json``.

    The file name carries the language, so NeMo's per-set validation names (the manifest
    stem: ``de_dev``, ``en_dev``) differ when several languages are validated in one run.
    """
    return os.path.join(out_dir, lang, f"{lang}_{split}.json")


def synthesize_corpus(
    out_dir: str,
    langs: list[str] | str,
    hours: float | None = None,
    utterances: int | None = None,
    seed: int = 0,
    text_source: str = "digits",
    splits: str | dict[str, float] | None = None,
    jobs: int | None = None,
    backend: str = "auto",
) -> dict[str, dict[str, str]]:
    """Synthesize a corpus under ``out_dir``; returns ``{lang: {split: manifest path}}``.

    Args:
        langs: language codes (``["en", "de"]`` or ``"en,de"``); English accents as ``en-029`` etc.
        hours: target audio per language (approximate: each split stops at the first
            utterance that reaches its share).
        utterances: alternatively, the number of utterances per language.
        seed: the same seed, arguments and backend give identical manifests and audio.
        text_source: ``digits``, ``cldr`` or ``mixed`` (see :mod:`nemo_tl.data.texts`).
        splits: fractions per split; texts are split, so no text is in two splits.
        jobs: worker processes (default ``os.cpu_count()``).
        backend: one of :data:`BACKENDS`.
    """
    langs = [lang.strip().lower() for lang in (langs.split(",") if isinstance(langs, str) else langs) if lang.strip()]
    if not langs:
        raise input_error("no language given", where="synth_corpus --langs", fix="e.g. --langs en,de")
    if (hours is None) == (utterances is None):
        raise input_error(
            "give exactly one of hours and utterances", where="synth_corpus", fix="e.g. --hours 1 or --utterances 500"
        )
    if (hours is not None and hours <= 0) or (utterances is not None and utterances <= 0):
        raise input_error("hours/utterances must be positive", where="synth_corpus")
    if text_source not in TEXT_SOURCES:
        raise input_error(
            f"unknown text source {text_source!r}",
            where="synth_corpus --texts",
            fix=f"use one of {', '.join(TEXT_SOURCES)}",
        )
    for lang in langs:
        base_language(lang)
    splits = parse_splits(splits)
    jobs = max(1, jobs or os.cpu_count() or 1)
    engine = get_backend(backend)
    voices, variants = available_voices(engine)
    voice_of = {lang: voice_for(lang, voices) for lang in langs}
    out_dir = os.path.abspath(out_dir)

    os.makedirs(out_dir, exist_ok=True)
    request = {"langs": langs, "hours": hours, "utterances": utterances, "seed": seed, "text_source": text_source,
               "splits": dict(splits), "backend": _describe_apart(engine)}
    # one synthesis at a time per folder: a second process waits, then reuses what the first wrote
    with _folder_lock(out_dir):
        reused = _reusable(out_dir, request)
        if reused is not None:
            print(f"synth_corpus: {out_dir} already holds this corpus (same request, same audio): reused", flush=True)
            return reused
        return _synthesize(out_dir, langs, hours, utterances, seed, text_source, splits, jobs, backend, engine,
                           variants, voice_of, request)


def recorded_audio_sha256(out_dir: str) -> dict[str, str]:
    """The sha256 of each manifest's audio (:func:`nemo_tl.data.manifest.audio_sha256`) as
    :func:`synthesize_corpus` recorded it in ``out_dir/corpus.json``, keyed ``"<lang>_<split>"``: computed
    when the audio was written and checked whenever the corpus is reused."""
    with open(os.path.join(out_dir, "corpus.json"), encoding="utf-8") as f:
        summary = json.load(f)
    return {f"{lang}_{split}": info["audio_sha256"]
            for lang, lang_info in summary["languages"].items() for split, info in lang_info["splits"].items()}


def _describe_apart(engine: LibEspeak | CliEspeak) -> dict:
    """``engine.describe()`` (its version needs the library initialized) in a forked process: the workers fork
    from this one, and an initialized library here would be theirs."""
    with multiprocessing.get_context("fork").Pool(1) as pool:
        return pool.apply(engine.describe)


@contextlib.contextmanager
def _folder_lock(out_dir: str) -> Iterator[None]:
    """An exclusive lock on ``out_dir`` (``fcntl.flock`` on ``.synth_corpus.lock``, released if the process
    dies): two synthesizers writing one folder would delete each other's audio."""
    import fcntl

    with open(os.path.join(out_dir, ".synth_corpus.lock"), "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"synth_corpus: another process is synthesizing into {out_dir}; waiting for it", flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _reusable(out_dir: str, request: dict) -> dict[str, dict[str, str]] | None:
    """The manifests of the corpus already in ``out_dir`` if ``corpus.json`` records the same ``request``
    and every manifest's audio still has the sha256 recorded at synthesis; None otherwise."""
    from nemo_tl.data.manifest import audio_sha256

    try:
        with open(os.path.join(out_dir, "corpus.json"), encoding="utf-8") as f:
            summary = json.load(f)
        if summary.get("request") != json.loads(json.dumps(request)):
            return None
        manifests: dict[str, dict[str, str]] = {}
        for lang in request["langs"]:
            for split, info in summary["languages"][lang]["splits"].items():
                if audio_sha256(info["manifest"]) != info["audio_sha256"]:
                    return None
                manifests.setdefault(lang, {})[split] = info["manifest"]
        return manifests
    except (OSError, KeyError, TypeError, ValueError):  # missing, older or damaged: synthesize again
        return None


def _synthesize(out_dir, langs, hours, utterances, seed, text_source, splits, jobs, backend, engine, variants,
                voice_of, request) -> dict[str, dict[str, str]]:
    """The synthesis itself (:func:`synthesize_corpus`, under its folder lock)."""
    from nemo_tl.data.manifest import audio_sha256

    est_utts = utterances if utterances is not None else int(hours * 3600 / 1.5)
    pool_size = int(min(50000, max(2000, 2 * est_utts)))
    state = {}  # (lang, split) -> dict(texts, done entries, seconds, next index, target)
    for lang in langs:
        by_split = split_texts(text_pool(lang, text_source, seed, pool_size), splits, seed, lang)
        for si, (split, frac) in enumerate(splits.items()):
            split_dir = os.path.join(out_dir, lang, split)
            os.makedirs(split_dir, exist_ok=True)
            for old in glob(os.path.join(split_dir, "*.wav")):  # from an earlier, larger corpus here
                os.remove(old)
            target = max(1, round(utterances * frac)) if utterances is not None else hours * 3600 * frac
            state[lang, split] = {
                "si": si,
                "texts": by_split[split],
                "entries": [],
                "seconds": 0.0,
                "next": 0,
                "target": target,
            }

    def pending(st) -> bool:
        return len(st["entries"]) < st["target"] if utterances is not None else st["seconds"] < st["target"]

    # Each unit of utterances runs in a freshly forked worker (maxtasksperchild=1): libespeak-ng
    # keeps state across utterances (pitch flutter), so this makes the audio independent of jobs.
    pool = multiprocessing.get_context("fork").Pool(jobs, _set_worker_backend, (engine,), maxtasksperchild=1)
    try:
        while any(pending(st) for st in state.values()):
            units: list[tuple[tuple[str, str], list[Utterance]]] = []
            for (lang, split), st in state.items():
                if not pending(st):
                    continue
                if utterances is not None:
                    n = st["target"] - len(st["entries"])
                else:
                    mean = st["seconds"] / len(st["entries"]) if st["entries"] else 1.5
                    n = max(4, math.ceil((st["target"] - st["seconds"]) / mean * 1.1))
                start, stop = st["next"], st["next"] + n
                for lo in range(start, stop, UNIT):
                    idx = range(lo, min(lo + UNIT, stop))
                    args = (out_dir, lang, st["si"], split)
                    units.append(
                        (
                            (lang, split),
                            [_utterance(*args, i, st["texts"], voice_of[lang], variants, seed) for i in idx],
                        )
                    )
                st["next"] = stop
            durations = pool.map(_render_unit, [u for _, u in units], chunksize=1)
            for (key, unit), unit_durations in zip(units, durations):
                st, lang = state[key], key[0]
                for utt, dur in zip(unit, unit_durations):
                    if not pending(st):  # past the target: this round synthesized a few too many
                        os.remove(utt.path)
                        continue
                    assert is_valid(utt.text, lang), (
                        f"{lang}: {utt.text!r} has characters outside labels_for({lang!r})"
                    )
                    entry = {"audio_filepath": utt.path, "duration": round(dur, 4), "text": utt.text, "lang": lang}
                    st["entries"].append(entry)
                    st["seconds"] += dur
    finally:
        pool.close()
        pool.join()

    manifests: dict[str, dict[str, str]] = {}
    summary = {
        "command": _command(out_dir, langs, hours, utterances, seed, text_source, splits, jobs, backend),
        "request": request,
        "seed": seed,
        "text_source": text_source,
        "sample_rate": SAMPLE_RATE,
        "backend": engine.describe(),
        "variants": variants,
        "languages": {},
    }
    for lang in langs:
        info = {
            "voice": voice_of[lang],
            "base_language": base_language(lang),
            "labels": labels_for(lang),
            "splits": {},
        }
        for split in splits:
            st = state[lang, split]
            path = write_manifest(manifest_path(out_dir, lang, split), st["entries"])
            manifests.setdefault(lang, {})[split] = path
            info["splits"][split] = {
                "manifest": path,
                "utterances": len(st["entries"]),
                "hours": round(st["seconds"] / 3600, 4),
                "distinct_texts": len({e["text"] for e in st["entries"]}),
                "audio_sha256": audio_sha256(path),
            }
        info["hours"] = round(sum(s["hours"] for s in info["splits"].values()), 4)
        info["utterances"] = sum(s["utterances"] for s in info["splits"].values())
        summary["languages"][lang] = info
    tmp = os.path.join(out_dir, "corpus.json.tmp")  # written last and whole: its presence means a complete corpus
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(summary, f, ensure_ascii=False, indent=2)
    os.replace(tmp, os.path.join(out_dir, "corpus.json"))
    return manifests


def main(argv: list[str] | None = None) -> dict[str, dict[str, str]]:
    """Command-line entry point (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m nemo_tl.data.synth_corpus", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--langs", required=True, help="comma-separated codes: en,de,es,ru,hi,ta,gu or accents such as en-029"
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--hours", type=float, help="target hours of audio per language (default 1)")
    size.add_argument("--utterances", type=int, help="utterances per language instead of hours")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--splits", default="train=0.8,dev=0.1,test=0.1")
    p.add_argument("--jobs", type=int, default=None, help="worker processes (default: all CPUs)")
    p.add_argument("--texts", default="digits", choices=TEXT_SOURCES)
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    a = p.parse_args(argv)
    hours = a.hours if a.hours is not None or a.utterances is not None else 1.0
    manifests = synthesize_corpus(a.out, a.langs, hours, a.utterances, a.seed, a.texts, a.splits, a.jobs, a.backend)
    with open(os.path.join(a.out, "corpus.json"), encoding="utf-8") as f:
        for lang, info in json.load(f)["languages"].items():
            parts = ", ".join(f"{s} {v['utterances']} utts {v['hours']:.3f} h" for s, v in info["splits"].items())
            print(f"{lang} ({info['voice']}): {parts}")
            print(f"  {', '.join(info['splits'][s]['manifest'] for s in info['splits'])}")
    return manifests


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # InputError: a message with the fix, no traceback
        from nemo_tl.errors import InputError

        if not isinstance(e, InputError):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
