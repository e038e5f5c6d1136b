"""Manifest validation: find every bad line before training starts, not minutes into it.

``validate_manifest`` lists the problems of one manifest; ``check_dataset_config`` runs it
on every manifest of a ``train_ds`` / ``validation_ds`` section and either raises an
:class:`~nemo_tl.errors.InputError` with the full report or, with ``skip_invalid: true``,
returns a config pointing at filtered copies. Run as a script to check manifests by hand::

    python -m nemo_tl.data.validate train.json dev.json --labels model.nemo
    python -m nemo_tl.data.validate train.json --tokenizer-dir tokenizers/de_bpe128
    python -m nemo_tl.data.validate train.json --labels conf/quartznet_5x3.yaml --train  # + SpecCutout
"""

from __future__ import annotations

import argparse
import atexit
import copy
import importlib.util
import json
import math
import os
import shutil
import sys
import tarfile
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import soundfile as sf
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from nemo_tl.config_checks import checked_flag, checked_int, checked_number, finite_float, to_plain
from nemo_tl.data.manifest import AUDIO_KEYS, flatten_manifest_filepath, iter_manifest_lines, resolve_audio_path
from nemo_tl.data.texts import LANGUAGES, expand_labels
from nemo_tl.errors import InputError, input_error

if TYPE_CHECKING:
    from nemo_tl.data.frames import EncoderFrames

__all__ = [
    "Problem",
    "check_dataset_config",
    "check_dataset_options",
    "check_manifests",
    "default_parser",
    "load_labels",
    "load_tokenizer",
    "main",
    "validate_manifest",
]

DURATION_TOLERANCE = 0.10  # relative difference allowed between "duration" and the audio's length
REPORT_LIMIT = 50  # problems listed in an InputError message
FILTERED_SHARE_WARNING = 0.10  # min/max_duration removing more than this share of a manifest is warned about
_FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")  # the only sample formats that can hold NaN or Inf
_SCAN_BLOCK = 1 << 20  # samples read at a time when scanning float audio for NaN/Inf

Labels = Sequence[str] | Mapping[str, Sequence[str]]


@dataclass(frozen=True)
class Problem:
    """One problem found in a manifest.

    ``line`` is 1-based (0 for problems of the whole file); ``key`` is the JSON key at fault;
    ``severity`` is ``"error"`` (the line cannot be used) or ``"warning"`` (it can).
    ``reason`` is a short category used to count dropped lines.
    """

    file: str
    line: int
    key: str
    message: str
    fix: str = ""
    severity: str = "error"
    reason: str = field(default="", compare=False)

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def __str__(self) -> str:
        message = self.message if self.is_error else f"warning: {self.message}"
        fix = f" (fix: {self.fix})" if self.fix else ""
        return f"{self.file}:{self.line}: [{self.key}] {message}{fix}"


_ENGLISH_LABELS = frozenset(" abcdefghijklmnopqrstuvwxyz'")


def default_parser(labels: Sequence[str] | None) -> str:
    """The NeMo char parser nemo_tl uses when a dataset config sets none: ``en`` for labels within
    a-z, space and apostrophe, else ``base`` (NeMo's ``en`` normalizer transliterates every other
    letter to ASCII: ``größe`` -> ``grosse``, ``ёлка`` -> ``iolka``)."""
    return "en" if labels is not None and all(label in _ENGLISH_LABELS for label in labels) else "base"


class _TextChecker:
    """Applies NeMo's char parser normalization, then finds characters outside ``labels``.

    ``parser`` None picks :func:`default_parser` for the labels.
    """

    def __init__(self, labels: Sequence[str], parser: str | None = None, normalize: bool = False):
        from nemo.collections.common.parts.preprocessing.parsers import make_parser

        self.labels = list(labels)
        self.label_set = set(self.labels)
        self.special = {label for label in self.labels if len(label) > 1}
        self.normalize = normalize
        self.parser = parser or default_parser(self.labels)
        try:
            self._parser = make_parser(self.labels, name=self.parser, do_normalize=normalize, do_tokenize=False)
        except ValueError:
            raise input_error(
                f"unknown text parser {self.parser!r}",
                where="parser",
                fix="set parser to one of 'en', 'base', 'ru' (NeMo's char parsers)",
            ) from None

    def normalized(self, text: str) -> str | None:
        """The text NeMo will tokenize (None when NeMo's normalization fails on it)."""
        return self._parser(text) if self.normalize else text

    def unknown(self, text: str) -> list[str]:
        """Characters of ``text`` (already normalized) that NeMo would drop as out of vocabulary."""
        out: dict[str, None] = {}
        words = text.split(" ")
        if len(words) > 1 and " " not in self.label_set:
            out[" "] = None
        for word in words:
            if word in self.special:
                continue
            for ch in word:
                if ch not in self.label_set:
                    out[ch] = None
        return list(out)

    def _label_counts(self, text: str) -> Counter:
        """How often each label character (other than space) occurs in ``text``, its capitals counted as it."""
        counts: Counter = Counter()
        for ch in unicodedata.normalize("NFC", text):
            ch = ch if ch in self.label_set else ch.lower()
            if ch in self.label_set and ch != " ":
                counts[ch] += 1
        return counts

    def changed_words(self, text: str, normalized: str) -> list[tuple[str, str]]:
        """``(word, what normalization makes of it)`` for every word whose label characters it
        transliterates or drops (lowercasing, punctuation and spelled-out numbers are fine)."""
        kept = self._label_counts(normalized)
        if all(kept[c] >= n for c, n in self._label_counts(text).items()):
            return []
        changed = []
        for word in unicodedata.normalize("NFC", text).split():
            after = self._parser(word) or ""
            kept = self._label_counts(after)
            if any(kept[c] < n for c, n in self._label_counts(word).items()):
                changed.append((word.lower(), after))
        return changed


def _chars(chars: Sequence[str]) -> str:
    """``'ä', 'ß'``; combining and invisible characters also by code point."""

    def one(c: str) -> str:
        if len(c) == 1 and (unicodedata.combining(c) or not c.isprintable()):
            return f"{c!r} (U+{ord(c):04X})"
        return repr(c)

    return ", ".join(one(c) for c in chars)


class _Header(NamedTuple):
    path: str  # the path NeMo will open
    exists: bool
    sample_rate: int = 0
    frames: int = 0
    error: str | None = None
    channels: int = 1
    nonfinite: int = 0  # NaN/Inf samples (float files only)


def _read_header(audio_file: str, manifest: str) -> _Header:
    """Resolve ``audio_file`` as NeMo does and read its header (``soundfile``: no decoding)."""
    full = resolve_audio_path(audio_file, manifest)
    if "://" in full:  # object store: NeMo fetches it when loading
        return _Header(full, True)
    if not os.path.isfile(full):
        return _Header(full, False)
    full = os.path.abspath(full)  # filtered copies live elsewhere: relative paths must not stay relative
    try:
        with sf.SoundFile(full) as f:
            nonfinite = _count_nonfinite(f) if f.subtype in _FLOAT_SUBTYPES else 0
            return _Header(full, True, int(f.samplerate), int(f.frames), None, int(f.channels), nonfinite)
    except Exception as e:  # soundfile raises LibsndfileError/RuntimeError/OSError
        return _Header(full, True, error=str(e).strip() or type(e).__name__)


def _count_nonfinite(f: sf.SoundFile) -> int:
    """NaN/Inf samples of an open float-subtype file, read in blocks of its own precision."""
    import numpy as np

    dtype = "float64" if f.subtype == "DOUBLE" else "float32"
    block = max(1, _SCAN_BLOCK // max(1, f.channels))
    count = 0
    for samples in f.blocks(blocksize=block, dtype=dtype, always_2d=True):
        count += int(samples.size - np.count_nonzero(np.isfinite(samples)))
    return count


@dataclass
class _Result:
    problems: list[Problem]
    kept: list[dict]  # entries of lines without errors, audio paths resolved
    lines: int  # non-blank lines read


_OBJECT_FIX = 'write one JSON object per line: {"audio_filepath": ..., "duration": ..., "text": ...}'


class _ManifestChecker:
    """Checks the lines of manifests against one model's expectations.

    Header reads and text parsers are shared by all manifests checked with one instance.
    """

    def __init__(
        self,
        labels: Labels | None,
        languages: Sequence[str] | None,
        sample_rate: int | None,
        *,
        normalize: bool,
        parser: str | None,
        check_audio: bool,
        section: str | None = None,
        mono: bool = True,
        frames: EncoderFrames | None = None,
        tokenizer: Any = None,
    ):
        if isinstance(labels, Mapping) and languages is None:
            languages = list(labels)
        self.labels = labels
        self.languages = sorted(set(languages)) if languages is not None else None
        self.sample_rate = int(sample_rate) if sample_rate is not None else None
        self.normalize, self.parser, self.check_audio = normalize, parser, check_audio
        prefix = f"{section}." if section else ""
        self.parser_key, self.normalize_key = f"{prefix}parser", f"{prefix}normalize_transcripts"
        self._checkers: dict[str | None, _TextChecker] = {}
        self.mono, self.frames = mono, frames  # multi-channel audio is an error; the model's encoder frames
        self._tokenizers: dict[str | None, Any] = {}
        self.tokenizer = tokenizer  # a NeMo tokenizer (SentencePiece / WordPiece): its text check replaces labels'
        self._unencodable: dict[str, bool] = {}  # character (or word) -> the tokenizer makes <unk> of it

    def check(self, path: str) -> _Result:
        """Every problem of manifest ``path`` and its error-free entries."""
        self.path = path
        self.problems: list[Problem] = []
        self._headers: dict[str, _Header] = {}  # audio path as written -> header
        self._rates: dict[int, list[int]] = {}  # sample rate -> [lines, first line]
        self._audio: dict[int, tuple[int, int]] = {}  # line -> (sample rate, samples) of its audio file
        self._frame_needs: dict[int, tuple[int, int, int]] = {}  # line -> (samples at model rate, frames, labels)
        try:
            lines = list(iter_manifest_lines(path))
        except FileNotFoundError:
            return self._file_problem("manifest file not found", "check the path in manifest_filepath")
        except IsADirectoryError:
            return self._file_problem("is a directory, not a manifest file", "give the path of the .json manifest")
        except OSError as e:
            return self._file_problem(f"cannot read the manifest: {e.strerror or e}", "check the file's permissions")
        if not lines:
            return self._file_problem("manifest is empty", "add lines, or remove it from manifest_filepath")

        parsed = [(number, self._parse(number, line)) for number, line in lines]
        if self.check_audio:
            self._read_headers([entry for _, entry in parsed if entry is not None])
        kept = []
        for number, entry in parsed:
            before = len(self.problems)
            if entry is not None:
                self._check_entry(number, entry)
                if not any(p.is_error for p in self.problems[before:]):
                    kept.append((number, entry))
                    self._note_frames_needed(number, entry)
        unalignable = self._check_frames()
        kept = [entry for number, entry in kept if number not in unalignable]
        self._summary_warnings()
        self.problems.sort(key=lambda p: p.line)
        return _Result(self.problems, kept, len(lines))

    def _add(self, line: int, key: str, message: str, fix: str, reason: str, severity: str = "error") -> None:
        self.problems.append(Problem(self.path, line, key, message, fix, severity, reason))

    def _file_problem(self, message: str, fix: str) -> _Result:
        self._add(0, "manifest_filepath", message, fix, "bad file")
        return _Result(self.problems, [], 0)

    def _read_headers(self, entries: list[dict]) -> None:
        """Read the headers of all audio files up front, in threads (I/O-bound on network storage)."""
        files = set()
        for entry in entries:
            value = next((entry[k] for k in AUDIO_KEYS if k in entry), None)
            for f in value if isinstance(value, list) else [value]:
                if isinstance(f, str) and f:
                    files.add(f)
        files = sorted(files)
        if len(files) > 64:
            with ThreadPoolExecutor(max_workers=16) as pool:
                headers = list(pool.map(_read_header, files, [self.path] * len(files), chunksize=256))
        else:
            headers = [_read_header(f, self.path) for f in files]
        self._headers.update(zip(files, headers))

    def _parse(self, number: int, line: str) -> dict | None:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            if line.startswith("\ufeff"):  # NeMo's reader (json.loads per line) rejects it too
                message = "the line starts with a UTF-8 byte-order mark (BOM, a file saved as 'UTF-8 with BOM')"
                fix = f"save the manifest as UTF-8 without BOM, e.g. `sed -i 's/^\\xEF\\xBB\\xBF//' {self.path}`"
                self._add(number, "json", message, fix, "malformed JSON")
                return None
            self._add(number, "json", f"malformed JSON: {e.msg} at column {e.colno}", _OBJECT_FIX, "malformed JSON")
            return None
        if not isinstance(entry, dict):
            self._add(
                number, "json", f"line is a JSON {type(entry).__name__}, not an object", _OBJECT_FIX, "malformed JSON"
            )
            return None
        return entry

    def _check_entry(self, number: int, entry: dict) -> None:
        lang = self._check_lang(number, entry)
        seconds = self._check_audio(number, entry)
        self._check_duration(number, entry, seconds)
        self._check_text(number, entry, lang)

    def _check_lang(self, number: int, entry: dict) -> Any:
        lang = entry.get("lang")
        if self.languages is None:
            return lang
        known = ", ".join(self.languages)
        if lang is None or lang == "":
            self._add(number, "lang", "missing key 'lang'", f'add "lang": one of {known}', "missing lang")
        elif not isinstance(lang, str) or lang not in self.languages:
            self._add(
                number,
                "lang",
                f"unknown language {lang!r} (known: {known})",
                "use one of the known language codes, or add the language to the model",
                "unknown lang",
            )
        return lang

    def _check_audio(self, number: int, entry: dict) -> float | None:
        """Check the audio file(s); make their paths absolute in ``entry``; return the length in seconds."""
        key = next((k for k in AUDIO_KEYS if k in entry), None)
        if key is None:
            self._add(
                number,
                "audio_filepath",
                "missing key 'audio_filepath'",
                'add "audio_filepath": the audio path (absolute, or relative to the manifest)',
                "missing audio_filepath",
            )
            return None
        value = entry[key]
        files = value if isinstance(value, list) else [value]
        if not files or not all(isinstance(f, str) and f for f in files):
            self._add(
                number,
                key,
                f"{key} must be a non-empty path string, got {value!r}",
                "give the path of the audio file",
                "missing audio",
            )
            return None
        if not self.check_audio:
            return None
        headers = [self._headers.get(f) or _read_header(f, self.path) for f in files]
        entry[key] = [h.path for h in headers] if isinstance(value, list) else headers[0].path
        seconds = None
        for original, h in zip(files, headers):
            if not h.exists:
                where = ""
                if not os.path.isabs(os.path.expanduser(original)):
                    where = (
                        f" (looked in the manifest's directory {os.path.dirname(os.path.abspath(self.path))} "
                        f"and in the working directory {os.getcwd()})"
                    )
                self._add(
                    number,
                    key,
                    f"audio file not found: {original}{where}",
                    "correct the path, or remove the line",
                    "missing audio",
                )
                continue
            if h.error is not None or (h.frames <= 0 and "://" not in h.path):
                self._add(
                    number,
                    key,
                    f"unreadable audio {original}: {h.error or 'no samples'}",
                    "convert it to WAV or FLAC (e.g. `sox in.mp3 -r 16000 out.wav`), or remove the line",
                    "unreadable audio",
                )
                continue
            if "://" in h.path:
                continue  # object store: not read here
            if h.channels != 1 and self.mono:
                self._add(
                    number,
                    key,
                    f"{h.channels} channels in {original}; NeMo's batches need mono audio",
                    "downmix to mono, e.g. `sox in.wav -c 1 out.wav` (or set the dataset's channel_selector, "
                    "e.g. 'average')",
                    "multi-channel audio",
                )
            if h.nonfinite:
                self._add(
                    number,
                    key,
                    f"{original} holds {h.nonfinite} NaN or Inf sample(s); every batch with it would get a "
                    "non-finite loss",
                    "re-export the audio from its source, or remove the line",
                    "non-finite audio",
                )
            sr, frames = h.sample_rate, h.frames
            seconds = frames / sr if seconds is None else min(seconds, frames / sr)
            self._rates.setdefault(sr, [0, number])[0] += 1
            if number not in self._audio or frames < self._audio[number][1]:
                self._audio[number] = (sr, frames)
        return seconds

    def _note_frames_needed(self, number: int, entry: dict) -> None:
        """Remember the samples the model gets of this line's audio and the encoder frames its transcript needs."""
        if self.frames is None or number not in self._audio:
            return
        sr, samples = self._audio[number]
        duration, offset = finite_float(entry.get("duration")), finite_float(entry.get("offset") or 0) or 0.0
        # As NeMo's AudioSegment.from_file loads it: seek int(offset * sr), read int(duration * sr), resample.
        if offset > 0:
            samples -= int(offset * sr)
        if duration is not None and duration > 0:
            samples = min(samples, int(duration * sr))
        if sr != self.frames.sample_rate:
            samples = math.ceil(samples * self.frames.sample_rate / sr)
        tokens = self._tokens(number, entry) if self.frames.ctc else None
        needed = self.frames.needed(tokens) if tokens is not None else 1
        self._frame_needs[number] = (max(samples, 0), needed, len(tokens or ()))

    def _tokens(self, number: int, entry: dict) -> list[int] | None:
        """The label ids NeMo's char dataset (or the tokenizer) makes of the line's transcript; None without either."""
        from nemo.collections.common.parts.preprocessing.parsers import make_parser

        if self.tokenizer is not None:
            found = self._text(number, entry)
            return self.tokenizer.text_to_ids(found[1]) if found is not None and isinstance(found[1], str) else None
        lang = entry.get("lang")
        checker, found = self._checker(lang), self._text(number, entry)
        if checker is None or found is None or not isinstance(found[1], str):
            return None
        text = checker.normalized(found[1])
        if text is None:
            return None
        if lang not in self._tokenizers:
            self._tokenizers[lang] = make_parser(checker.labels, name="base", do_normalize=False)
        return self._tokenizers[lang](text)

    def _check_frames(self) -> set[int]:
        """Report the lines whose transcript needs more encoder frames than their audio gives; their numbers.

        CTC needs one frame per label plus one between equal neighbours; RNN-T one frame. Silence
        trimming (``trim_silence``) is not applied here, so its shorter audio may still fall short.
        """
        needs, frames = self._frame_needs, self.frames
        if not needs:
            return set()
        lines = sorted(needs)
        if not frames.ctc:  # the output length never falls as audio grows: only the shortest can have none
            lines = [n for n in lines if needs[n][0] < frames.shortest()]
        available = dict(zip(lines, frames.frames([needs[n][0] for n in lines])))
        unit = "labels" if self.tokenizer is None else "tokens"
        coarser = "a subword tokenizer" if self.tokenizer is None else "a larger subword vocabulary"
        bad = set()
        for number, have in available.items():
            samples, needed, labels = needs[number]
            if have >= needed:
                continue
            bad.add(number)
            seconds = samples / frames.sample_rate
            if frames.ctc:
                self._add(
                    number,
                    "text",
                    f"the transcript needs {needed} encoder frames ({labels} {unit} + {needed - labels} between "
                    f"repeated {unit}) but its {seconds:.3f} s of audio give {have}: CTC cannot align it "
                    "(NeMo's loss would be 0 and teach nothing)",
                    "check that the transcript belongs to this audio; else shorten it or remove the line. When most "
                    f"lines fail, the encoder subsamples too much for these {unit}: e.g. encoder.subsampling_factor: 4 "
                    f"instead of 8, or {coarser} (fewer {unit} per second)",
                    "transcript longer than the audio allows",
                )
            else:
                self._add(
                    number,
                    "duration",
                    f"{seconds:.3f} s of audio give no encoder frame (the model needs at least "
                    f"{frames.shortest() / frames.sample_rate:.3f} s)",
                    "remove the line, or give it longer audio",
                    "audio too short",
                )
        return bad

    def _check_duration(self, number: int, entry: dict, real: float | None) -> None:
        """``duration`` (and ``offset``) against ``real``, the audio's length in seconds."""
        if "duration" not in entry:
            self._add(
                number,
                "duration",
                "missing key 'duration'",
                'add "duration": the audio length in seconds',
                "missing duration",
            )
            return
        duration = finite_float(entry["duration"])
        if duration is None:
            self._add(
                number,
                "duration",
                f"duration must be a number of seconds, got {entry['duration']!r}",
                'write "duration" as a number, e.g. 3.25',
                "bad duration",
            )
            return
        if duration <= 0:
            self._add(
                number,
                "duration",
                f"duration {duration:g} s is not positive",
                "set the audio's real length in seconds, or remove the line",
                "bad duration",
            )
            return
        if real is None:
            return
        offset = finite_float(entry.get("offset") or 0)
        if offset is None or offset < 0:
            self._add(
                number,
                "offset",
                f"offset must be a non-negative number, got {entry['offset']!r}",
                "set offset in seconds, or remove it",
                "bad duration",
            )
        elif offset > 0:  # a segment: it must fit in the audio
            available = real - offset
            if available <= 0:
                self._add(
                    number,
                    "offset",
                    f"offset {offset:g} s is past the end of the audio ({real:.3f} s)",
                    "correct offset, or remove the line",
                    "bad duration",
                )
            elif duration > available * (1 + DURATION_TOLERANCE):
                self._add(
                    number,
                    "duration",
                    f"segment offset {offset:g} s + duration {duration:g} s runs past the end of the audio "
                    f"({real:.3f} s)",
                    f"set duration to at most {available:.3f}",
                    "bad duration",
                )
        elif abs(duration - real) > DURATION_TOLERANCE * real:
            self._add(
                number,
                "duration",
                f"duration {duration:g} s is {abs(duration - real) / real:.0%} off the audio's real length "
                f"{real:.3f} s",
                f"set duration to {real:.3f}",
                "wrong duration",
            )

    def _text(self, number: int, entry: dict) -> tuple[str, Any] | None:
        """``(key, transcript)`` as NeMo reads it (``text``, else ``text_filepath``, else ``normalized_text``).

        None when the transcript is missing (already reported).
        """
        if "text" in entry:
            return "text", entry["text"]
        if "text_filepath" in entry:
            try:
                with open(entry["text_filepath"], encoding="utf-8") as f:
                    return "text_filepath", f.read().replace("\n", "")
            except (OSError, TypeError) as e:
                self._add(
                    number,
                    "text_filepath",
                    f"cannot read the transcript file: {e}",
                    'correct text_filepath, or put the transcript in "text"',
                    "missing text",
                )
                return None
        if "normalized_text" in entry:
            return "normalized_text", entry["normalized_text"]
        self._add(number, "text", "missing key 'text'", 'add "text": the transcript', "missing text")
        return None

    def _checker(self, lang: Any) -> _TextChecker | None:
        """The vocabulary check for a line of language ``lang`` (None: nothing to check against)."""
        if self.labels is None:
            return None
        key = lang if isinstance(self.labels, Mapping) else None
        if key not in self._checkers:
            if key is None and not isinstance(self.labels, Mapping):
                self._checkers[key] = _TextChecker(self.labels, self.parser, self.normalize)
            elif isinstance(key, str) and key in self.labels:
                self._checkers[key] = _TextChecker(self.labels[key], self.parser, self.normalize)
            else:
                return None  # unknown language: reported by _check_lang
        return self._checkers[key]

    def _check_text(self, number: int, entry: dict, lang: Any) -> None:
        found = self._text(number, entry)
        if found is None:
            return
        key, text = found
        if not isinstance(text, str):
            self._add(
                number,
                key,
                f"text must be a string, got {text!r}",
                "write the transcript as a JSON string",
                "bad text",
            )
            return
        if not text.strip():
            self._add(number, key, "empty text", "add the transcript, or remove the line", "empty text")
            return
        if self.tokenizer is not None:
            self._check_tokenizable(number, key, text)
            return
        checker = self._checker(lang)
        if checker is None:
            return
        norm = checker.normalized(text)
        if norm is None:
            fix = f"set {self.parser_key}: base (it only strips and lowercases), or rewrite the transcript"
            if checker.parser == "en" and any(c.isdigit() for c in text) and importlib.util.find_spec("inflect") is None:
                fix = "install inflect (`pip install inflect`), which NeMo's 'en' normalizer needs to spell " \
                      "numbers, or write the numbers as words"
            self._add(
                number,
                key,
                f"NeMo's {checker.parser!r} normalizer fails on this transcript, so NeMo would drop the utterance",
                fix,
                "normalization",
            )
            return
        if not norm.strip():
            self._add(
                number,
                key,
                "NeMo's text normalization leaves nothing of this transcript",
                "write the transcript with characters of the vocabulary, or remove the line",
                "empty text",
            )
            return
        if self.normalize:
            changed = checker.changed_words(text, norm)
            if changed:
                words = ", ".join(f"{w!r} into {n!r}" for w, n in changed[:3])
                more = f" (and {len(changed) - 3} more words)" if len(changed) > 3 else ""
                fix = f"set {self.parser_key}: base (it keeps every character and only strips and lowercases)"
                if checker.parser == "base":
                    fix = f"set {self.normalize_key}: false (the labels hold capitals, which lowercasing removes)"
                self._add(
                    number,
                    key,
                    f"the {checker.parser!r} normalizer turns {words}{more}: characters of the vocabulary would "
                    "never be trained",
                    fix,
                    "normalization",
                )
                return
        unknown = checker.unknown(norm)
        if unknown:
            vocab = f" of language {lang!r}" if isinstance(self.labels, Mapping) else ""
            fix = "remove or replace them in the transcript, or add them to the model's labels"
            if len(checker.unknown(unicodedata.normalize("NFC", norm))) < len(unknown):
                fix = f"write the transcripts in composed Unicode (NFC: unicodedata.normalize('NFC', text)); {fix}"
            cased = [c for c in unknown if c != c.lower() and c.lower() in checker.label_set]
            if cased and not self.normalize:
                lower = (
                    f"set {self.normalize_key}: true (NeMo then lowercases; nemo_tl stops if its normalizer "
                    "changes anything else), or lowercase the transcripts"
                )
                fix = lower if len(cased) == len(unknown) else f"{lower}; for the others: {fix}"
            self._add(
                number,
                key,
                f"characters not in the vocabulary{vocab}: {_chars(unknown)}",
                fix,
                "characters not in vocabulary",
            )

    def _check_tokenizable(self, number: int, key: str, text: str) -> None:
        """A transcript the tokenizer encodes with ``<unk>`` is an error naming the characters (or words) at fault."""
        unk = getattr(self.tokenizer, "unk_id", None)
        if unk is None or unk < 0 or unk not in self.tokenizer.text_to_ids(text):
            return

        def fails(piece: str) -> bool:
            if piece not in self._unencodable:
                self._unencodable[piece] = unk in self.tokenizer.text_to_ids(piece)
            return self._unencodable[piece]

        chars = [c for c in dict.fromkeys(text) if not c.isspace() and fails(c)]
        what = f"characters the tokenizer cannot encode (they become <unk>): {_chars(chars)}"
        if not chars:  # a WordPiece tokenizer can fail on whole words
            words = [w for w in dict.fromkeys(text.split()) if fails(w)]
            what = f"words the tokenizer encodes as <unk>: {', '.join(repr(w) for w in words[:5])}"
        fix = "remove or replace them in the transcript, or train the tokenizer on text that has them " \
              "(python -m nemo_tl.transfer.tokenizer TRAIN_MANIFESTS --out DIR)"
        if chars and len([c for c in chars if fails(unicodedata.normalize("NFC", c))]) < len(chars):
            fix = f"write the transcripts in composed Unicode (NFC: unicodedata.normalize('NFC', text)); {fix}"
        self._add(number, key, what, fix, "not encodable by the tokenizer")

    def _summary_warnings(self) -> None:
        """One warning per manifest (not per line) for resampled audio."""
        for sr, (count, first) in sorted(self._rates.items()):
            if self.sample_rate is not None and sr != self.sample_rate:
                self._add(
                    first,
                    "sample_rate",
                    f"{count} line(s) from here on have {sr} Hz audio; the model expects {self.sample_rate} Hz, "
                    "so it will be resampled on every load",
                    f"resample the audio offline to {self.sample_rate} Hz to save the time",
                    "resampled",
                    "warning",
                )


def validate_manifest(
    path: str,
    labels: Labels | None = None,
    languages: Sequence[str] | None = None,
    sample_rate: int | None = None,
    *,
    normalize: bool = False,
    parser: str | None = None,
    check_audio: bool = True,
    frames: EncoderFrames | None = None,
    tokenizer: Any = None,
) -> list[Problem]:
    """Every problem of the NeMo manifest ``path``, in line order; ``[]`` when it is clean.

    Args:
        path: JSON-lines manifest; relative audio paths resolve against its directory, as in NeMo.
        labels: the model's characters (checked after NeMo's text normalization), or a
            ``{lang: labels}`` mapping for per-language vocabularies; None skips the check.
        languages: allowed ``lang`` values; given, every line needs a ``lang``.
        sample_rate: the model's rate; audio at another rate gives a warning (it is resampled).
        normalize, parser: NeMo's ``normalize_transcripts`` and ``parser`` dataset settings;
            parser None is nemo_tl's default for the labels (:func:`default_parser`).
        check_audio: False for tarred datasets, whose audio is not on disk as listed.
        frames: the model's encoder frames (:func:`nemo_tl.data.frames.model_encoder_frames`); given,
            a line whose transcript needs more frames than its audio gives is an error (CTC: one per
            label plus one between repeated labels; RNN-T: one).
        tokenizer: a subword model's NeMo tokenizer (:func:`load_tokenizer`, or ``model.tokenizer``); given,
            it replaces ``labels``: a transcript it encodes with ``<unk>`` is an error naming the characters
            at fault, and CTC frames are counted in its tokens.

    Audio with more than one channel, and float audio holding NaN or Inf samples, are errors.
    """
    checker = _ManifestChecker(
        labels, languages, sample_rate, normalize=normalize, parser=parser, check_audio=check_audio, frames=frames,
        tokenizer=tokenizer,
    )
    return checker.check(path).problems


_AUDIO_PROBLEM_KEYS = frozenset({"json", "manifest_filepath", *AUDIO_KEYS})


def check_manifests(
    paths: str | Sequence[str],
    *,
    labels: Labels | None = None,
    sample_rate: int | None = None,
    frames: EncoderFrames | None = None,
    normalize: bool = False,
    parser: str | None = None,
    audio_only: bool = False,
    where: str | None = None,
    tokenizer: Any = None,
) -> None:
    """Raise an InputError listing every error of the manifests ``paths``; log their warnings.

    For entry points that hand manifests to NeMo themselves (``nemo_tl.transcribe``,
    ``nemo_tl.distill.cache``). ``audio_only``: only what reading the audio needs (JSON lines,
    audio files present, readable, mono and finite), for manifests without ``text`` or
    ``duration``. ``where`` names the argument or config key in the message; the other arguments
    are those of :func:`validate_manifest`.
    """
    checker = _ManifestChecker(
        None if audio_only else labels, None, sample_rate, normalize=normalize, parser=parser, check_audio=True,
        frames=None if audio_only else frames, tokenizer=None if audio_only else tokenizer,
    )
    errors = []
    for path in [paths] if isinstance(paths, str) else list(paths):
        for problem in checker.check(path).problems:
            if audio_only and problem.key not in _AUDIO_PROBLEM_KEYS:
                continue
            if problem.is_error:
                errors.append(problem)
            else:
                _log_once(str(problem))
    if errors:
        raise input_error(
            f"{len(errors)} error(s) in the manifests:\n{format_report(errors)}",
            where=where,
            fix="correct or remove these lines (`python -m nemo_tl.data.validate MANIFEST` lists every problem)",
        )


# --------------------------------------------------------------------------------------------
# Dataset configs


_LOGGED: set[str] = set()
_FILTERED_DIRS: list[str] = []


def _log_once(message: str) -> None:
    from nemo.utils import logging

    if message not in _LOGGED:
        _LOGGED.add(message)
        logging.warning(message)


def _cleanup_filtered_dirs() -> None:
    for d in _FILTERED_DIRS:
        shutil.rmtree(d, ignore_errors=True)


def _map_paths(value: Any, mapping: Mapping[str, str]) -> Any:
    """``value`` (manifest_filepath) with every manifest path replaced through ``mapping``."""
    if isinstance(value, str):
        return ",".join(mapping.get(p, p) for p in flatten_manifest_filepath(value))
    if isinstance(value, (list, tuple)):
        return [_map_paths(v, mapping) for v in value]
    return value


def _expand_tarred(paths: list[str]) -> list[str]:
    """Expand NeMo's sharded-manifest brace patterns (``manifest__OP_0..3_CL_.json``)."""
    import braceexpand

    out = []
    for p in paths:
        for a, b in (("_OP_", "{"), ("_CL_", "}")):
            p = p.replace(a, b)
        out.extend(braceexpand.braceexpand(p, escape=False))
    return out


def _select(config: DictConfig, key: str) -> Any:
    """``config[key]`` as a plain value; None when absent or not resolvable."""
    return to_plain(OmegaConf.select(config, key, default=None, throw_on_resolution_failure=False))


def format_report(problems: Sequence[Problem], limit: int = REPORT_LIMIT) -> str:
    """One problem a line, the first ``limit`` of them, then ``... and N more``."""
    lines = [f"  {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)


# Dataset options whose wrong type NeMo reports late or not at all ("false" as a string is true).
def _positive_int(fix: str) -> Callable[[Any, str], int]:
    return lambda value, where: checked_int(value, where, minimum=1, fix=fix)


def _duration(fix: str) -> Callable[[Any, str], float]:
    return lambda value, where: checked_number(value, where, fix=fix)


# Each dataset option's check (from nemo_tl.config_checks); null always passes (NeMo's default).
_OPTION_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "batch_size": _positive_int("e.g. batch_size: 32"),
    "num_workers": lambda value, where: checked_int(value, where, fix="e.g. num_workers: 4"),
    "sample_rate": _positive_int("e.g. sample_rate: 16000"),
    "max_duration": _duration("e.g. max_duration: 16.7"),
    "min_duration": _duration("e.g. min_duration: 0.1"),
    "shuffle": checked_flag,
    "skip_invalid": checked_flag,
    "trim_silence": checked_flag,
    "normalize_transcripts": checked_flag,
}
_NEMO_TL_DATASET_KEYS = ("skip_invalid", "mixing")


def check_dataset_options(config: Mapping, section: str | None = None) -> None:
    """Raise InputError for a dataset option of the wrong type or a misspelt nemo_tl key.

    Checks the types of ``batch_size``, ``num_workers``, ``sample_rate``, ``min/max_duration`` and
    the flags (``skip_invalid``, ``shuffle``, ...), and refuses keys one letter or so away from
    nemo_tl's own dataset keys (``skip_invalids`` → ``skip_invalid``), which NeMo would ignore.
    """
    import difflib

    prefix = f"{section}." if section else ""
    for key, check in _OPTION_CHECKS.items():
        if key not in config:
            continue
        value = _select(config, key) if isinstance(config, DictConfig) else config[key]
        if value is not None:  # null: NeMo's default
            check(value, f"{prefix}{key}")
    for key in config:
        if key in _NEMO_TL_DATASET_KEYS:
            continue
        close = difflib.get_close_matches(str(key), _NEMO_TL_DATASET_KEYS, n=1, cutoff=0.8)
        if close:
            raise input_error(
                f"unknown key {key!r}; NeMo would ignore it silently",
                where=f"{prefix}{key}",
                fix=f"did you mean {close[0]!r}? rename it",
            )


def check_dataset_config(
    config: DictConfig,
    *,
    labels: Labels | None,
    languages: Sequence[str] | None = None,
    sample_rate: int | None = None,
    section: str | None = None,
    parser: str | None = None,
    frames: EncoderFrames | None = None,
    tokenizer: Any = None,
) -> DictConfig:
    """Validate every manifest of a dataset config before NeMo builds the dataset.

    ``config.manifest_filepath`` may be a path, a comma-separated string, a list, or nested
    lists (bucketing; Lhotse ``[path, weight]`` pairs). ``labels`` falls back to
    ``config.labels``, ``sample_rate`` to ``config.sample_rate``; the text is normalized with the
    config's ``normalize_transcripts`` / ``parser``, as NeMo's char datasets do (``parser``, given,
    is the one the caller's dataset uses whatever the config says). With no parser set (or
    ``parser: null``), the returned config names :func:`default_parser` of the labels (NeMo's
    default ``en`` would transliterate every non-ASCII letter under ``normalize_transcripts: true``);
    a normalizer that still changes a character of the vocabulary or drops an utterance is an
    error of that line.

    Returns ``config`` (with the parser filled in as above) when no line has an error. With errors, raises
    :class:`InputError` listing them, unless ``config.skip_invalid`` is true: then filtered
    copies of the bad manifests (only the error-free lines, audio paths made absolute) are
    written to a temporary directory, the drops are logged per reason, and a copy of the
    config pointing at them is returned. The original files are never touched. ``section``
    (e.g. ``"train_ds"``) only names the section in messages.

    Multi-channel audio is an error unless the config sets ``channel_selector``. ``frames`` (the
    model's :class:`~nemo_tl.data.frames.EncoderFrames`) makes a transcript that needs more encoder
    frames than its audio gives an error of its line. When ``min_duration`` / ``max_duration``
    leave nothing of a manifest (counted as NeMo filters: by the manifest's ``duration``, keeping
    ``min_duration <= duration <= max_duration``), InputError; when they remove more than
    ``FILTERED_SHARE_WARNING`` of it, a warning. ``tokenizer`` (a subword model's) replaces ``labels``:
    a transcript it encodes with ``<unk>`` is an error of its line.
    """
    if isinstance(config, Mapping) and not isinstance(config, DictConfig):
        config = OmegaConf.create(dict(config))
    check_dataset_options(config, section)
    name = section or "the dataset"
    if tokenizer is not None:
        labels = None  # a subword dataset's `labels` (NeMo's RNN-T BPE sets them) are tokenizer pieces
    elif labels is None:
        labels = _select(config, "labels")
    normalize = bool(config.get("normalize_transcripts", False))
    if parser is None:
        parser = config.get("parser")
        unset = normalize or "parser" in config  # NeMo reads no parser without normalization, but fails on null
        if parser is None and unset and labels is not None and not isinstance(labels, Mapping):
            parser = default_parser(labels)
            config = copy.deepcopy(config)  # keeps the parent, so interpolations still resolve
            with open_dict(config):
                config.parser = parser
            if normalize:
                _log_once(f"{name}: normalize_transcripts with no parser set: using NeMo's {parser!r} char "
                          "parser for these labels")
    value = config.get("manifest_filepath")
    if value is None:
        return config
    value = to_plain(value)
    skip = f"{section}.skip_invalid" if section else "skip_invalid"

    if sample_rate is None:
        sample_rate = _select(config, "sample_rate")
    tarred = bool(config.get("is_tarred", False) or config.get("tarred_audio_filepaths"))
    paths = list(dict.fromkeys(flatten_manifest_filepath(value, f"{section}.manifest_filepath" if section else "manifest_filepath")))
    if tarred:
        paths = _expand_tarred(paths)

    checker = _ManifestChecker(
        labels,
        languages,
        sample_rate,
        normalize=normalize,
        parser=parser,
        check_audio=not tarred,
        section=section,
        mono=_requires_mono(config.get("channel_selector")),
        frames=frames,
        tokenizer=tokenizer,
    )
    results = {p: checker.check(p) for p in paths}
    problems = [q for r in results.values() for q in r.problems]
    for w in (q for q in problems if not q.is_error):
        _log_once(f"{name}: {w}")
    errors = [q for q in problems if q.is_error]
    groups = {p: [r] for p, r in results.items()}  # what the duration filters must leave something of
    if tarred:  # shards of one dataset: counted together
        groups = {", ".join(flatten_manifest_filepath(value)): list(results.values())}
    if not errors:
        _check_duration_filters(groups, config, section)
        return config

    cli = "python -m nemo_tl.data.validate MANIFEST --labels MODEL.nemo"
    file_level = [q for q in errors if q.line == 0]
    if not config.get("skip_invalid", False) or file_level or tarred:
        why = ""
        if config.get("skip_invalid", False) and tarred:
            why = "\nskip_invalid cannot filter a tarred dataset (its audio is inside the tar files)."
        hint = (
            f"correct or remove these lines (`{cli}` lists them all), or set {skip}: true to drop "
            "the invalid lines and use the rest"
        )
        if file_level or tarred:
            hint = f"correct the manifests (`{cli}` lists every problem)"
        raise input_error(
            f"{len(errors)} error(s) in the manifests of {name}:\n{format_report(errors)}{why}",
            fix=hint,
        )

    from nemo.utils import logging

    out_dir = tempfile.mkdtemp(prefix="nemo_tl_filtered_")
    if not _FILTERED_DIRS:
        atexit.register(_cleanup_filtered_dirs)
    _FILTERED_DIRS.append(out_dir)
    mapping: dict[str, str] = {}
    for i, (path, result) in enumerate(results.items()):
        bad = result.lines - len(result.kept)
        if bad == 0:
            continue
        if not result.kept:
            errs = [q for q in result.problems if q.is_error]
            raise input_error(
                f"every line of {path} is invalid, nothing is left for {name}:\n{format_report(errs)}",
                fix=f"correct the manifest (`{cli}` lists every problem)",
            )
        target = os.path.join(out_dir, f"{i:03d}_{os.path.basename(path)}")
        with open(target, "w", encoding="utf-8") as f:
            for entry in result.kept:
                f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        reasons = Counter(q.reason for q in {(q.line, q.reason): q for q in result.problems if q.is_error}.values())
        counts = ", ".join(f"{n} {r}" for r, n in reasons.most_common())
        logging.warning(
            f"{skip}: dropped {bad} of {result.lines} lines of {path} ({counts}); using the filtered copy {target}"
        )
        mapping[path] = target
    _check_duration_filters(groups, config, section)

    new = copy.deepcopy(config)  # keeps the parent, so interpolations such as ${model.sample_rate} resolve
    with open_dict(new):
        new.manifest_filepath = _map_paths(value, mapping)
    return new


def _requires_mono(channel_selector: Any) -> bool:
    """Whether NeMo's dataset passes multi-channel audio on as it is (no selector, or several channels)."""
    if isinstance(channel_selector, ListConfig):
        channel_selector = list(channel_selector)
    return channel_selector is None or (isinstance(channel_selector, list) and len(channel_selector) != 1)


def _check_duration_filters(groups: Mapping[str, list[_Result]], config: DictConfig, section: str | None) -> None:
    """InputError when ``min_duration`` / ``max_duration`` remove every utterance of a manifest.

    Counts as NeMo's ``ASRAudioText`` filters: by the manifest's ``duration`` (the offset plays no
    part), dropping ``duration < min_duration`` and ``duration > max_duration``. Above
    ``FILTERED_SHARE_WARNING`` of a manifest removed, a warning naming it.
    """
    lo, hi = _select(config, "min_duration"), _select(config, "max_duration")
    if (lo is None and hi is None) or config.get("use_lhotse"):
        return
    prefix, name = (f"{section}.", section) if section else ("", "the dataset")
    for path, results in groups.items():
        durations = [d for r in results for e in r.kept if (d := finite_float(e.get("duration"))) is not None]
        short = sum(lo is not None and d < lo for d in durations)
        long = sum(hi is not None and d > hi for d in durations)
        if not durations or not short + long:
            continue
        parts = [f"{long} longer than {prefix}max_duration: {hi}" if long else "",
                 f"{short} shorter than {prefix}min_duration: {lo}" if short else ""]
        what = " and ".join(p for p in parts if p)
        if short + long == len(durations):
            fixes = [f"raise {prefix}max_duration to at least {max(durations):g} (or set it to null)" if long else "",
                     f"lower {prefix}min_duration to {min(durations):g} or less (or set it to null)" if short else ""]
            raise input_error(
                f"the duration filters remove all {len(durations)} utterances of {path} ({what}); "
                f"nothing is left for {name}",
                where=f"{prefix}max_duration" if long >= short else f"{prefix}min_duration",
                fix=" and ".join(f for f in fixes if f) + ", or remove the manifest",
            )
        if short + long > FILTERED_SHARE_WARNING * len(durations):
            _log_once(
                f"{name}: the duration filters remove {short + long} of the {len(durations)} utterances of {path} "
                f"({(short + long) / len(durations):.0%}: {what}); they are not used"
            )


# --------------------------------------------------------------------------------------------
# Command line


def _model_section(cfg: DictConfig) -> DictConfig:
    return cfg.model if "model" in cfg and isinstance(cfg.model, DictConfig) else cfg


def _config_frames(model: DictConfig, spec: str) -> EncoderFrames | None:
    """The encoder frames of the model that config ``model`` describes (None: transcript lengths go unchecked)."""
    from nemo_tl.data.frames import config_encoder_frames

    try:
        return config_encoder_frames(model)
    except Exception as e:  # building a config's NeMo modules can fail in many ways; the other checks still run
        print(f"warning: {spec}: cannot build its encoder, so transcript lengths are not checked: {e}", file=sys.stderr)
        return None


def load_tokenizer(directory: str, kind: str = "bpe", *, where: str = "model.tokenizer") -> Any:
    """The NeMo tokenizer a model with ``model.tokenizer: {dir: directory, type: kind}`` builds.

    ``bpe``: NeMo's SentencePieceTokenizer of ``tokenizer.model``; ``wpe``: NeMo's WordPiece
    AutoTokenizer of ``vocab.txt`` (as NeMo's ASR models build it). On the command line ``where`` stays
    ``model.tokenizer``: ``--tokenizer-dir`` and ``--tokenizer-type`` are its ``dir`` and ``type``.

    Raises:
        InputError: a missing directory, a type that does not match its files, an unreadable model.
    """
    from nemo.collections.common import tokenizers

    from nemo_tl.transfer.tokens import check_tokenizer_dir

    directory, kind = check_tokenizer_dir(directory, kind, where=where)  # names {where}.dir / {where}.type
    if kind == "bpe":
        return tokenizers.SentencePieceTokenizer(model_path=os.path.join(directory, "tokenizer.model"))
    return tokenizers.AutoTokenizer(pretrained_model_name="bert-base-cased",
                                    vocab_file=os.path.join(directory, "vocab.txt"), use_fast=False)


def _nemo_tokenizer(spec: str, tar: tarfile.TarFile, tokenizer_cfg: Any) -> Any:
    """The SentencePiece tokenizer packed in the .nemo archive ``spec`` (None for another kind of tokenizer)."""
    if tokenizer_cfg is None or tokenizer_cfg.get("type") != "bpe":
        return None
    member = next((m for m in tar.getmembers() if m.name.endswith("tokenizer.model")), None)
    if member is None:
        return None
    from nemo.collections.common import tokenizers

    work = tempfile.mkdtemp(prefix="nemo_tl_tokenizer_")
    if not _FILTERED_DIRS:
        atexit.register(_cleanup_filtered_dirs)
    _FILTERED_DIRS.append(work)  # removed at exit with the filtered manifests
    path = os.path.join(work, "tokenizer.model")
    with open(path, "wb") as f:
        f.write(tar.extractfile(member).read())
    return tokenizers.SentencePieceTokenizer(model_path=path)


def load_labels(spec: str) -> tuple[Labels | None, dict[str, Any]]:
    """Labels from ``--labels``: a language code (``de``), a string of characters, a ``.nemo`` file or a YAML config.

    Returns ``(labels, settings)``; ``settings`` holds the model's ``sample_rate``,
    ``normalize`` and ``parser`` where a model or config gives them, and ``frames``, its
    :class:`~nemo_tl.data.frames.EncoderFrames` built from its preprocessor and encoder. Labels come from the
    config's ``labels`` (``model.labels`` in a training config), else ``decoder.vocabulary``;
    ``None`` for tokenizer (BPE) models: a ``.nemo`` file's SentencePiece tokenizer is returned in
    ``settings["tokenizer"]``, and the text is checked against it.
    """
    lower = spec.lower()
    if lower.split("-")[0] in LANGUAGES:
        return expand_labels(spec, where="--labels"), {}
    if not (lower.endswith(".nemo") or lower.endswith(".yaml") or lower.endswith(".yml")):
        return list(dict.fromkeys(spec)), {}
    if not os.path.isfile(spec):
        raise input_error(
            f"labels file not found: {spec}",
            where="--labels",
            fix="give a .nemo file, a YAML config, or the characters themselves",
        )
    if lower.endswith(".nemo"):
        try:
            with tarfile.open(spec, "r:*") as tar:
                member = next((m for m in tar if m.name.endswith("model_config.yaml")), None)  # stops early
                if member is None:
                    raise input_error(
                        f"{spec} has no model_config.yaml",
                        where="--labels",
                        fix="give a .nemo file saved by NeMo's save_to()",
                    )
                cfg = OmegaConf.create(tar.extractfile(member).read().decode("utf-8"))
                tokenizer = _nemo_tokenizer(spec, tar, _model_section(cfg).get("tokenizer"))
        except (tarfile.TarError, EOFError, OSError) as e:
            raise input_error(
                f"cannot read {spec} as a .nemo archive: {e}",
                where="--labels",
                fix="give an intact .nemo file (it may be truncated)",
            ) from None
    else:
        cfg, tokenizer = OmegaConf.load(spec), None
    model = _model_section(cfg)

    def pick(*keys: str) -> Any:
        return next((v for v in (_select(model, k) for k in keys) if v is not None), None)

    settings = {
        "sample_rate": pick("sample_rate", "preprocessor.sample_rate", "train_ds.sample_rate"),
        "normalize": bool(pick("train_ds.normalize_transcripts") or False),
        "parser": pick("train_ds.parser"),
        "frames": _config_frames(model, spec),
        "tokenizer": tokenizer,
        "model": model,  # the model config: --train checks its spec_augment against the manifests
    }
    labels = expand_labels(pick("labels", "decoder.vocabulary", "train_ds.labels"), where=f"{spec}: labels")
    if labels is None and pick("tokenizer") is None:
        raise input_error(
            f"{spec} names no labels (no labels, decoder.vocabulary or train_ds.labels)",
            where="--labels",
            fix='give the characters themselves, e.g. --labels " abc\'"',
        )
    return labels, settings


def _check_train_spec_cutout(manifests: Sequence[str], model: DictConfig | None) -> int:
    """``--train``: print the SpecCutout problem of ``manifests`` as the training set of ``model`` (1), else 0."""
    from nemo_tl.data.spec_cutout import check_spec_cutout

    if model is None:
        raise input_error("--train needs the model", where="--train", fix="give --labels MODEL.nemo or a YAML config")
    train = to_plain(model.get("train_ds")) or {}
    train["manifest_filepath"] = list(manifests)
    try:
        check_spec_cutout(OmegaConf.create(train), model, "train_ds")
    except InputError as e:
        print(e)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: print every problem of the given manifests; exit 1 on errors, else 0."""
    ap = argparse.ArgumentParser(
        prog="python -m nemo_tl.data.validate",
        description="Check NeMo manifests before training: JSON, keys, audio files (mono, finite samples) and "
        "lengths, text, vocabulary, languages and sample rates; with a model (--labels M.nemo), whether every "
        "transcript fits the encoder frames of its audio. Prints one line per problem (file:line: [key] message).",
        epilog="Exit status: 0 when no line has an error (warnings allowed), 1 on errors, 2 on bad arguments.",
    )
    ap.add_argument("manifests", nargs="+", metavar="MANIFEST", help="JSON-lines manifest(s)")
    ap.add_argument(
        "--labels",
        help='the vocabulary: a language code (en, de, es, ru, hi, ta, gu: its alphabet), a string of characters '
        '(e.g. " abcdefghijklmnopqrstuvwxyz\'"), or a .nemo model '
        "or YAML config, whose labels (model.labels / labels, else decoder.vocabulary; a {lang: labels} mapping "
        "checks each line against its language) are used, together "
        "with its sample_rate and train_ds.normalize_transcripts/parser unless given here. Without it the "
        "characters are not checked.",
    )
    ap.add_argument(
        "--tokenizer-dir",
        help="a subword model's tokenizer directory (model.tokenizer.dir): every transcript must encode "
        "without <unk> (a .nemo BPE model given to --labels brings its own)",
    )
    ap.add_argument("--tokenizer-type", default="bpe", choices=("bpe", "wpe"), help="model.tokenizer.type")
    ap.add_argument("--languages", help="comma-separated allowed 'lang' values, e.g. en,de; every line needs one")
    ap.add_argument("--sample-rate", type=int, help="the model's sample rate in Hz; other rates give a warning")
    ap.add_argument(
        "--normalize-transcripts",
        action="store_true",
        default=None,
        help="apply NeMo's text normalization (lowercasing, punctuation) before the vocabulary check, "
        "as the dataset option normalize_transcripts: true does",
    )
    ap.add_argument(
        "--parser",
        help="NeMo char parser used with --normalize-transcripts: en, base or ru (default: the model's "
        "train_ds.parser, else en for labels within a-z, space and apostrophe and base for any other)",
    )
    ap.add_argument("--no-audio", action="store_true", help="do not open the audio files (e.g. tarred datasets)")
    ap.add_argument(
        "--train",
        action="store_true",
        help="the manifests are one training set of the model given to --labels (a .nemo or YAML config): also "
        "check that NeMo's SpecCutout (spec_augment.rect_masks > 0) cannot meet a batch shorter than its rect_time, "
        "with the model's train_ds batch_size, drop_last, duration filters and mixing",
    )
    args = ap.parse_args(argv)

    try:
        labels, settings = load_labels(args.labels) if args.labels else (None, {})
        languages = [x.strip() for x in args.languages.split(",") if x.strip()] if args.languages else None
        sample_rate = args.sample_rate or settings.get("sample_rate")
        normalize = (
            args.normalize_transcripts if args.normalize_transcripts is not None else settings.get("normalize", False)
        )
        parser = args.parser or settings.get("parser")
        tokenizer = settings.get("tokenizer")
        if args.tokenizer_dir:
            if labels is not None:
                raise input_error(
                    f"--labels {args.labels} gives characters, --tokenizer-dir a subword vocabulary",
                    where="--tokenizer-dir", fix="give the one the model uses",
                )
            tokenizer = load_tokenizer(args.tokenizer_dir, args.tokenizer_type)
        checker = _ManifestChecker(
            labels, languages, sample_rate, normalize=normalize, parser=parser, check_audio=not args.no_audio,
            frames=settings.get("frames"), tokenizer=tokenizer,
        )
        errors = warnings = lines = 0
        for path in args.manifests:
            result = checker.check(path)
            for p in result.problems:
                print(p)
            errors += sum(p.is_error for p in result.problems)
            warnings += sum(not p.is_error for p in result.problems)
            lines += result.lines
        if args.train:
            errors += _check_train_spec_cutout(args.manifests, settings.get("model"))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    status = "FAILED" if errors else "OK"
    print(f"{status}: {errors} error(s), {warnings} warning(s) in {len(args.manifests)} manifest(s), {lines} line(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
