"""Manifest validation speed on the CPU: lines per second of ``validate_manifest``.

    python bench/bench_validate.py [--lines 100000] [--files 2] [--repeats 3] [--out result.json]

Writes a manifest of ``--lines`` lines naming ``--files`` short wavs in turn, then times
:func:`nemo_tl.data.validate_manifest` on it (labels, sample rate, durations against the audio
headers, text against the labels), the median of ``--repeats`` runs after one warm-up run on a
short manifest. Prints the timing, asserts nothing: ``tests/test_validate.py`` checks what the
speed rests on (one header read per audio file, no decoded samples, constant work per line).
Goal: 100,000 lines in well under 10 s on one core.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import soundfile as sf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nemo_tl.data import validate_manifest  # noqa: E402

LABELS = [" ", *"abcdefghijklmnopqrstuvwxyz", "'"]


def write_manifest(folder: str, lines: int, files: int) -> str:
    wavs = []
    for i in range(files):
        path = os.path.join(folder, f"a{i}.wav")
        sf.write(path, np.zeros(8000, dtype=np.float32), 16000)  # 0.5 s, PCM_16
        wavs.append(json.dumps({"audio_filepath": path, "duration": 0.5, "text": "one two three"}) + "\n")
    manifest = os.path.join(folder, f"m{lines}.json")
    with open(manifest, "w", encoding="utf-8") as f:
        f.writelines(wavs[i % files] for i in range(lines))
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, default=100_000)
    p.add_argument("--files", type=int, default=2, help="distinct audio files the lines name")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="write the result as JSON")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        validate_manifest(write_manifest(tmp, 10, args.files), labels=LABELS, sample_rate=16000)  # warm-up
        manifest = write_manifest(tmp, args.lines, args.files)
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            problems = validate_manifest(manifest, labels=LABELS, sample_rate=16000)
            seconds.append(time.perf_counter() - start)
    if problems:
        print(f"unexpected problems: {problems[:3]}", file=sys.stderr)
        return 1
    median = statistics.median(seconds)
    result = {"lines": args.lines, "files": args.files, "seconds": seconds, "lines_per_s": args.lines / median}
    print(f"validate_manifest: {args.lines:,} lines, {args.files} audio files: {median:.2f} s "
          f"(median of {args.repeats}), {result['lines_per_s']:,.0f} lines/s")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
