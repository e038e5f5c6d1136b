"""The CTC example scripts and command-line tools, run as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from nemo.collections.asr.models import ASRModel

from nemo_tl.data.synthetic import make_tone_manifest
from nemo_tl.models import TransferCTCModel
from nemo_tl.transfer import introspect
from tests.conftest import EN_LABELS, ROOT
from tests.helpers import fit


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
        "exp_manager.create_tensorboard_logger=false", f"+save_to={out}",
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
