"""Reading NeMo JSON-lines manifests the way NeMo does, with errors that name file and line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from nemo_tl.errors import input_error

# Keys NeMo's manifest parser accepts for the audio path, in the order it tries them.
AUDIO_KEYS = ("audio_filepath", "audio_filename")


def iter_manifest_lines(path: str) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for every non-blank line of ``path`` (1-based numbers).

    Blank lines are skipped, as NeMo skips them. Bytes that are not UTF-8 are replaced
    (U+FFFD) so that one bad line cannot stop the reading of the others.
    """
    with open(os.path.expanduser(path), "rb") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.decode("utf-8", errors="replace").strip()
            if line:
                yield number, line


def read_manifest(path: str) -> list[dict[str, Any]]:
    """Parse every line of manifest ``path``; raise :class:`InputError` naming the first bad line."""
    return [entry for _, entry in read_numbered_manifest(path)]


def read_numbered_manifest(path: str) -> list[tuple[int, dict[str, Any]]]:
    """``(line_number, entry)`` for every non-blank line of manifest ``path`` (1-based numbers, as
    :func:`iter_manifest_lines`); raise :class:`InputError` naming the first bad line."""
    entries = []
    for number, line in iter_manifest_lines(path):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise input_error(
                f"malformed JSON: {e.msg} (column {e.colno})",
                where=f"{path}:{number}",
                fix="each line must be one JSON object; check it with `python -m nemo_tl.data.validate`",
            ) from None
        if not isinstance(entry, dict):
            raise input_error(
                f"line is a JSON {type(entry).__name__}, not an object",
                where=f"{path}:{number}",
                fix='write one object per line: {"audio_filepath": ..., "duration": ..., "text": ...}',
            )
        entries.append((number, entry))
    return entries


def resolve_audio_path(audio_file: str, manifest_path: str) -> str:
    """The path NeMo will open for ``audio_file`` listed in ``manifest_path``.

    Uses NeMo's own rule (``get_full_path``): a relative path is tried against the
    manifest's directory first, then taken as it is (relative to the working directory).
    """
    from nemo.collections.common.parts.preprocessing.manifest import get_full_path

    return get_full_path(audio_file=audio_file, manifest_file=manifest_path)


def audio_sha256(manifest_path: str) -> str:
    """sha256 of the bytes of every audio file ``manifest_path`` lists, in its order (paths resolved as NeMo
    resolves them): two machines that synthesized or copied a corpus tell by it whether they hold the same
    audio, whatever the paths."""
    import hashlib

    h = hashlib.sha256()
    for entry in read_manifest(manifest_path):
        with open(resolve_audio_path(entry["audio_filepath"], manifest_path), "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def flatten_manifest_filepath(value: Any, where: str = "manifest_filepath") -> list[str]:
    """Every manifest path in a dataset's ``manifest_filepath``, in order: the one parser of that key.

    The forms NeMo accepts: a path; a comma-separated string (``"a.json, b.json"``: split, spaces
    around each path dropped); a list of paths (each may itself be a comma-separated string); nested
    lists (bucketing: ``[[a.json, b.json], [c.json]]``); Lhotse ``[[path, weight], ...]`` pairs, whose
    weights (numbers) are skipped. ``None`` gives ``[]``. Anything else (a mapping) is an InputError
    naming ``where``.
    """
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        return []
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        return [p.strip() for p in value.split(",") if p.strip()]
    if isinstance(value, Iterable) and not isinstance(value, Mapping | bytes):
        return [p for item in value for p in flatten_manifest_filepath(item, where)]
    raise input_error(
        f"must be a manifest path, a comma-separated string of paths or a list of them, got {value!r}",
        where=where,
        fix="write manifest_filepath=train.json or manifest_filepath=[a.json,b.json]",
    )
