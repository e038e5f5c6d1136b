"""examples/reproduce_kd.py (Kim et al. Tables 3-4 on synthesized speech) at smoke scale on CPU.

Needs an espeak-ng backend, as tests/test_synth_corpus.py: without one it fails rather than skips.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys

import pytest

from nemo_tl.data.manifest import read_manifest
from tests.conftest import ROOT


def _driver():
    spec = importlib.util.spec_from_file_location("reproduce_kd", os.path.join(ROOT, "examples", "reproduce_kd.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, single_thread):
    """The whole driver at --smoke scale; returns (module, output dir, results.json)."""
    driver = _driver()
    out = tmp_path_factory.mktemp("kd")
    assert driver.main(["--smoke", "--out", str(out)]) == 0
    return driver, out, json.loads((out / "results.json").read_text(encoding="utf-8"))


def test_every_row_has_finite_wer_and_cer_per_domain_and_average(smoke):
    driver, out, results = smoke
    domains = results["domains"]
    assert domains == ["en-us", "en-gb-scotland"]
    assert list(results["rows"]) == [run.key for run in driver.RUNS]
    assert list(results["teachers"]) == domains
    for row in [*results["rows"].values(), *results["teachers"].values()]:
        test = row["test"]
        for d in domains:
            assert test[d]["utterances"] > 0
        for col in [*domains, "avg"]:
            assert math.isfinite(test[col]["wer"]) and math.isfinite(test[col]["cer"])
        assert test["avg"]["wer"] == pytest.approx(sum(test[d]["wer"] for d in domains) / len(domains))
    md = (out / "results.md").read_text(encoding="utf-8")
    table = [line for line in md.splitlines() if line.startswith("| teacher |") or line.startswith("| student |")
             or line.startswith("| small |")]
    assert len(table) == len(driver.RUNS) + len(domains)
    assert set(results["timing_s"]) >= {"corpus", "total", *(f"teacher {d}" for d in domains)}


def test_rows_differ_in_their_kd_losses_as_labelled(smoke):
    _, _, results = smoke
    rows = results["rows"]
    assert "tok_kd_loss" not in rows["base"]["last_losses"]
    for key in ("tok_1", "tok_12"):
        assert rows[key]["last_losses"]["tok_kd_loss"] > 0 and rows[key]["last_losses"]["unc_kd_loss"] == 0
    for key in ("tok_unc_1", "tok_unc_12", "small_tok_unc_12"):
        assert rows[key]["last_losses"]["tok_kd_loss"] > 0 and rows[key]["last_losses"]["unc_kd_loss"] > 0
    assert rows["tok_12"]["teachers"] == ["en-us", "en-gb-scotland"]
    assert rows["tok_unc_12"]["kd"] == {"conditional": False, "teacher_weighting": "fixed"}
    assert rows["tok_unc_12_sel"]["kd"] == {"conditional": True, "teacher_weighting": "confidence"}
    assert rows["small_base"]["params"] < rows["base"]["params"] < results["teachers"]["en-us"]["params"]


def test_no_test_sentence_is_heard_in_training(smoke):
    _, out, results = smoke
    test_texts = {e["text"] for d in results["domains"] for e in read_manifest(str(out / "corpus" / d / f"{d}_test.json"))}
    for d in results["domains"]:
        teacher = read_manifest(str(out / "corpus" / d / "train_teacher.json"))
        student = read_manifest(str(out / "corpus" / d / "train_student.json"))
        assert teacher and student and not test_texts & {e["text"] for e in teacher}
        assert student == teacher[: len(student)] and len(student) < len(teacher)  # --student-share 0.5


def test_claims_are_decided_by_the_numbers(smoke):
    driver, _, results = smoke
    assert results["claims"] == driver.check_claims(results["rows"])
    rows = {key: {"test": {"avg": {"wer": wer}}} for key, wer in
            [("base", 40.0), ("tok_1", 35.0), ("tok_unc_1", 36.0), ("tok_12", 30.0), ("small_base", 50.0)]}
    held = {(c["row"], c["claim"]): c["held"] for c in driver.check_claims(rows)}
    assert held == {
        ("tok_1", "KD beats the baseline"): True,
        ("tok_unc_1", "KD beats the baseline"): True,
        ("tok_unc_1", "unc-KD adds to tok-KD"): False,
        ("tok_12", "KD beats the baseline"): True,
        ("tok_12", "two teachers beat one"): True,
        ("small_base", "the smaller student is worse (Kim et al. Table 2)"): True,
    }
