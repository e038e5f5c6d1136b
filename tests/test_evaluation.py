"""Evaluation output a user reads or parses: strict JSON (no NaN) and "n/a" where a figure does not exist."""

from __future__ import annotations

import math
import os
import subprocess
import sys

from nemo_tl.data.synthetic import make_tone_manifest
from nemo_tl.decoding.multilingual_eval import EvalResult, evaluate, format_table, to_json
from nemo_tl.evaluation import forgetting_table, to_strict_json
from nemo_tl.models.multisoftmax_rnnt import MultiSoftmaxRNNTModel
from tests.conftest import ROOT
from tests.helpers import strict_loads
from tests.test_multisoftmax_model import TEXTS, ms_cfg


def test_forgetting_table_against_a_zero_wer_base():
    base = {"en.json": {"wer": 0.0, "cer": 0.0, "utterances": 4}, "de.json": {"wer": 50.0, "cer": 20.0, "utterances": 4}}
    tuned = {"en.json": {"wer": 25.0, "cer": 5.0, "utterances": 4}, "de.json": {"wer": 10.0, "cer": 2.0, "utterances": 4}}
    rows, md = forgetting_table(base, tuned)
    assert rows["en.json"]["relative_change"] is None and rows["de.json"]["relative_change"] == -80.0
    assert "| en.json | 0.00 | 25.00 | n/a |" in md and "| de.json | 50.00 | 10.00 | -80.0 |" in md
    assert strict_loads(to_strict_json({"comparison": rows}))["comparison"]["en.json"]["relative_change"] is None


def test_strict_json_writes_null_for_nan_and_infinity():
    assert strict_loads(to_strict_json({"a": [math.nan, 1.5], "b": (math.inf, -math.inf)})) == {
        "a": [None, 1.5], "b": [None, None]}


def test_multilingual_rows_without_words_are_null_in_json_and_na_in_the_table():
    nan = (math.nan, 0)
    empty = EvalResult("known", {"en": nan, "avg": nan}, None, 1.0, cers={"en": nan, "avg": nan})
    scored = EvalResult("lid_free", {"en": (20.0, 10), "avg": (20.0, 10)}, 90.0, 1.5,
                        cers={"en": (5.0, 40), "avg": (5.0, 40)})
    parsed = strict_loads(to_json({"baseline (known)": empty, "lid_free": scored}))
    assert parsed["baseline (known)"]["wers"]["avg"] == [None, 0] and parsed["lid_free"]["wers"]["avg"] == [20.0, 10]
    assert parsed["baseline (known)"]["cers"]["avg"] == [None, 0] and parsed["lid_free"]["cers"]["avg"] == [5.0, 40]
    lines = format_table({"baseline (known)": empty, "lid_free": scored}, ["en"], baseline=empty).splitlines()
    # model, en, Avg., en CER, Avg. CER, WERR, CERR, LID acc, T_avg; WERR and CERR against n/a: n/a
    assert lines[1].split("\t") == ["baseline (known)", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", "-", "1.00"]
    assert lines[2].split("\t") == ["lid_free", "20.00", "20.00", "5.00", "5.00", "n/a", "n/a", "90.0", "1.50"]


def test_evaluate_multilingual_takes_baseline_as_evaluate_ctc_does(tmp_path, single_thread):
    """``baseline=`` (not ``baseline_path=``), in its mapping form {lang: monolingual .nemo}; strict JSON out."""
    model = MultiSoftmaxRNNTModel(ms_cfg())
    ms_path, en_path = str(tmp_path / "ms.nemo"), str(tmp_path / "en.nemo")
    model.save_to(ms_path)
    model.extract_language("en").save_to(en_path)
    manifests = [make_tone_manifest(str(tmp_path), TEXTS[lang][:2], name=lang, lang=lang) for lang in ("en", "ru")]
    out = str(tmp_path / "eval.json")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "evaluate_multilingual.py"), f"model_path={ms_path}",
         f"manifests=[{','.join(manifests)}]", f"baseline={{en:{en_path}}}", "modes=[known]", f"output_json={out}",
         "batch_size=4"],
        capture_output=True, text=True, cwd=str(tmp_path), env={**os.environ, "PYTHONPATH": ROOT, "HYDRA_FULL_ERROR": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = strict_loads(open(out, encoding="utf-8").read())
    assert set(rows) == {"baseline (known)", "known"}
    assert set(rows["baseline (known)"]["wers"]) == {"en", "avg"}  # the English model scored on English only
    assert "If you intend to do training" not in proc.stdout + proc.stderr

    # LID-free and oracle rows and the sweep come from one decoding of every language: as decoded per mode.
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "evaluate_multilingual.py"), f"model_path={ms_path}",
         f"manifests=[{','.join(manifests)}]", "modes=[lid_free,oracle]", f"output_json={out}", "batch_size=4",
         "sweep=[[inf,inf],[0,0.0]]", f"plot={tmp_path / 'sweep.png'}"],
        capture_output=True, text=True, cwd=str(tmp_path), env={**os.environ, "PYTHONPATH": ROOT, "HYDRA_FULL_ERROR": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = strict_loads(open(out, encoding="utf-8").read())
    restored = MultiSoftmaxRNNTModel.restore_from(ms_path, map_location="cpu").eval()
    for mode in ("lid_free", "oracle"):
        decoded = evaluate(restored, manifests, mode, batch_size=4)
        assert rows[mode]["cers"] == {k: list(v) for k, v in decoded.cers.items()}, mode
        assert rows[mode]["lid_accuracy"] == decoded.lid_accuracy and rows[mode]["t_avg"] == decoded.t_avg
    assert (tmp_path / "sweep.png").stat().st_size > 1000
