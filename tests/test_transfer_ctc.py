"""TransferCTCModel: vocabulary transfer, freezing, save/restore and bad input (issue 2)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from nemo.collections.asr.models import ASRModel, EncDecCTCModel
from omegaconf import OmegaConf

from nemo_tl.compat import optimizer_param_groups
from nemo_tl.errors import InputError
from nemo_tl.models import TransferCTCModel
from nemo_tl.transfer.recipe import SCRATCH_LR, finetune_optim
from tests.conftest import CONF, DE_LABELS, EN_LABELS, ROOT, load_conf
from tests.helpers import fit, snapshot


@pytest.fixture(scope="module")
def base(base_nemo):
    return ASRModel.restore_from(base_nemo, map_location="cpu")


def rows(model):
    conv = model.decoder.decoder_layers[0]
    return conv.weight.detach()[:, :, 0], conv.bias.detach()


# ---------------------------------------------------------------- vocabulary
def test_keep_shared_copies_shared_rows_and_zeroes_new_ones(base, base_nemo):
    model = TransferCTCModel.from_base(base_nemo, labels=DE_LABELS)
    (w, b), (bw, bb) = rows(model), rows(base)
    for i, label in enumerate(DE_LABELS):
        if label in EN_LABELS:
            j = EN_LABELS.index(label)
            assert torch.equal(w[i], bw[j]) and torch.equal(b[i], bb[j]), label
        else:
            assert torch.count_nonzero(w[i]) == 0 and b[i] == 0, label
    assert torch.equal(w[-1], bw[-1]) and torch.equal(b[-1], bb[-1])  # blank stays blank
    assert w.shape[0] == len(DE_LABELS) + 1
    assert torch.equal(model.encoder.encoder[0].mconv[0].conv.weight, base.encoder.encoder[0].mconv[0].conv.weight)


def test_keep_shared_with_reordered_labels_follows_the_labels(base):
    labels = list(reversed(EN_LABELS))
    model = TransferCTCModel.from_base(base, labels=labels)
    (w, _), (bw, _) = rows(model), rows(base)
    for i, label in enumerate(labels):
        assert torch.equal(w[i], bw[EN_LABELS.index(label)])


def test_uncertainty_decoder_keeps_fresh_logvar_rows_for_new_labels(base):
    cfg = {"decoder": {"_target_": "nemo_tl.modules.UncertaintyConvASRDecoder"}}
    model = TransferCTCModel.from_base(base, labels=DE_LABELS, cfg=cfg)
    w, _ = rows(model)
    logvar_bias = model.decoder.logvar_layers[0].bias.detach()
    new = [i for i, label in enumerate(DE_LABELS) if label not in EN_LABELS]
    assert all(torch.count_nonzero(w[i]) == 0 for i in new)  # logits of new labels start at zero
    assert all(logvar_bias[i] != 0 for i in new)  # log σ² keeps its init (zero would mean unit noise)


def test_random_new_label_init_keeps_fresh_rows(base):
    model = TransferCTCModel.from_base(base, labels=DE_LABELS, new_label_init="random")
    w, _ = rows(model)
    for i, label in enumerate(DE_LABELS):
        if label not in EN_LABELS:
            assert torch.count_nonzero(w[i]) > 0


def test_same_reuses_the_whole_decoder(base):
    model = TransferCTCModel.from_base(base, labels=EN_LABELS, vocabulary="same")
    assert all(torch.equal(a, c) for a, c in zip(rows(model), rows(base)))


def test_reinit_builds_a_fresh_decoder_and_keeps_the_encoder(base):
    torch.manual_seed(1)  # the base was built from seed 0
    model = TransferCTCModel.from_base(base, labels=EN_LABELS, vocabulary="reinit")
    assert not torch.equal(rows(model)[0], rows(base)[0])
    for (k, v), (_, bv) in zip(model.encoder.state_dict().items(), base.encoder.state_dict().items()):
        assert torch.equal(v, bv), k


def test_reinitialize_gives_fresh_weights_with_the_base_architecture(base):
    torch.manual_seed(1)
    model = TransferCTCModel.from_base(base, labels=EN_LABELS, reinitialize=True)
    assert OmegaConf.to_container(model.cfg.encoder) == OmegaConf.to_container(base.cfg.encoder)
    w, bw = model.encoder.encoder[1].mconv[0].conv.weight, base.encoder.encoder[1].mconv[0].conv.weight
    assert w.shape == bw.shape and not torch.equal(w, bw)


def test_yaml_config_path_takes_preprocessor_and_encoder_from_base(base_nemo, base):
    cfg = OmegaConf.load(os.path.join(ROOT, "conf", "quartznet_finetune.yaml")).model
    cfg.transfer.base_model = base_nemo
    cfg.labels = DE_LABELS
    cfg.train_ds.manifest_filepath = None
    cfg.validation_ds.manifest_filepath = None
    model = TransferCTCModel(cfg=cfg)
    assert OmegaConf.to_container(model.cfg.encoder) == OmegaConf.to_container(base.cfg.encoder)
    assert model.cfg.optim.betas == [0.95, 0.25] and model.cfg.optim.sched.warmup_ratio == 0.12
    assert list(model.decoder.vocabulary) == DE_LABELS


def test_the_finetune_yaml_states_the_recipe_from_base_uses(base):
    """One source for the recipe: conf/quartznet_finetune.yaml's optim is finetune_optim(), from_base's default."""
    yaml = OmegaConf.load(os.path.join(CONF, "quartznet_finetune.yaml")).model.optim
    assert OmegaConf.to_container(yaml) == finetune_optim()
    assert finetune_optim()["lr"] == pytest.approx(SCRATCH_LR / 10)  # 10x below scratch
    assert OmegaConf.to_container(TransferCTCModel.from_base(base, labels=EN_LABELS).cfg.optim) == finetune_optim()


def test_a_base_model_object_is_passed_to_the_constructor(base, monkeypatch):
    """``base_model=`` (what from_base uses): its weights, nothing loaded, recorded as in-memory in the cfg."""
    import nemo_tl.models.transfer_ctc as transfer_ctc

    cfg = OmegaConf.load(os.path.join(CONF, "quartznet_finetune.yaml")).model
    cfg.transfer.base_model = None
    cfg.labels = EN_LABELS
    cfg.train_ds.manifest_filepath = cfg.validation_ds.manifest_filepath = None
    monkeypatch.setattr(ASRModel, "restore_from", lambda *a, **k: pytest.fail("the base was loaded from disk"))
    model = TransferCTCModel(cfg=cfg, base_model=base)
    assert model.cfg.transfer.base_model == "<in-memory EncDecCTCModel>"
    assert torch.equal(model.encoder.encoder[1].mconv[0].conv.weight, base.encoder.encoder[1].mconv[0].conv.weight)
    assert not hasattr(transfer_ctc, "_BASE_OBJECT")  # no module-level hand-over between from_base and __init__


# ---------------------------------------------------------------- freezing
def test_frozen_blocks_do_not_move_during_training(base_nemo, de_manifest):
    model = TransferCTCModel.from_base(base_nemo, labels=DE_LABELS, freeze_encoder_blocks=2)
    blocks = model.encoder.encoder
    before = [snapshot(b) for b in blocks]
    fit(model, de_manifest, steps=3)
    for i, block in enumerate(blocks):
        after = snapshot(block)
        moved = any(not torch.equal(before[i][k], after[k]) for k in after)
        assert moved == (i >= 2), f"block {i}"
    # BatchNorm running statistics of frozen blocks stayed put too (they are part of the snapshot),
    # and no gradient was computed through them.
    for p in blocks[0].parameters():
        assert not p.requires_grad and p.grad is None
    assert all(p.requires_grad for p in blocks[2].parameters())


def test_frozen_blocks_stay_frozen_after_train_unfreeze_and_transcribe(base_nemo, de_manifest):
    import json

    model = TransferCTCModel.from_base(base_nemo, labels=DE_LABELS, freeze_encoder_blocks=3)
    model.train()
    assert [b.training for b in model.encoder.encoder][:4] == [False, False, False, True]
    with open(de_manifest) as f:
        audio = [json.loads(line)["audio_filepath"] for line in f][:2]
    model.transcribe(audio, batch_size=2, verbose=False)
    model.unfreeze()
    model.train()
    stats = snapshot(model.encoder.encoder[0])
    x = torch.randn(2, 8000)
    model(input_signal=x, input_signal_length=torch.tensor([8000, 8000]))
    assert all(torch.equal(stats[k], v) for k, v in snapshot(model.encoder.encoder[0]).items())
    assert not any(p.requires_grad for b in model.encoder.encoder[:3] for p in b.parameters())


def test_optimizer_holds_no_frozen_parameter(base_nemo):
    model = TransferCTCModel.from_base(base_nemo, labels=EN_LABELS, freeze_encoder_blocks=2)
    model.setup_optimizer_param_groups()
    held = {id(p) for g in optimizer_param_groups(model) for p in g["params"]}
    assert not any(id(p) in held for b in model.encoder.encoder[:2] for p in b.parameters())
    assert all(id(p) in held for p in model.decoder.parameters())


def test_freezing_more_blocks_than_exist_names_the_maximum(base_nemo):
    with pytest.raises(InputError, match="maximum 6"):
        TransferCTCModel.from_base(base_nemo, labels=EN_LABELS, freeze_encoder_blocks=7)
    model = TransferCTCModel.from_base(base_nemo, labels=EN_LABELS, freeze_encoder_blocks=6)
    assert not any(p.requires_grad for p in model.encoder.parameters())


# ---------------------------------------------------------------- save / restore
def test_nemo_round_trip_without_base(tmp_path, base):
    base_path = str(tmp_path / "base.nemo")
    base.save_to(base_path)
    model = TransferCTCModel.from_base(base_path, labels=DE_LABELS, freeze_encoder_blocks=2)
    tuned = str(tmp_path / "tuned.nemo")
    model.save_to(tuned)
    os.remove(base_path)  # restoring must not need the base model
    restored = ASRModel.restore_from(tuned, map_location="cpu")
    assert type(restored) is TransferCTCModel
    assert len(restored.frozen_blocks) == 2 and not restored.encoder.encoder[1].training
    model.eval(), restored.eval()
    x, n = torch.randn(2, 12000), torch.tensor([12000, 9000])
    assert torch.equal(model(input_signal=x, input_signal_length=n)[0],
                       restored(input_signal=x, input_signal_length=n)[0])


def test_lightning_checkpoint_resume_keeps_blocks_frozen(tmp_path, base_nemo, en_manifest):
    model = TransferCTCModel.from_base(base_nemo, labels=EN_LABELS, freeze_encoder_blocks=2)
    trainer = fit(model, en_manifest, steps=2)
    ckpt = str(tmp_path / "last.ckpt")
    trainer.save_checkpoint(ckpt)
    frozen_before = snapshot(model.encoder.encoder[0])
    resumed = TransferCTCModel.from_base(base_nemo, labels=EN_LABELS, freeze_encoder_blocks=2)
    fit(resumed, en_manifest, steps=4, ckpt_path=ckpt)
    assert all(torch.equal(frozen_before[k], v) for k, v in snapshot(resumed.encoder.encoder[0]).items())
    assert not any(p.requires_grad for p in resumed.encoder.encoder[1].parameters())


def test_restore_needs_import_nemo_tl_and_works_with_it(tmp_path, base):
    tuned = str(tmp_path / "tuned.nemo")
    TransferCTCModel.from_base(base, labels=EN_LABELS).save_to(tuned)
    code = (
        "import sys\n"
        "from nemo.collections.asr.models import ASRModel\n"
        "if sys.argv[2] == 'import': import nemo_tl\n"
        "m = ASRModel.restore_from(sys.argv[1])\n"
        "print('CLASS', type(m).__name__)\n"
    )
    env = {**os.environ, "PYTHONPATH": ROOT}
    without = subprocess.run([sys.executable, "-c", code, tuned, "no"], capture_output=True, text=True, env=env)
    assert without.returncode != 0 and "unsafe target" in (without.stdout + without.stderr).lower()
    with_import = subprocess.run([sys.executable, "-c", code, tuned, "import"], capture_output=True, text=True, env=env)
    assert "CLASS TransferCTCModel" in with_import.stdout, with_import.stderr[-2000:]


def test_import_registers_only_the_nemo_tl_prefix():
    from nemo.core.classes import common

    assert "nemo_tl." in common.ALLOWED_TARGET_PREFIXES
    ours = [p for p in common.ALLOWED_TARGET_PREFIXES if "nemo_tl" in p]
    assert ours == ["nemo_tl."]
    assert not any(p in ("", "nemo_tl") for p in common.ALLOWED_TARGET_PREFIXES)


# ---------------------------------------------------------------- shapes of Huang et al. Table 1
@pytest.mark.parametrize("name,expected,blocks", [("quartznet_15x5", 18.9e6, 18), ("quartznet_5x3", 4.6e6, 8)])
def test_quartznet_parameter_counts(name, expected, blocks):
    model = EncDecCTCModel(cfg=load_conf(name))
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - expected) / expected < 0.01, n
    assert len(model.encoder.encoder) == blocks


# ---------------------------------------------------------------- bad input
def test_missing_base_path(tmp_path):
    with pytest.raises(InputError, match="does not exist") as e:
        TransferCTCModel.from_base(str(tmp_path / "nope.nemo"), labels=EN_LABELS)
    assert "Fix:" in str(e.value)


def test_truncated_base_file(tmp_path, base_nemo):
    bad = tmp_path / "trunc.nemo"
    bad.write_bytes(open(base_nemo, "rb").read()[:2000])
    with pytest.raises(InputError, match="trunc.nemo"):
        TransferCTCModel.from_base(str(bad), labels=EN_LABELS)


def test_missing_labels(base):
    with pytest.raises(InputError, match="vocabulary is missing"):
        TransferCTCModel.from_base(base, labels=None)


def test_unknown_vocabulary_mode(base):
    with pytest.raises(InputError, match="keep_shared, same, reinit"):
        TransferCTCModel.from_base(base, labels=EN_LABELS, vocabulary="copy")


def test_same_with_a_different_vocabulary(base):
    with pytest.raises(InputError, match="only in the config: \\['ä', 'ö', 'ü', 'ß'\\]"):
        TransferCTCModel.from_base(base, labels=DE_LABELS, vocabulary="same")


def test_config_asking_for_another_encoder_shape(base_nemo):
    cfg = load_conf("quartznet_tiny")
    cfg.encoder.jasper[1].filters = 32
    cfg.transfer = {"base_model": base_nemo}
    with pytest.raises(InputError, match=r"jasper\[1\]\.filters: base model has 64, config asks 32"):
        TransferCTCModel(cfg=cfg)


def test_unknown_transfer_key(base_nemo):
    cfg = load_conf("quartznet_tiny")
    cfg.transfer = {"base_model": base_nemo, "freeze_blocks": 2}
    with pytest.raises(InputError, match="unknown key\\(s\\) freeze_blocks"):
        TransferCTCModel(cfg=cfg)


def test_base_of_the_wrong_kind_bpe(tmp_path):
    import sentencepiece as spm
    from nemo.collections.asr.models import EncDecCTCModelBPE

    text = tmp_path / "text.txt"
    text.write_text("\n".join(["one two three four five six seven eight nine ten"] * 20) + "\n")
    tok = tmp_path / "tok"
    tok.mkdir()
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(tok / "tokenizer"), vocab_size=24,
                                   model_type="bpe", character_coverage=1.0)
    sp = spm.SentencePieceProcessor(model_file=str(tok / "tokenizer.model"))
    (tok / "vocab.txt").write_text("\n".join(sp.id_to_piece(i) for i in range(sp.get_piece_size())) + "\n")
    cfg = load_conf("quartznet_tiny")
    cfg.pop("labels")
    cfg.tokenizer = {"dir": str(tok), "type": "bpe"}
    cfg.decoder.vocabulary = []
    cfg.decoder.num_classes = -1
    for ds in ("train_ds", "validation_ds"):
        cfg[ds].pop("labels")
    bpe = EncDecCTCModelBPE(cfg=cfg)
    with pytest.raises(InputError, match="subword \\(BPE\\)"):
        TransferCTCModel.from_base(bpe, labels=EN_LABELS)
