"""``python -m nemo_tl.demo`` at toy size: saved models, results that a partial run never overwrites,
the training-time column, and the embedded base model.

Needs an espeak-ng backend, as tests/test_synth_corpus.py: without one it fails rather than skips.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import time

import pytest
import torch
import yaml
from nemo.collections.asr.models import ASRModel

from nemo_tl import demo
from nemo_tl.data.texts import labels_for
from nemo_tl.models import TransferCTCModel

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    """The demo's corpus at 20 utterances per language (16 train, 2 dev, 2 test), made once."""
    out = tmp_path_factory.mktemp("demo_corpus")
    demo.make_corpus(out, jobs=2, utterances=20)
    return out / "corpus"


def run_demo(out, corpus_dir, *args: str) -> int:
    if not (out / "corpus").exists():
        shutil.copytree(corpus_dir, out / "corpus")  # absolute audio paths: the copy reads the same wavs
    argv = ["--out", str(out), "--steps", "2", "--utterances", "20", "--threads", str(torch.get_num_threads())]
    return demo.main([*argv, *args])


def test_a_partial_run_saves_its_model_and_leaves_the_full_results_alone(tmp_path, corpus_dir, monkeypatch):
    (tmp_path / "results.json").write_text('{"complete": true}', encoding="utf-8")  # an earlier full run's
    (tmp_path / "results.md").write_text("full table\n", encoding="utf-8")
    setup = TransferCTCModel.setup

    def slow_setup(self, stage=None):  # set-up inside trainer.fit, before the first step: not training time
        setup(self, stage)
        time.sleep(5.0)

    monkeypatch.setattr(TransferCTCModel, "setup", slow_setup)

    assert run_demo(tmp_path, corpus_dir, "--runs", "1") == 0
    assert (tmp_path / "results.json").read_text(encoding="utf-8") == '{"complete": true}'
    assert (tmp_path / "results.md").read_text(encoding="utf-8") == "full table\n"
    partial = json.loads((tmp_path / "results_partial.json").read_text(encoding="utf-8"))
    assert partial["complete"] is False and partial["runs"] == ["keep_shared"] and partial["failed"] == []
    base_row, row = partial["rows"]
    assert row["run"] == "keep_shared" and 0 < row["seconds"] < 5.0  # the sleep in set-up is not counted
    assert row["model"] == str(tmp_path / "models_partial" / "keep_shared.nemo")
    assert not (tmp_path / "models").exists()  # a full run's models would stay as they were
    model = ASRModel.restore_from(row["model"], map_location="cpu")
    assert isinstance(model, TransferCTCModel) and list(model.decoder.vocabulary) == labels_for("de")
    md = (tmp_path / "results_partial.md").read_text(encoding="utf-8")
    assert md.count("| keep_shared |") == 1 and "Forgetting" in md and "replay" in md and "reinit" in md
    assert "2 English utterances" in md and "2 German" in md  # what each figure rests on
    assert "above 100%" in md and "insertions" in md


def test_a_failed_run_writes_partial_results_and_a_full_run_writes_results(tmp_path, corpus_dir, monkeypatch):
    broken = demo.DemoRun("broken", "broken", {"vocabulary": "no_such_mode"}, False)
    monkeypatch.setattr(demo, "RUNS", [demo.RUNS[0], broken])
    assert run_demo(tmp_path, corpus_dir) == 1  # every run selected, one failed
    assert not (tmp_path / "results.json").exists()
    partial = json.loads((tmp_path / "results_partial.json").read_text(encoding="utf-8"))
    assert partial["failed"] == ["broken"] and [r["run"] for r in partial["rows"][1:]] == ["keep_shared"]
    assert sorted(os.listdir(tmp_path / "models_partial")) == ["keep_shared.nemo"]
    assert not (tmp_path / "models").exists()

    monkeypatch.setattr(demo, "RUNS", [demo.RUNS[0]])
    assert run_demo(tmp_path, corpus_dir) == 0
    full = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert full["complete"] is True and full["runs"] == ["keep_shared"]
    assert full["rows"][1]["model"] == str(tmp_path / "models" / "keep_shared.nemo")
    assert isinstance(ASRModel.restore_from(full["rows"][1]["model"], map_location="cpu"), TransferCTCModel)


def test_help_lists_the_runs_and_says_where_partial_results_go(capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "4 keep_shared + en replay 30%" in text and "results_partial.json" in text


def test_the_embedded_base_model_carries_no_path_of_the_machine_it_was_trained_on():
    with tarfile.open(demo.EMBEDDED_BASE) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("model_config.yaml"))
        cfg = yaml.safe_load(tar.extractfile(member).read())

    def strings(node):
        if isinstance(node, dict):
            return [s for v in node.values() for s in strings(v)]
        if isinstance(node, list):
            return [s for v in node for s in strings(v)]
        return [node] if isinstance(node, str) else []

    assert [s for s in strings(cfg) if s.startswith(("/", "~")) or ":\\" in s] == []
    assert cfg["train_ds"]["manifest_filepath"] is None and cfg["validation_ds"]["manifest_filepath"] is None
