"""Greedy WER/CER of a model per manifest, and the base-vs-tuned forgetting table (Huang et al. Table 3)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

from nemo.collections.asr.metrics.wer import word_error_rate

from nemo_tl.data.manifest import iter_manifest_lines, read_manifest, resolve_audio_path
from nemo_tl.errors import input_error


def read_references(manifest: str) -> tuple[list[str], list[str]]:
    """Audio paths (resolved as NeMo resolves them) and reference texts of ``manifest``."""
    if not os.path.isfile(manifest):
        raise input_error(f"manifest {manifest!r} does not exist", where="manifests", fix="give existing manifest paths")
    audio, texts = [], []
    for index, entry in enumerate(read_manifest(manifest)):
        if "audio_filepath" not in entry or "text" not in entry:
            number = [n for n, _ in iter_manifest_lines(manifest)][index]  # blank lines are skipped
            raise input_error("a line without audio_filepath or text", where=f"{manifest}:{number}",
                              fix="each line must be a JSON object with audio_filepath and text")
        audio.append(resolve_audio_path(entry["audio_filepath"], manifest))
        texts.append(entry["text"])
    if not audio:
        raise input_error("manifest is empty", where=manifest, fix="give a manifest with at least one line")
    return audio, texts


def _text(hypothesis) -> str:
    return hypothesis if isinstance(hypothesis, str) else hypothesis.text


def evaluate_manifests(model, manifests: Sequence[str], batch_size: int = 16, **transcribe_kwargs) -> dict[str, dict]:
    """Greedy-decode every manifest with ``model.transcribe``.

    Returns:
        ``{manifest_path: {"wer": %, "cer": %, "utterances": n}}`` (percentages).
    """
    results = {}
    for manifest in manifests:
        audio, refs = read_references(manifest)
        hyps = model.transcribe(audio, batch_size=batch_size, verbose=False, **transcribe_kwargs)
        if isinstance(hyps, tuple):  # some NeMo models return (best, all)
            hyps = hyps[0]
        hyps = [_text(h).strip() for h in hyps]
        refs = [r.strip().lower() for r in refs]
        results[manifest] = {
            "wer": 100.0 * word_error_rate(hyps, refs),
            "cer": 100.0 * word_error_rate(hyps, refs, use_cer=True),
            "utterances": len(refs),
        }
    return results


def fmt(value: float | None, spec: str = ".2f") -> str:
    """``value`` formatted with ``spec``, or ``"n/a"`` where it is None, NaN or infinite."""
    return format(value, spec) if value is not None and math.isfinite(value) else "n/a"


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float (in dicts, lists, tuples) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def to_strict_json(obj: Any, **dump_kwargs: Any) -> str:
    """``json.dumps`` that a strict parser reads: NaN and infinities become ``null``."""
    return json.dumps(finite_or_none(obj), allow_nan=False, **dump_kwargs)


def results_table(results: dict[str, dict], title: str = "", column: str = "manifest") -> str:
    """A Markdown table of :func:`evaluate_manifests` results (``column`` heads the keys' column)."""
    lines = [f"### {title}", ""] if title else []
    lines += [f"| {column} | WER % | CER % | utterances |", "|---|---:|---:|---:|"]
    for path, r in results.items():
        lines.append(f"| {path} | {fmt(r['wer'])} | {fmt(r['cer'])} | {r['utterances']} |")
    return "\n".join(lines)


def forgetting_table(base: dict[str, dict], tuned: dict[str, dict]) -> tuple[dict, str]:
    """Base vs tuned WER per manifest with the relative change (Huang et al. 2020, Table 3 layout).

    Returns:
        (rows as a JSON-able dict, Markdown table). The relative change is
        ``(tuned - base) / base`` in percent; positive means the tuned model is worse. Where the
        base WER is 0 (or not finite) there is no relative change: ``None`` in the rows, "n/a" in
        the table.
    """
    rows = {}
    md = ["| manifest | base WER % | tuned WER % | rel. change % | base CER % | tuned CER % |",
          "|---|---:|---:|---:|---:|---:|"]
    for path in tuned:
        b, t = base[path], tuned[path]
        rel = 100.0 * (t["wer"] - b["wer"]) / b["wer"] if math.isfinite(b["wer"]) and b["wer"] > 0 else None
        rows[path] = {"base_wer": b["wer"], "tuned_wer": t["wer"], "relative_change": rel,
                      "base_cer": b["cer"], "tuned_cer": t["cer"], "utterances": t["utterances"]}
        md.append(f"| {path} | {fmt(b['wer'])} | {fmt(t['wer'])} | {fmt(rel, '+.1f')} | {fmt(b['cer'])} "
                  f"| {fmt(t['cer'])} |")
    return rows, "\n".join(md)
