"""The GPU evidence scripts of BPE transfer at smoke scale on CPU: bench/bench_transfer_bpe.py and
examples/reproduce_bpe_transfer.py (CTC head; the RNN-T head runs the same code with NeMo's RNN-T classes).

The reproduction needs an espeak-ng backend, as tests/test_synth_corpus.py.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.usefixtures("single_thread")


def _load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_bench_smoke_measures_every_variant(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    bench = _load("bench/bench_transfer_bpe.py", "bench_transfer_bpe")
    out = tmp_path / "bench.json"
    data = bench.main(["--smoke", "--device", "cpu", "--heads", "ctc", "--precisions", "fp32", "--ks", "0", "1", "3",
                       "--ratio-steps", "1", "--steps", "1", "--out", str(out)])
    assert data["errors"] == {} and json.loads(out.read_text())["sections"].keys() == {"ctc_head_to_head",
                                                                                        "ctc_freeze_sweep"}
    assert data["setup"]["ctc"]["encoder_blocks"] == 3  # pre_encode + 2 layers
    sweep = data["sections"]["ctc_freeze_sweep"]["fp32"]["by_variant"]
    assert {"nemo_tl, k=0 of 3", "nemo_tl, k=1 of 3", "nemo_tl, k=3 of 3", "NeMo, encoder.freeze()"} <= set(sweep)


def test_reproduction_smoke_writes_a_table_of_every_run(tmp_path):
    driver = _load("examples/reproduce_bpe_transfer.py", "reproduce_bpe_transfer")
    assert driver.main(["--smoke", "--heads", "ctc", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    runs = results["heads"]["ctc"]["runs"]
    assert list(runs) == [name for name, _ in driver.RUNS]
    for name, run in runs.items():
        last = run["curve"][-1]
        assert last["step"] == 2 and all(math.isfinite(last[lang]["cer"]) for lang in ("en", "de")), name
    assert "keep_shared" in runs["keep_shared, new pieces compose"]["transfer_report"]
    md = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert "### CTC" in md and "NeMo change_vocabulary" in md and "from scratch on target" in md
    assert (tmp_path / "tokenizer_de" / "tokenizer.model").is_file()
