"""The example scripts and command-line tools with subword (BPE) Conformer models: RNN-T, TDT, hybrid and CTC."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from helpers import raises_input_error
from nemo.collections.asr.models import ASRModel, EncDecCTCModelBPE, EncDecRNNTBPEModel
from omegaconf import OmegaConf
from tiny_asr import DE_TEXT, EN_TEXT, build_base, make_tokenizer

from nemo_tl.evaluation import evaluate_manifests
from nemo_tl.models import TransferCTCBPEModel, TransferRNNTBPEModel
from nemo_tl.transfer import introspect
from nemo_tl.transfer.model import from_base
from nemo_tl.transfer.vocabulary import mapped_output_rows
from nemo_tl.utils.scripts import transfer_model

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    return make_tokenizer(str(root / "en"), EN_TEXT, 40), make_tokenizer(str(root / "de"), DE_TEXT, 48)


@pytest.fixture(scope="module")
def rnnt_base(tokenizers, tmp_path_factory):
    return build_base(EncDecRNNTBPEModel, str(tmp_path_factory.mktemp("b") / "rnnt_en.nemo"), tokenizer_dir=tokenizers[0])


@pytest.fixture(scope="module")
def ctc_base(tokenizers, tmp_path_factory):
    return build_base(EncDecCTCModelBPE, str(tmp_path_factory.mktemp("b") / "ctc_en.nemo"), tokenizer_dir=tokenizers[0])


def _load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_finetune_rnnt_script_trains_and_saves_a_restorable_model(rnnt_base, tokenizers, de_manifest, tmp_path):
    out = str(tmp_path / "tuned.nemo")
    env = {**os.environ, "PYTHONPATH": ROOT, "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "finetune_rnnt.py"),
         f"model.transfer.base_model={rnnt_base}", f"model.tokenizer.dir={tokenizers[1]}",
         "model.transfer.freeze_encoder_blocks=2",
         f"model.train_ds.manifest_filepath={de_manifest}", f"model.validation_ds.manifest_filepath={de_manifest}",
         "model.train_ds.batch_size=4", "model.validation_ds.batch_size=4", "model.train_ds.num_workers=0",
         "model.validation_ds.num_workers=0", "model.train_ds.pin_memory=false", "model.validation_ds.pin_memory=false",
         "model.spec_augment=null", "trainer.max_steps=2", "trainer.max_epochs=1", "trainer.accelerator=cpu",
         "trainer.devices=1", "trainer.precision=32", "+trainer.enable_progress_bar=false",
         "+trainer.limit_val_batches=1", f"exp_manager.exp_dir={tmp_path}",
         "exp_manager.create_checkpoint_callback=false", "exp_manager.create_tensorboard_logger=false", f"save_to={out}"],
        capture_output=True, text=True, cwd=str(tmp_path), env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "final greedy WER and CER per validation set" in proc.stdout
    model = ASRModel.restore_from(out, map_location="cpu")
    assert type(model) is TransferRNNTBPEModel and len(model.frozen_blocks) == 2
    assert model.frozen_blocks[0] is model.encoder.pre_encode


def test_finetune_scripts_refuse_a_base_of_the_other_kind(rnnt_base, ctc_base, tokenizers):
    cfg = OmegaConf.create({"tokenizer": {"dir": tokenizers[1], "type": "bpe"}, "transfer": {"base_model": rnnt_base}})
    raises_input_error(lambda: transfer_model(cfg, None, heads="ctc"), "EncDecRNNTBPEModel", "finetune_rnnt.py")
    cfg.transfer.base_model = ctc_base
    raises_input_error(lambda: transfer_model(cfg, None, heads="rnnt"), "EncDecCTCModelBPE", "finetune_ctc.py")
    assert type(transfer_model(cfg, None, heads="ctc")) is TransferCTCBPEModel  # finetune_ctc.py takes a BPE base


def test_evaluate_transcribe_and_introspect_an_rnnt_bpe_model(rnnt_base, tokenizers, de_manifest, tmp_path):
    # NeMo's RNN-T BPE transcribe() reads cfg.validation_ds (use_start_end_token)
    dev = {"manifest_filepath": de_manifest, "sample_rate": 16000, "batch_size": 4, "shuffle": False}
    tuned = from_base(rnnt_base, tokenizer_dir=tokenizers[1], cfg={"validation_ds": dev})
    with torch.no_grad():
        for p in tuned.encoder.layers[1].parameters():
            p.add_(0.01)
    tuned_path = str(tmp_path / "tuned.nemo")
    tuned.save_to(tuned_path)

    # examples/evaluate_ctc.py restores any ASR model and decodes it greedily
    model = _load_example("evaluate_ctc")._restore(tuned_path)
    result = evaluate_manifests(model, [de_manifest], batch_size=4)[de_manifest]
    assert result["utterances"] == 8 and result["wer"] >= 0

    from nemo_tl.transcribe import TranscriptionConfig, transcribe

    output = transcribe(TranscriptionConfig(model_path=tuned_path, dataset_manifest=de_manifest,
                                            output_filename=str(tmp_path / "out.json"), batch_size=4))
    with open(output, encoding="utf-8") as f:
        assert len([json.loads(line) for line in f]) == 8

    out = str(tmp_path / "introspect")
    assert introspect.main([rnnt_base, tuned_path, "--out", out]) == 0
    rows = {r["layer"]: r for r in json.load(open(os.path.join(out, "layers.json")))}
    base = ASRModel.restore_from(rnnt_base, map_location="cpu")
    maps = {name: (src, dst) for name, src, dst in mapped_output_rows(base, tuned)}
    joint_out = next(n for n in maps if n.startswith("joint.") and n.endswith("weight"))
    for name in ("decoder.prediction.embed.weight", joint_out):
        src, dst = maps[name]
        assert rows[name]["compared_on"].startswith(f"{len(dst) - 1} shared tokens + blank")
        assert rows[name]["max_abs_change"] == 0.0  # keep_shared copied those rows
    assert rows["encoder.layers.0.self_attn.linear_q.weight"]["max_abs_change"] == 0.0
    assert rows["encoder.layers.1.self_attn.linear_q.weight"]["max_abs_change"] > 0.0


@pytest.mark.parametrize("name", ["fastconformer_ctc_finetune", "fastconformer_rnnt_finetune"])
def test_fastconformer_configs_hold_nemos_recipe_and_valid_transfer_keys(name):
    from nemo_tl.transfer.config import TransferConfig
    from nemo_tl.utils.configs import config_file

    cfg = OmegaConf.load(config_file(name))
    assert cfg.save_to is None and {"model", "trainer", "exp_manager"} <= set(cfg)
    optim = cfg.model.optim
    assert optim.name == "adamw" and list(optim.betas) == [0.9, 0.98] and optim.weight_decay == 1e-3
    assert optim.sched.name == "CosineAnnealing" and optim.sched.warmup_ratio > 0
    assert cfg.model.tokenizer.type == "bpe" and OmegaConf.is_missing(cfg.model.tokenizer, "dir")
    transfer = OmegaConf.to_container(cfg.model.transfer)
    transfer["base_model"] = "base.nemo"
    assert TransferConfig.from_section(transfer).vocabulary == "keep_shared"
