"""The CTC example scripts and command-line tools, run as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from matplotlib.figure import Figure
from nemo.collections.asr.models import ASRModel

from nemo_tl.data.synthetic import make_tone_manifest, write_manifest
from nemo_tl.evaluation import read_references
from nemo_tl.models import TransferCTCModel
from nemo_tl.transfer import introspect
from nemo_tl.transfer.vocabulary import shared_label_rows
from tests.conftest import DE_LABELS, EN_LABELS, ROOT
from tests.helpers import fit, strict_json


def run(*args: str, cwd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT, "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def en2_manifest(data_dir):
    return make_tone_manifest(data_dir, ["nine", "ten", "eleven", "twelve"], name="en_other", seed=50)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, base_nemo, en_manifest, en2_manifest):
    """examples/finetune_ctc.py run for 3 steps with two dev sets; returns (work dir, tuned .nemo)."""
    work = tmp_path_factory.mktemp("finetune")
    out = str(work / "tuned.nemo")
    run(
        os.path.join(ROOT, "examples", "finetune_ctc.py"),
        f"model.transfer.base_model={base_nemo}",
        "model.transfer.freeze_encoder_blocks=2",
        f"model.train_ds.manifest_filepath={en_manifest}",
        f"model.validation_ds.manifest_filepath=[{en_manifest},{en2_manifest}]",
        "model.train_ds.batch_size=4", "model.validation_ds.batch_size=4", "model.spec_augment=null",
        "trainer.max_steps=3", "trainer.accelerator=cpu", "+trainer.enable_progress_bar=false",
        f"exp_manager.exp_dir={work}", "exp_manager.create_checkpoint_callback=false",
        "exp_manager.create_tensorboard_logger=false", f"save_to={out}",
        cwd=str(work),
    )
    return work, out


def test_finetune_script_saves_a_restorable_transfer_model(tuned, base_nemo):
    _, path = tuned
    model = ASRModel.restore_from(path, map_location="cpu")
    assert isinstance(model, TransferCTCModel)
    assert model.cfg.transfer.base_model == base_nemo and len(model.frozen_blocks) == 2
    base = ASRModel.restore_from(base_nemo, map_location="cpu")
    assert torch.equal(model.encoder.encoder[0].mconv[0].conv.weight, base.encoder.encoder[0].mconv[0].conv.weight)
    assert not torch.equal(model.encoder.encoder[3].mconv[0].conv.weight, base.encoder.encoder[3].mconv[0].conv.weight)


def test_evaluate_script_with_baseline_writes_the_forgetting_table(tuned, base_nemo, en_manifest, en2_manifest):
    work, path = tuned
    out = str(work / "eval.json")
    proc = run(os.path.join(ROOT, "examples", "evaluate_ctc.py"), f"model_path={path}", f"baseline={base_nemo}",
               f"manifests=[{en_manifest},{en2_manifest}]", f"output={out}", cwd=str(work))
    result = json.load(open(out))
    assert set(result) == {"tuned", "base", "comparison"}
    for manifest, n in ((en_manifest, 8), (en2_manifest, 4)):
        tuned_r, row = result["tuned"][manifest], result["comparison"][manifest]
        assert tuned_r["utterances"] == n and 0 <= tuned_r["cer"] and 0 <= tuned_r["wer"]
        assert row["tuned_wer"] == tuned_r["wer"] and row["base_wer"] == result["base"][manifest]["wer"]
    assert "rel. change" in open(str(work / "eval.md")).read() and "rel. change" in proc.stdout


def test_transcribe_module_writes_predictions_per_line(tuned, en_manifest):
    work, path = tuned
    out = str(work / "pred.json")
    proc = run("-m", "nemo_tl.transcribe", f"model_path={path}", f"dataset_manifest={en_manifest}",
               f"output_filename={out}", "calculate_wer=true", cwd=str(work))
    lines = [json.loads(x) for x in open(out)]
    refs = [json.loads(x) for x in open(en_manifest)]
    assert len(lines) == len(refs) and all("pred_text" in x for x in lines)
    assert [x["text"] for x in lines] == [x["text"] for x in refs]  # original order kept
    assert "WER:" in proc.stdout


def test_introspection_reports_no_change_in_frozen_blocks(tmp_path, base_nemo, en_manifest):
    model = TransferCTCModel.from_base(base_nemo, labels=EN_LABELS, freeze_encoder_blocks=2)
    fit(model, en_manifest, steps=2)
    tuned_path = str(tmp_path / "tuned.nemo")
    model.save_to(tuned_path)
    out = str(tmp_path / "introspect")
    assert introspect.main([base_nemo, tuned_path, "--out", out]) == 0
    rows = {r["layer"]: r for r in json.load(open(os.path.join(out, "layers.json")))}
    assert rows["encoder.encoder.0.mconv.0.conv.weight"]["max_abs_change"] == 0.0
    assert rows["encoder.encoder.4.mconv.0.conv.weight"]["max_abs_change"] > 0.0
    assert rows["decoder.decoder_layers.0.weight"]["relative_change"] > 0.0
    for png in ("weights.png", "weight_changes.png"):
        assert open(os.path.join(out, png), "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_evaluate_script_writes_strict_json_when_the_base_is_perfect(tmp_path, base_nemo, en_manifest):
    """A base at 0% WER has no relative change: null in the JSON, "n/a" in the tables; restores stay quiet."""
    base = ASRModel.restore_from(base_nemo, map_location="cpu").eval()
    audio, _ = read_references(en_manifest)
    hyps = [h.text for h in base.transcribe(audio, batch_size=4, verbose=False)]
    assert all(hyps)
    entries = [{**json.loads(line), "text": hyp} for line, hyp in zip(open(en_manifest), hyps)]
    manifest = write_manifest(str(tmp_path / "perfect.json"), entries)  # what the base says: 0% WER
    out = str(tmp_path / "eval.json")
    proc = run(os.path.join(ROOT, "examples", "evaluate_ctc.py"), f"model_path={base_nemo}", f"baseline={base_nemo}",
               f"manifests=[{manifest}]", f"output={out}", cwd=str(tmp_path))
    row = strict_json(out)["comparison"][manifest]
    assert row["base_wer"] == 0.0 and row["tuned_wer"] == 0.0 and row["relative_change"] is None
    assert "| n/a |" in open(str(tmp_path / "eval.md")).read() and "| n/a |" in proc.stdout
    assert "If you intend to do training" not in proc.stdout + proc.stderr  # no dataset config, label by label


def test_introspection_compares_the_decoder_on_the_labels_both_models_hold(tmp_path, base_nemo, de_manifest,
                                                                        monkeypatch):
    model = TransferCTCModel.from_base(base_nemo, labels=DE_LABELS)  # keep_shared: 27 labels + blank copied
    fit(model, de_manifest, steps=1)
    tuned_path = str(tmp_path / "de.nemo")
    model.save_to(tuned_path)
    figures = []
    save = Figure.savefig

    def recording_savefig(fig, *args, **kwargs):
        figures.append((fig.get_suptitle(), {ax.get_xlabel() for ax in fig.axes if ax.axison}))
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording_savefig)
    out = str(tmp_path / "introspect")
    assert introspect.main([base_nemo, tuned_path, "--out", out]) == 0

    row = {r["layer"]: r for r in json.load(open(os.path.join(out, "layers.json")))}["decoder.decoder_layers.0.weight"]
    assert row["shape"] == [32, 128, 1] and row["compared_on"] == "27 shared labels + blank (28 of 32 rows)"
    base = ASRModel.restore_from(base_nemo, map_location="cpu")
    base_rows, tuned_rows = shared_label_rows(EN_LABELS, DE_LABELS)  # "ä" is row 27 in German, "'" row 27 in English
    w_base, w_tuned = base.decoder.decoder_layers[0].weight, model.decoder.decoder_layers[0].weight
    expected = (w_tuned[tuned_rows] - w_base[base_rows]).abs().max().item()
    assert row["max_abs_change"] == pytest.approx(expected) and 0 < expected < 0.5
    assert "decoder.decoder_layers.0.weight" in open(os.path.join(out, "layers.md")).read()
    (w_title, w_axes), (d_title, d_axes) = figures
    assert base_nemo in w_title and tuned_path in w_title and base_nemo in d_title and tuned_path in d_title
    assert w_axes == {"log10 |w|  (0 at -12)"} and d_axes == {"log10 |Δw|  (0 at -12)"}


def test_introspection_names_the_layers_it_cannot_compare_and_why():
    def model(labels: list[str], inputs: int, extra: bool) -> torch.nn.Module:
        m = torch.nn.Module()
        m.encoder = torch.nn.Linear(inputs, 3)
        m.decoder = torch.nn.Linear(3, len(labels) + 1)
        m.decoder.vocabulary = labels
        if extra:
            m.adapter = torch.nn.Linear(3, 3)
        return m

    base, tuned = model(["a", "b"], 4, False), model(["b", "c", "a"], 5, True)
    pairs, left_out = introspect.aligned_weights(base, tuned)
    w_base, w_tuned, compared_on = pairs["decoder.weight"]
    assert torch.equal(w_base, base.decoder.weight[[1, 0, 2]]) and torch.equal(w_tuned, tuned.decoder.weight[[0, 2, 3]])
    assert compared_on == "2 shared labels + blank (3 of 4 rows)"
    assert {r["layer"]: r["reason"] for r in left_out} == {
        "encoder.weight": "shape 3x5 against the base's 3x4, and no label mapping applies",
        "adapter.weight": "not in the base model",
    }
    md = introspect.markdown(introspect.weight_changes(base, tuned), left_out)
    assert "- encoder.weight: shape 3x5 against the base's 3x4" in md and "- adapter.weight: not in the base" in md


def test_unwritable_save_to_stops_the_script_before_training(tmp_path, base_nemo, en_manifest):
    """A save_to in a directory that cannot be written is an InputError naming save_to before any step runs."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)  # no write bit: refused even for root, as NeMo's own save would be for a user
    try:
        proc = subprocess.run(
            [sys.executable, os.path.join(ROOT, "examples", "finetune_ctc.py"),
             f"model.transfer.base_model={base_nemo}", f"model.train_ds.manifest_filepath={en_manifest}",
             f"model.validation_ds.manifest_filepath={en_manifest}", "trainer.max_steps=1", "trainer.accelerator=cpu",
             f"exp_manager.exp_dir={tmp_path}", f"save_to={locked}/tuned.nemo"],
            capture_output=True, text=True, cwd=str(tmp_path), env={**os.environ, "PYTHONPATH": ROOT},
        )
    finally:
        locked.chmod(0o755)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"save_to={locked}/tuned.nemo" in out and "cannot be written" in out
    assert "Fix:" in out and "Training:" not in out and "Optimizer config" not in out  # stopped before the model
    assert os.listdir(locked) == []
