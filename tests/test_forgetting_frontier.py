"""The forgetting frontier: Pareto front and CL-MASR metrics by hand, and the report script at smoke scale.

The script test needs an espeak-ng backend, as tests/test_synth_corpus.py: without one it fails rather than skips.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys

import pytest

from nemo_tl.transfer.frontier import continual_metrics, meets_goal, pareto_optimal
from tests.conftest import ROOT


# ---------------------------------------------------------------- pure metrics, hand-computed
def test_pareto_front_keeps_the_points_nothing_beats_on_both_languages():
    #          base      target-only  replay    dominated by replay   tie with replay
    points = [(15, 60), (36, 30),    (21, 32), (22, 33),             (21, 32)]
    assert pareto_optimal(points) == [True, True, True, False, True]
    assert pareto_optimal([(1, 1)]) == [True]
    assert pareto_optimal([(2, 2), (2, 3)]) == [True, False]  # equal source, worse target


def test_continual_metrics_by_hand():
    # en base; then de; then es
    errors = [[10.0],
              [20.0, 30.0],
              [25.0, 40.0, 35.0]]
    steps = continual_metrics(errors, single_task=[28.0, 33.0])
    assert steps[0] == {"step": 0, "avg": 10.0, "bwt": None, "fwt": None}
    assert steps[1]["avg"] == 25.0
    assert steps[1]["bwt"] == 10.0 - 20.0  # English lost 10 points
    assert steps[1]["fwt"] == 28.0 - 30.0  # worse than de from the base alone
    assert math.isclose(steps[2]["avg"], 100.0 / 3)
    assert steps[2]["bwt"] == ((10 - 25) + (30 - 40)) / 2
    assert steps[2]["fwt"] == 33.0 - 35.0
    assert continual_metrics(errors)[2]["fwt"] is None


def test_continual_metrics_refuse_a_ragged_matrix():
    with pytest.raises(ValueError, match="row 1 .* 1 entries; expected 2"):
        continual_metrics([[1.0], [2.0]])
    with pytest.raises(ValueError, match="single_task has 2 entries; expected 1"):
        continual_metrics([[1.0], [2.0, 3.0]], single_task=[1.0, 2.0])


def test_added_replay_keeps_a_whole_target_batch():
    driver = _driver()
    assert driver.added_replay_batch(32, 0.0) == 32
    assert driver.added_replay_batch(32, 0.4) == 53  # 32 target utterances a step on average, 21 source
    assert driver.added_replay_batch(32, 0.5) == 64
    for bad in (1.0, -0.1):
        with pytest.raises(SystemExit, match="a share in"):
            driver.added_replay_batch(32, bad)


def test_goal_is_issue_19s_ratios():
    assert meets_goal(18.0, 31.5, base_source=15.0, target_only=30.0)  # 1.20x and 1.05x exactly
    assert not meets_goal(18.1, 30.0, base_source=15.0, target_only=30.0)
    assert not meets_goal(15.0, 31.6, base_source=15.0, target_only=30.0)


# ---------------------------------------------------------------- the script at smoke scale
def _driver():
    path = os.path.join(ROOT, "examples", "forgetting_frontier.py")
    spec = importlib.util.spec_from_file_location("forgetting_frontier", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def frontier(tmp_path_factory, single_thread):
    out = tmp_path_factory.mktemp("frontier")
    assert _driver().main(["--smoke", "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text(encoding="utf-8"))


def test_frontier_table_marks_pareto_points_and_plots(frontier):
    out, results = frontier
    points = results["points"]
    names = [p["name"] for p in points]
    assert names[0] == "base (en)" and "keep_shared, de only" in names
    assert any(n.startswith("replay") for n in names) and any(n.startswith("average") for n in names)
    assert any(n.startswith("adapters") for n in names)
    added = [p for p in points if p["name"].startswith("replay 50% en added")]
    assert [(p["name"], p["batch"], p["steps"]) for p in added] == [("replay 50% en added (batch 8)", 8, 2)]
    assert {p["batch"] for p in points if p["method"] in ("fine-tuning", "replay") and p not in added} == {4}
    combined = [p for p in points if p["method"] == "combined"]
    assert [p["name"] for p in combined] == ["replay=0.5 + l2sp=1.0 + freeze=1", "replay=0.5 + lwf_source=1.0"]
    assert "average λ=1.00 (replay=0.5 + l2sp=1.0 + freeze=1)" in names  # combined runs are averaged too
    target_only = next(p for p in points if p["name"] == "keep_shared, de only")
    assert combined[0]["trainable"] < target_only["trainable"]  # the first encoder block frozen
    for p in points:
        for lang in ("en", "de"):
            assert math.isfinite(p[lang]["cer"]) and math.isfinite(p[lang]["wer"]), p
    front = pareto_optimal([(p["en"]["cer"], p["de"]["cer"]) for p in points])
    assert [p["pareto"] for p in points] == front
    md = (out / "results.md").read_text(encoding="utf-8")
    assert md.count("\n|") >= len(points) + 1 and "Pareto" in md
    assert (out / "frontier.png").stat().st_size > 1000
    # the corpus is recorded, so that runs on two machines can tell whether they trained on the same audio
    assert set(results["audio_sha256"]) == {f"{lang}_{split}" for lang in ("en", "de")
                                             for split in ("train", "dev", "test")}


def test_averaging_endpoints_are_the_base_and_the_tuned_model(frontier):
    _, results = frontier
    by_name = {p["name"]: p for p in results["points"]}
    tuned = by_name["keep_shared, de only"]
    assert by_name["average λ=1.00 (keep_shared, de only)"]["de"] == tuned["de"]


def test_combine_reads_replay_regularizer_weights_and_frozen_blocks():
    replay, transfer = _driver().combination("replay=0.2+lwf=1.5+ewc=100+freeze=2", 2.0, "en.json", 30)
    assert replay == 0.2
    assert transfer == {"regularization": {"lwf": {"weight": 1.5, "temperature": 2.0},
                                           "ewc": {"weight": 100.0, "manifest": "en.json", "batches": 30}},
                        "freeze_encoder_blocks": 2}
    assert _driver().combination("l2sp=3", 2.0, "en.json", 30) == (None, {"regularization": {"l2sp": {"weight": 3.0}}})
    assert _driver().combination("replay=0.4+freeze=1", 2.0, "en.json", 30) == (0.4, {"freeze_encoder_blocks": 1})
    with pytest.raises(SystemExit, match="whole number of encoder blocks"):
        _driver().combination("freeze=1.5", 2.0, "en.json", 30)
    assert _driver().combination("replay=0.2+lwf_source=1", 2.0, "en.json", 30) == (
        0.2, {"regularization": {"lwf": {"weight": 1.0, "temperature": 2.0, "manifests": ["en.json"]}}})
    with pytest.raises(SystemExit, match="add replay"):
        _driver().combination("lwf_source=1", 2.0, "en.json", 30)
    with pytest.raises(SystemExit, match="given twice"):
        _driver().combination("replay=0.2+lwf=1+lwf_source=1", 2.0, "en.json", 30)
    for bad in ("replay=0.2+dropout=1", "lwf=high", "replay"):
        with pytest.raises(SystemExit, match="METHOD=VALUE"):
            _driver().combination(bad, 2.0, "en.json", 30)
    for bad, message in (("lwf=1+lwf=2", "given twice"), ("l2sp=nan", "finite weight"), ("ewc=-1", "finite weight"),
                         ("replay=1.0", r"share in \[0, 1\)")):
        with pytest.raises(SystemExit, match=message):
            _driver().combination(bad, 2.0, "en.json", 30)


def test_sequence_mode_reports_cl_masr_metrics(tmp_path, single_thread):
    out = tmp_path / "seq"
    assert _driver().main(["--smoke", "--out", str(out), "--sequence", "en,de,es", "--methods", "fine-tuning"]) == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    seq = results["sequence"]
    assert seq["languages"] == ["en", "de", "es"]
    for method in seq["methods"].values():
        assert [len(row) for row in method["errors"]] == [1, 2, 3]
        steps = method["metrics"]
        assert steps[0]["bwt"] is None and steps[1]["bwt"] is not None and steps[2]["fwt"] is not None
    assert seq["single_task_cer"][0] == seq["methods"]["fine-tuning"]["errors"][1][1]  # the same run
    assert len(seq["single_task_cer"]) == 2
    assert "BWT" in (out / "results.md").read_text(encoding="utf-8")


def test_an_interrupted_sequence_keeps_the_steps_it_finished(tmp_path, single_thread, monkeypatch):
    """The sequence is written after every run: a crash in the second step leaves the first step's row and metrics."""
    driver = _driver()
    out = tmp_path / "seq"
    finetune, calls = driver.Experiment.finetune, []

    def crash_on_the_second(self, *args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise RuntimeError("interrupted")
        return finetune(self, *args, **kwargs)

    monkeypatch.setattr(driver.Experiment, "finetune", crash_on_the_second)
    with pytest.raises(RuntimeError, match="interrupted"):
        driver.main(["--smoke", "--out", str(out), "--sequence", "en,de,es", "--methods", "fine-tuning"])
    seq = json.loads((out / "results.json").read_text(encoding="utf-8"))["sequence"]
    errors = seq["methods"]["fine-tuning"]["errors"]
    assert [len(row) for row in errors] == [1, 2]  # the base, then after German
    assert seq["single_task_cer"] == [errors[1][1]]
    assert seq["methods"]["fine-tuning"]["metrics"][1]["fwt"] == 0.0  # German alone is that same run
    assert "| fine-tuning | de |" in (out / "results.md").read_text(encoding="utf-8")


def test_a_sequence_past_its_time_limit_lists_the_runs_left_out(tmp_path, single_thread):
    out = tmp_path / "seq"
    assert _driver().main(["--smoke", "--out", str(out), "--sequence", "en,de,es", "--methods", "fine-tuning",
                           "--time-limit", "0"]) == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert [len(row) for row in results["sequence"]["methods"]["fine-tuning"]["errors"]] == [1]
    assert results["skipped"] == ["fine-tuning, de: not started, --time-limit 0 s had passed",
                                  "de alone from the base: not started, --time-limit 0 s had passed"]
    assert "Not run: fine-tuning, de: not started" in (out / "results.md").read_text(encoding="utf-8")


def test_time_limit_leaves_out_runs_and_lists_them(frontier, tmp_path, single_thread):
    """--time-limit: no fine-tuning starts once it has passed; the runs left out are named in the table."""
    out, _ = frontier
    base = next(out.rglob("base_en.nemo"))
    limited = tmp_path / "limited"
    assert _driver().main(["--smoke", "--out", str(limited), "--base", str(base), "--time-limit", "0"]) == 0
    results = json.loads((limited / "results.json").read_text(encoding="utf-8"))
    assert [p["name"] for p in results["points"]] == ["base (en)"]
    assert any(s.startswith("keep_shared, de only: not started") for s in results["skipped"])
    assert "Not run: keep_shared, de only: not started" in (limited / "results.md").read_text(encoding="utf-8")
