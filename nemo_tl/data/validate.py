"""Manifest validation: find every bad line before training starts, not minutes into it.

``validate_manifest`` lists the problems of one manifest; ``check_dataset_config`` runs it
on every manifest of a ``train_ds`` / ``validation_ds`` section and either raises an
:class:`~nemo_tl.errors.InputError` with the full report or, with ``skip_invalid: true``,
returns a config pointing at filtered copies. Run as a script to check manifests by hand::

    python -m nemo_tl.data.validate train.json dev.json --labels model.nemo
"""

from __future__ import annotations

import argparse
import atexit
import copy
import json
import math
import os
import shutil
import sys
import tarfile
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import soundfile as sf
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from nemo_tl.data.manifest import AUDIO_KEYS, flatten_manifest_filepath, iter_manifest_lines, resolve_audio_path
from nemo_tl.errors import InputError, input_error

__all__ = ["Problem", "check_dataset_config", "check_dataset_options", "load_labels", "main", "validate_manifest"]

DURATION_TOLERANCE = 0.10  # relative difference allowed between "duration" and the audio's length
REPORT_LIMIT = 50  # problems listed in an InputError message

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


class _TextChecker:
    """Applies NeMo's char parser normalization, then finds characters outside ``labels``."""

    def __init__(self, labels: Sequence[str], parser: str = "en", normalize: bool = False):
        from nemo.collections.common.parts.preprocessing.parsers import make_parser

        self.labels = list(labels)
        self.label_set = set(self.labels)
        self.special = {label for label in self.labels if len(label) > 1}
        self.normalize = normalize
        try:
            self._parser = make_parser(self.labels, name=parser, do_normalize=normalize, do_tokenize=False)
        except ValueError:
            raise input_error(
                f"unknown text parser {parser!r}",
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


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


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
            return _Header(full, True, int(f.samplerate), int(f.frames))
    except Exception as e:  # soundfile raises LibsndfileError/RuntimeError/OSError
        return _Header(full, True, error=str(e).strip() or type(e).__name__)


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
        parser: str,
        check_audio: bool,
    ):
        if isinstance(labels, Mapping) and languages is None:
            languages = list(labels)
        self.labels = labels
        self.languages = sorted(set(languages)) if languages is not None else None
        self.sample_rate = int(sample_rate) if sample_rate is not None else None
        self.normalize, self.parser, self.check_audio = normalize, parser, check_audio
        self._checkers: dict[str | None, _TextChecker] = {}

    def check(self, path: str) -> _Result:
        """Every problem of manifest ``path`` and its error-free entries."""
        self.path = path
        self.problems: list[Problem] = []
        self._headers: dict[str, _Header] = {}  # audio path as written -> header
        self._rates: dict[int, list[int]] = {}  # sample rate -> [lines, first line]
        self._lost: dict[str, None] = {}  # vocabulary characters that normalization replaces
        self._lost_lines: list[int] = []
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
                    kept.append(entry)
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
            sr, frames = h.sample_rate, h.frames
            seconds = frames / sr if seconds is None else min(seconds, frames / sr)
            self._rates.setdefault(sr, [0, number])[0] += 1
        return seconds

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
        duration = _number(entry["duration"])
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
        offset = _number(entry.get("offset") or 0)
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
        checker = self._checker(lang)
        if checker is None:
            return
        norm = checker.normalized(text)
        if norm is None or not norm.strip():
            what = "fails on this transcript" if norm is None else "leaves nothing of this transcript"
            self._add(
                number,
                key,
                f"NeMo's text normalization {what}",
                "write the transcript with characters of the vocabulary, or remove the line",
                "empty text",
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
                lower = "lowercase the transcripts (or set normalize_transcripts: true)"
                fix = lower if len(cased) == len(unknown) else f"{lower}; for the others: {fix}"
            self._add(
                number,
                key,
                f"characters not in the vocabulary{vocab}: {_chars(unknown)}",
                fix,
                "characters not in vocabulary",
            )
        if self.normalize:
            gone = [c for c in dict.fromkeys(text) if c in checker.label_set and c not in norm]
            if gone:
                self._lost.update(dict.fromkeys(gone))
                self._lost_lines.append(number)

    def _summary_warnings(self) -> None:
        """One warning per manifest (not per line) for resampled audio and normalized-away characters."""
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
        if self._lost:
            self._add(
                self._lost_lines[0],
                "text",
                f"{len(self._lost_lines)} line(s) from here on contain vocabulary characters "
                f"{_chars(list(self._lost))} that NeMo's normalization (parser {self.parser!r}) replaces, "
                "so the model never sees them",
                "set normalize_transcripts: false (and lowercase the manifest), or parser: base",
                "normalization",
                "warning",
            )


def validate_manifest(
    path: str,
    labels: Labels | None = None,
    languages: Sequence[str] | None = None,
    sample_rate: int | None = None,
    *,
    normalize: bool = False,
    parser: str = "en",
    check_audio: bool = True,
) -> list[Problem]:
    """Every problem of the NeMo manifest ``path``, in line order; ``[]`` when it is clean.

    Args:
        path: JSON-lines manifest; relative audio paths resolve against its directory, as in NeMo.
        labels: the model's characters (checked after NeMo's text normalization), or a
            ``{lang: labels}`` mapping for per-language vocabularies; None skips the check.
        languages: allowed ``lang`` values; given, every line needs a ``lang``.
        sample_rate: the model's rate; audio at another rate gives a warning (it is resampled).
        normalize, parser: NeMo's ``normalize_transcripts`` and ``parser`` dataset settings
            (NeMo's defaults: False, "en").
        check_audio: False for tarred datasets, whose audio is not on disk as listed.
    """
    checker = _ManifestChecker(
        labels, languages, sample_rate, normalize=normalize, parser=parser, check_audio=check_audio
    )
    return checker.check(path).problems


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
        parts = [p.strip() for p in value.split(",") if p.strip()]
        return ",".join(mapping.get(p, p) for p in parts)
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
    value = OmegaConf.select(config, key, default=None, throw_on_resolution_failure=False)
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def format_report(problems: Sequence[Problem], limit: int = REPORT_LIMIT) -> str:
    """One problem a line, the first ``limit`` of them, then ``... and N more``."""
    lines = [f"  {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)


# Dataset options whose wrong type NeMo reports late or not at all ("false" as a string is true).
_OPTION_TYPES: dict[str, tuple[str, str]] = {
    "batch_size": ("positive int", "e.g. batch_size: 32"),
    "num_workers": ("int >= 0", "e.g. num_workers: 4"),
    "sample_rate": ("positive int", "e.g. sample_rate: 16000"),
    "max_duration": ("number or null", "e.g. max_duration: 16.7"),
    "min_duration": ("number or null", "e.g. min_duration: 0.1"),
    "shuffle": ("bool", "write true or false, without quotes"),
    "skip_invalid": ("bool", "write true or false, without quotes"),
    "trim_silence": ("bool", "write true or false, without quotes"),
    "normalize_transcripts": ("bool", "write true or false, without quotes"),
}
_NEMO_TL_DATASET_KEYS = ("skip_invalid", "mixing")


def _option_ok(kind: str, value: Any) -> bool:
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if kind == "positive int":
        return is_int and value > 0
    if kind == "int >= 0":
        return is_int and value >= 0
    if kind == "number or null":
        return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0)
    return isinstance(value, bool)


def check_dataset_options(config: Mapping, section: str | None = None) -> None:
    """Raise InputError for a dataset option of the wrong type or a misspelt nemo_tl key.

    Checks the types of ``batch_size``, ``num_workers``, ``sample_rate``, ``min/max_duration`` and
    the flags (``skip_invalid``, ``shuffle``, ...), and refuses keys one letter or so away from
    nemo_tl's own dataset keys (``skip_invalids`` → ``skip_invalid``), which NeMo would ignore.
    """
    import difflib

    prefix = f"{section}." if section else ""
    for key, (kind, fix) in _OPTION_TYPES.items():
        if key not in config:
            continue
        value = _select(config, key) if isinstance(config, DictConfig) else config[key]
        if value is not None or kind == "number or null":
            if not _option_ok(kind, value):
                raise input_error(f"must be a {kind}, got {value!r}", where=f"{prefix}{key}", fix=fix)
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
) -> DictConfig:
    """Validate every manifest of a dataset config before NeMo builds the dataset.

    ``config.manifest_filepath`` may be a path, a comma-separated string, a list, or nested
    lists (bucketing; Lhotse ``[path, weight]`` pairs). ``labels`` falls back to
    ``config.labels``, ``sample_rate`` to ``config.sample_rate``; the text is normalized with the
    config's ``normalize_transcripts`` / ``parser``, as NeMo's char datasets do.

    Returns ``config`` unchanged when no line has an error. With errors, raises
    :class:`InputError` listing them, unless ``config.skip_invalid`` is true: then filtered
    copies of the bad manifests (only the error-free lines, audio paths made absolute) are
    written to a temporary directory, the drops are logged per reason, and a copy of the
    config pointing at them is returned. The original files are never touched. ``section``
    (e.g. ``"train_ds"``) only names the section in messages.
    """
    if isinstance(config, Mapping) and not isinstance(config, DictConfig):
        config = OmegaConf.create(dict(config))
    check_dataset_options(config, section)
    value = config.get("manifest_filepath")
    if value is None:
        return config
    value = OmegaConf.to_container(value, resolve=True) if isinstance(value, ListConfig) else value
    name = section or "the dataset"
    skip = f"{section}.skip_invalid" if section else "skip_invalid"

    if labels is None:
        labels = _select(config, "labels")
    if sample_rate is None:
        sample_rate = _select(config, "sample_rate")
    tarred = bool(config.get("is_tarred", False) or config.get("tarred_audio_filepaths"))
    paths = list(dict.fromkeys(flatten_manifest_filepath(value)))
    if tarred:
        paths = _expand_tarred(paths)

    checker = _ManifestChecker(
        labels,
        languages,
        sample_rate,
        normalize=bool(config.get("normalize_transcripts", False)),
        parser=config.get("parser", "en"),
        check_audio=not tarred,
    )
    results = {p: checker.check(p) for p in paths}
    problems = [q for r in results.values() for q in r.problems]
    for w in (q for q in problems if not q.is_error):
        _log_once(f"{name}: {w}")
    errors = [q for q in problems if q.is_error]
    if not errors:
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

    new = copy.deepcopy(config)  # keeps the parent, so interpolations such as ${model.sample_rate} resolve
    with open_dict(new):
        new.manifest_filepath = _map_paths(value, mapping)
    return new


# --------------------------------------------------------------------------------------------
# Command line


def _model_section(cfg: DictConfig) -> DictConfig:
    return cfg.model if "model" in cfg and isinstance(cfg.model, DictConfig) else cfg


def load_labels(spec: str) -> tuple[Labels | None, dict[str, Any]]:
    """Labels from ``--labels``: a string of characters, a ``.nemo`` file or a YAML config.

    Returns ``(labels, settings)``; ``settings`` holds the model's ``sample_rate``,
    ``normalize`` and ``parser`` where a model or config gives them. Labels come from the
    config's ``labels`` (``model.labels`` in a training config), else ``decoder.vocabulary``;
    ``None`` for tokenizer (BPE) models, whose text is not checked.
    """
    lower = spec.lower()
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
        except (tarfile.TarError, EOFError, OSError) as e:
            raise input_error(
                f"cannot read {spec} as a .nemo archive: {e}",
                where="--labels",
                fix="give an intact .nemo file (it may be truncated)",
            ) from None
    else:
        cfg = OmegaConf.load(spec)
    model = _model_section(cfg)

    def pick(*keys: str) -> Any:
        return next((v for v in (_select(model, k) for k in keys) if v is not None), None)

    settings = {
        "sample_rate": pick("sample_rate", "preprocessor.sample_rate", "train_ds.sample_rate"),
        "normalize": bool(pick("train_ds.normalize_transcripts") or False),
        "parser": pick("train_ds.parser") or "en",
    }
    labels = pick("labels", "decoder.vocabulary", "train_ds.labels")
    if labels is None and pick("tokenizer") is None:
        raise input_error(
            f"{spec} names no labels (no labels, decoder.vocabulary or train_ds.labels)",
            where="--labels",
            fix='give the characters themselves, e.g. --labels " abc\'"',
        )
    return labels, settings


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: print every problem of the given manifests; exit 1 on errors, else 0."""
    ap = argparse.ArgumentParser(
        prog="python -m nemo_tl.data.validate",
        description="Check NeMo manifests before training: JSON, keys, audio files and lengths, text, "
        "vocabulary, languages and sample rates. Prints one line per problem (file:line: [key] message).",
        epilog="Exit status: 0 when no line has an error (warnings allowed), 1 on errors, 2 on bad arguments.",
    )
    ap.add_argument("manifests", nargs="+", metavar="MANIFEST", help="JSON-lines manifest(s)")
    ap.add_argument(
        "--labels",
        help='the vocabulary: a string of characters (e.g. " abcdefghijklmnopqrstuvwxyz\'"), or a .nemo model '
        "or YAML config, whose labels (model.labels / labels, else decoder.vocabulary; a {lang: labels} mapping "
        "checks each line against its language) are used, together "
        "with its sample_rate and train_ds.normalize_transcripts/parser unless given here. Without it the "
        "characters are not checked.",
    )
    ap.add_argument("--languages", help="comma-separated allowed 'lang' values, e.g. en,de; every line needs one")
    ap.add_argument("--sample-rate", type=int, help="the model's sample rate in Hz; other rates give a warning")
    ap.add_argument(
        "--normalize-transcripts",
        action="store_true",
        default=None,
        help="apply NeMo's text normalization (lowercasing, punctuation) before the vocabulary check, "
        "as the dataset option normalize_transcripts: true does",
    )
    ap.add_argument("--parser", help="NeMo char parser used with --normalize-transcripts: en (default), base, ru")
    ap.add_argument("--no-audio", action="store_true", help="do not open the audio files (e.g. tarred datasets)")
    args = ap.parse_args(argv)

    try:
        labels, settings = load_labels(args.labels) if args.labels else (None, {})
        languages = [x.strip() for x in args.languages.split(",") if x.strip()] if args.languages else None
        sample_rate = args.sample_rate or settings.get("sample_rate")
        normalize = (
            args.normalize_transcripts if args.normalize_transcripts is not None else settings.get("normalize", False)
        )
        parser = args.parser or settings.get("parser", "en")
        checker = _ManifestChecker(
            labels, languages, sample_rate, normalize=normalize, parser=parser, check_audio=not args.no_audio
        )
        errors = warnings = lines = 0
        for path in args.manifests:
            result = checker.check(path)
            for p in result.problems:
                print(p)
            errors += sum(p.is_error for p in result.problems)
            warnings += sum(not p.is_error for p in result.problems)
            lines += result.lines
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    status = "FAILED" if errors else "OK"
    print(f"{status}: {errors} error(s), {warnings} warning(s) in {len(args.manifests)} manifest(s), {lines} line(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
