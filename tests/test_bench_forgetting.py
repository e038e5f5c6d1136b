"""bench/bench_forgetting.py runs end to end in its CPU smoke mode (the GPU run gives the numbers)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("single_thread")


def test_smoke_run_measures_every_variant(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_forgetting", ROOT / "bench" / "bench_forgetting.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # puts bench/ on sys.path for its `common` import
    out = tmp_path / "forgetting.json"
    bench.main(["--smoke", "--device", "cpu", "--precisions", "fp32", "--warmup", "0", "--steps", "2",
                "--out", str(out)])
    data = json.loads(out.read_text(encoding="utf-8"))
    assert not data["errors"]
    ratios = data["sections"]["step_time"]["fp32"]["ratios"]
    assert set(ratios) == {"plain", "LwF online", "LwF cached", "LwF online, 20% named", "L2-SP", "EWC"}
    assert all(r > 0 for r in ratios.values())
