"""The multilingual example scripts: train_multisoftmax_rnnt.py starts from NeMo's ``init_from_nemo_model`` (one
subprocess run); reproduce_multilingual.py leaves out lines CTC cannot align and checks its saved model."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from nemo_tl.data.synthetic import make_tone_manifest
from nemo_tl.errors import InputError
from nemo_tl.models.multisoftmax_rnnt import MultiSoftmaxRNNTModel
from tests.conftest import CONF, ROOT
from tests.helpers import strict_json
from tests.test_multisoftmax_model import TEXTS
from tests.test_multisoftmax_pretrained import same

pytestmark = pytest.mark.usefixtures("single_thread")


def test_training_script_honours_init_from_nemo_model(tmp_path):
    """examples/train_multisoftmax_rnnt.py with NeMo's +init_from_nemo_model; every encoder block frozen, so the
    saved encoder must be the source's exactly."""
    size = {"model.encoder.n_layers": 1, "model.model_defaults.enc_hidden": 64, "model.model_defaults.pred_hidden": 32,
            "model.model_defaults.joint_hidden": 32}
    cfg = OmegaConf.load(os.path.join(CONF, "multisoftmax_rnnt.yaml"))
    for key, value in size.items():
        OmegaConf.update(cfg, key, value)
    source = MultiSoftmaxRNNTModel(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)).model)
    source_path, out = str(tmp_path / "source.nemo"), str(tmp_path / "out.nemo")
    source.save_to(source_path)
    train = [make_tone_manifest(str(tmp_path), TEXTS[lang][:2], name=lang, lang=lang) for lang in ("en", "hi")]
    overrides = [f"{k}={v}" for k, v in size.items()] + [
        f"model.train_ds.manifest_filepath=[{train[0]},{train[1]}]", "model.train_ds.batch_size=2",
        "model.train_ds.num_workers=0", "model.decoding.greedy.max_symbols=3", "trainer.max_steps=2",
        "trainer.accelerator=cpu", "trainer.devices=1", "exp_manager.create_checkpoint_callback=false",
        f"exp_manager.exp_dir={tmp_path / 'exp'}", f"save_to={out}",
        f"+init_from_nemo_model={{source: {{path: {source_path}, include: [encoder]}}}}",
        "+model.transfer.freeze_encoder_blocks=2",  # pre_encode and the one layer
    ]
    env = {**os.environ, "PYTHONPATH": ROOT, "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "train_multisoftmax_rnnt.py"), *overrides],
                          capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    trained = MultiSoftmaxRNNTModel.restore_from(out, map_location="cpu")
    assert same(trained.encoder, source.encoder)


def _reproduce_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("reproduce_multilingual",
                                                  os.path.join(ROOT, "examples", "reproduce_multilingual.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reproduce_leaves_out_lines_ctc_cannot_align_says_so_and_keeps_the_file(tmp_path, capsys):
    """reproduce_multilingual.py: a line spoken faster than the encoder's CTC frames is left out of training (a
    filtered copy, the count printed), the manifest given is untouched, and the pooled CTC pre-training trains on
    the rest."""
    import json

    from nemo_tl.data.manifest import read_manifest
    from nemo_tl.data.synthetic import write_manifest

    cfg = OmegaConf.load(os.path.join(CONF, "multisoftmax_rnnt.yaml")).model
    for key, value in {"encoder.n_layers": 1, "model_defaults.enc_hidden": 32, "model_defaults.pred_hidden": 16,
                       "model_defaults.joint_hidden": 16, "train_ds.batch_size": 2, "train_ds.num_workers": 0}.items():
        OmegaConf.update(cfg, key, value)
    cfg.languages = {"en": {"labels": list("abcdefh")}, "hi": {"labels": sorted(set("".join(TEXTS["hi"])))}}
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    train = [make_tone_manifest(str(tmp_path), TEXTS[lang], name=lang, lang=lang) for lang in ("en", "hi")]
    entries = read_manifest(train[0])
    entries.append({**entries[0], "text": "abcdefh" * 40})  # 280 characters on the audio of "abc"
    write_manifest(train[0], entries)
    before = open(train[0], encoding="utf-8").read()
    script = _reproduce_script()
    used = script.ctc_alignable(cfg, train, tmp_path / "out")
    assert f"{train[0]}: 1 of 5 lines left out of training" in capsys.readouterr().out
    assert open(train[0], encoding="utf-8").read() == before
    assert used[1] == train[1]  # only the manifest with the bad line is a filtered copy, kept in the output folder
    assert used[0] == str(tmp_path / "out" / "train_manifests" / "00_en.json")
    assert [json.loads(line)["text"] for line in open(used[0], encoding="utf-8")] == TEXTS["en"]
    model, seconds = script.pretrain_ctc(cfg, used, steps=1)
    assert seconds > 0 and list(model.cfg.train_ds.manifest_filepath) == used
    # Any other problem of a line stops it, as in training: here a letter outside the labels.
    entries[-1] = {**entries[0], "text": "xyz"}
    write_manifest(train[0], entries)
    with pytest.raises(InputError, match=r"en\.json:5"):
        script.ctc_alignable(cfg, train, tmp_path / "out2")


def test_reproduce_save_decodes_the_restored_model_as_the_trained_one(tmp_path):
    """reproduce_multilingual.py --save: the known / LID-free / oracle rows and the sweep come from the trained
    model, the saved .nemo restored decodes every utterance the same (both decodings written per utterance),
    and the table says so."""
    import argparse
    import json

    from tests.test_multisoftmax_model import ms_cfg

    model = MultiSoftmaxRNNTModel(ms_cfg()).eval()
    test = [make_tone_manifest(str(tmp_path), TEXTS[lang][:3], name=lang, lang=lang) for lang in ("en", "ru")]
    out = tmp_path / "out"
    out.mkdir()
    args = argparse.Namespace(save=True, eval_batch=4, sweep="inf:inf,5:0.5")
    rows, results = {}, {}
    md = _reproduce_script().evaluate_multisoftmax(model, test, args, out, rows, results)
    assert set(rows) == {"multisoftmax (known)", "multisoftmax (lid_free)", "multisoftmax (oracle)"}
    assert [(p["tau"], p["s_th"]) for p in results["sweep"]] == [(float("inf"), float("inf")), (5.0, 0.5)]
    assert results["sweep_restored"] == results["sweep"]
    assert "restored from multisoftmax.nemo: the same sweep" in md
    trained, restored = ((out / name).read_text(encoding="utf-8").splitlines()
                         for name in ("lid_free_outputs.jsonl", "lid_free_outputs_restored.jsonl"))
    assert len(trained) == 6 and trained == restored
    assert {json.loads(line)["lang"] for line in trained} == {"en", "ru"}


def test_reproduce_runs_the_default_recipe_end_to_end(tmp_path):
    """reproduce_multilingual.py with its default recipe (pooled CTC start, from_base, aux CTC) on a tiny
    synthesized corpus: every row of the table and the sweep, in results.md and strict results.json, the
    saved model decoded as the trained one."""

    out = tmp_path / "out"
    argv = ["--out", str(out), "--langs", "en,de", "--hours", "0.004", "--steps", "2", "--batch", "2",
            "--layers", "1", "--pretrain-ctc-steps", "2", "--eval-batch", "4", "--sweep", "inf:inf,5:0.5", "--save"]
    assert _reproduce_script().main(argv) == 0
    results = strict_json(out / "results.json")
    assert list(results["rows"]) == ["pooled CTC start (greedy)", "multisoftmax (known)", "multisoftmax (lid_free)",
                                     "multisoftmax (oracle)", "vanilla (LID-free)"]
    for name, row in results["rows"].items():
        assert set(row["cers"]) == {"en", "de", "avg"}, name
    assert set(results["train_seconds"]) == {"ctc_pretrain", "multisoftmax", "vanilla"}
    # the corpus is recorded, so that runs on two machines can tell whether they trained on the same audio
    assert results["corpus"]["backend"] and set(results["corpus"]["audio_sha256"]) == {
        f"{lang}_{split}" for lang in ("en", "de") for split in ("train", "dev", "test")}
    assert results["sweep_restored"] == results["sweep"] and results["sweep"][0]["tau"] is None  # null: ∞
    table = (out / "results.md").read_text(encoding="utf-8")
    assert "pooled CTC start (greedy)" in table and "the same sweep" in table
    # what it ran with: the versions and the host's kernel tell two machines' runs apart
    assert {"torch", "nemo", "kernel", "device_kind"} <= set(results["environment"])

    # the saved start is a --base: a second run starts from it without pre-training
    assert (out / "pooled_ctc.nemo").is_file()
    out2 = tmp_path / "out2"
    argv2 = ["--out", str(out2), "--corpus", str(out / "corpus"), "--langs", "en,de", "--hours", "0.004",
             "--steps", "2", "--batch", "2", "--base", str(out / "pooled_ctc.nemo"), "--architectures", "multisoftmax",
             "--eval-batch", "4", "--sweep", "inf:inf"]
    assert _reproduce_script().main(argv2) == 0
    second = strict_json(out2 / "results.json")
    assert list(second["rows"]) == ["multisoftmax (known)", "multisoftmax (lid_free)", "multisoftmax (oracle)"]
    assert set(second["train_seconds"]) == {"multisoftmax"}
    assert second["corpus"] == results["corpus"]
