"""Encoder adapters for a new language (model.transfer.adapters): what trains, what stays, the base recovered."""

from __future__ import annotations

import pytest
import torch
from nemo.collections.asr.models import (
    ASRModel,
    EncDecCTCModel,
    EncDecCTCModelBPE,
    EncDecHybridRNNTCTCBPEModel,
    EncDecRNNTBPEModel,
    EncDecRNNTModel,
)
from nemo.collections.asr.modules import ConformerEncoderAdapter, ConvASREncoderAdapter
from omegaconf import OmegaConf

from nemo_tl.models import (
    TransferCTCBPEModel,
    TransferCTCModel,
    TransferHybridRNNTCTCBPEModel,
    TransferRNNTBPEModel,
    TransferRNNTModel,
)
from nemo_tl.transfer.adapters import ADAPTER_LAYER, adapter_parameter_share
from tests.conftest import DE_LABELS, EN_LABELS, load_conf
from tests.helpers import cpu_trainer, fit, raises_input_error, snapshot
from tests.tiny_asr import DE_TEXT, EN_TEXT, build_base, fit_steps, make_tokenizer

pytestmark = pytest.mark.usefixtures("single_thread")

AUDIO = torch.randn(2, 16000, generator=torch.Generator().manual_seed(3))
LENGTHS = torch.tensor([16000, 11000])


@pytest.fixture(scope="module")
def base(base_nemo):
    return ASRModel.restore_from(base_nemo, map_location="cpu").eval()


@pytest.fixture(scope="module")
def trained(base, de_manifest):
    """A German adapter model after 4 real NovoGrad steps (unfreeze() first: the freezing must survive it)."""
    torch.manual_seed(0)
    model = TransferCTCModel.from_base(base, labels=DE_LABELS, adapters={"dim": 4},
                                       cfg={"optim": {"name": "adam", "lr": 0.05}})
    before = snapshot(model)
    model.unfreeze()
    fit(model, de_manifest, steps=4)
    return model, before


def log_probs(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_signal=AUDIO, input_signal_length=LENGTHS)[0]


def is_adapter(key: str) -> bool:
    return f".{ADAPTER_LAYER}." in key


def test_quartznet_encoder_becomes_nemo_adapter_encoder_and_costs_a_few_percent(base):
    model = TransferCTCModel.from_base(base, labels=DE_LABELS, adapters={"dim": 4})
    assert isinstance(model.encoder, ConvASREncoderAdapter)
    assert model.get_enabled_adapters() == ["target"]
    # one LinearAdapter (LayerNorm(C), C→4, 4→C) after each block of width C
    widths = [block.planes for block in model.encoder.encoder]
    assert len(widths) == 6
    share = adapter_parameter_share(model)
    assert share["adapters"] == sum(2 * c + 2 * 4 * c for c in widths)
    assert share["adapters"] / share["total"] < 0.08  # tiny model; 5x3 with dim 32: see docs
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if is_adapter(n) or n.startswith("decoder.")}
    assert share["adapters"] + share["decoder"] == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_new_decoder_starts_from_the_base_rows_and_the_base_decoder_is_kept(base):
    model = TransferCTCModel.from_base(base, labels=DE_LABELS, adapters={"dim": 4})
    w, bw = model.decoder.decoder_layers[0].weight, base.decoder.decoder_layers[0].weight
    assert torch.equal(w[DE_LABELS.index("k")], bw[EN_LABELS.index("k")])
    assert torch.count_nonzero(w[DE_LABELS.index("ß")]) == 0
    assert all(torch.equal(a, b) for a, b in zip(snapshot(model.base_decoder).values(), snapshot(base.decoder).values()))
    assert list(model.base_decoder.vocabulary) == EN_LABELS


def test_only_adapters_and_decoder_move_in_training(trained):
    model, before = trained
    after = snapshot(model)
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(is_adapter(k) for k in moved)
    assert any(k.startswith("decoder.") for k in moved)
    still = [k for k in moved if not (is_adapter(k) or k.startswith("decoder."))]
    assert still == []  # the base encoder (weights and BatchNorm statistics) and the base decoder
    assert any("running_mean" in k for k in before if k.startswith("encoder."))
    in_optimizer = {id(p) for g in model.trainer.optimizers[0].param_groups for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[i] for i in in_optimizer} == {n for n in names.values() if is_adapter(n) or n.startswith("decoder.")}


def test_base_model_outputs_are_recovered_exactly(trained, base):
    model, _ = trained
    assert not torch.equal(log_probs(model)[..., :5], log_probs(base)[..., :5])  # the adapters did something
    model.set_enabled_adapters(enabled=False)
    model.use_base_decoder(True)
    try:
        assert torch.equal(log_probs(model), log_probs(base))
        assert model.decoding.decoding.blank_id == len(EN_LABELS)
    finally:
        model.use_base_decoder(False)
        model.set_enabled_adapters(enabled=True)
    assert log_probs(model).shape[-1] == len(DE_LABELS) + 1


def test_nemo_round_trip_keeps_adapters_both_decoders_and_the_freezing(trained, base, tmp_path):
    model, _ = trained
    path = str(tmp_path / "de_adapters.nemo")
    model.use_base_decoder(True)  # saving writes the target decoder as `decoder` all the same
    model.save_to(path)
    assert model.base_decoder_selected
    model.use_base_decoder(False)
    restored = ASRModel.restore_from(path, map_location="cpu")
    assert isinstance(restored, TransferCTCModel) and isinstance(restored.encoder, ConvASREncoderAdapter)
    assert restored.get_enabled_adapters() == ["target"]
    assert torch.equal(log_probs(restored), log_probs(model))
    trainable = {n for n, p in restored.named_parameters() if p.requires_grad}
    assert trainable and all(is_adapter(n) or n.startswith("decoder.") for n in trainable)
    restored.set_enabled_adapters(enabled=False)
    restored.use_base_decoder(True)
    assert torch.equal(log_probs(restored), log_probs(base))


def tiny_conformer_base() -> EncDecCTCModel:
    cfg = load_conf("quartznet_tiny")
    cfg.encoder = OmegaConf.create({
        "_target_": "nemo.collections.asr.modules.ConformerEncoder", "feat_in": 40, "n_layers": 2, "d_model": 32,
        "n_heads": 2, "subsampling": "striding", "subsampling_factor": 4, "subsampling_conv_channels": 8,
        "ff_expansion_factor": 2, "conv_kernel_size": 9, "dropout": 0.1, "dropout_att": 0.1,
    })
    cfg.decoder.feat_in = 32
    torch.manual_seed(0)
    model = EncDecCTCModel(cfg=cfg)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_conformer_encoder_gets_nemo_conformer_adapters_and_recovers_the_base(de_manifest):
    base = tiny_conformer_base()
    model = TransferCTCModel.from_base(base, labels=DE_LABELS, adapters={"dim": 4},
                                       cfg={"optim": {"name": "adam", "lr": 0.05}})
    assert isinstance(model.encoder, ConformerEncoderAdapter)
    fit(model, de_manifest, steps=2)
    model.set_enabled_adapters(enabled=False)
    model.use_base_decoder(True)
    assert torch.equal(log_probs(model), log_probs(base))


# ---------------------------------------------------------------- bad input
def test_encoder_without_nemo_adapter_support_is_refused(base):
    cfg = load_conf("quartznet_tiny")
    cfg.encoder = OmegaConf.create({"_target_": "nemo.collections.asr.modules.RNNEncoder", "feat_in": 40,
                                    "n_layers": 1, "d_model": 16, "proj_size": 16, "subsampling_factor": 4})
    cfg.decoder.feat_in = 16
    rnn_base = EncDecCTCModel(cfg=cfg)
    raises_input_error(lambda: TransferCTCModel.from_base(rnn_base, labels=DE_LABELS, adapters={"dim": 4}),
                       r"model\.transfer\.adapters", "RNNEncoder", "ConvASREncoder", "remove model.transfer.adapters")


@pytest.mark.parametrize("adapters, key", [
    ({}, r"adapters\.dim"), ({"dim": 0}, r"adapters\.dim"), ({"dim": 4, "bogus": 1}, "bogus"),
    ({"dim": 4, "dropout": 1.5}, r"adapters\.dropout"), ({"dim": 4, "activation": "nope"}, r"adapters\.activation"),
])
def test_bad_adapter_sections_name_the_key(base, adapters, key):
    raises_input_error(lambda: TransferCTCModel.from_base(base, labels=DE_LABELS, adapters=adapters), key)


def test_adapters_do_not_combine_with_block_freezing(base):
    raises_input_error(
        lambda: TransferCTCModel.from_base(base, labels=DE_LABELS, adapters={"dim": 4}, freeze_encoder_blocks=2),
        r"model\.transfer\.freeze_encoder_blocks", "already freeze",
    )


def test_base_decoder_needs_adapters(base):
    model = TransferCTCModel.from_base(base, labels=DE_LABELS)
    raises_input_error(lambda: model.use_base_decoder(True), "no base decoder", r"adapters: \{dim")


def test_adapters_need_a_base_model(tiny_cfg):
    cfg = OmegaConf.merge(tiny_cfg, {"transfer": {"adapters": {"dim": 4}}})
    raises_input_error(lambda: TransferCTCModel(cfg=cfg), r"model\.transfer\.adapters", "no base model",
                       "base_model")


def test_transfer_classes_without_adapter_support_are_refused(base):
    from nemo_tl.transfer.adapters import AdapterConfig, adapter_encoder_config

    cfg = OmegaConf.create(OmegaConf.to_container(base.cfg, resolve=True))
    raises_input_error(lambda: adapter_encoder_config(cfg, base, AdapterConfig(dim=4), model=EncDecCTCModel),
                       "EncDecCTCModel does not support adapters", "hybrid", "TransferRNNTBPEModel")


# ---------------------------------------------------------------- every CTC and RNN-T class, chars and subwords
@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    return make_tokenizer(str(root / "en"), EN_TEXT, 40), make_tokenizer(str(root / "de"), DE_TEXT, 40)


CLASSES = {  # transfer class: (NeMo base class, target vocabulary)
    "ctc_bpe": (TransferCTCBPEModel, EncDecCTCModelBPE),
    "rnnt": (TransferRNNTModel, EncDecRNNTModel),
    "rnnt_bpe": (TransferRNNTBPEModel, EncDecRNNTBPEModel),
    "tdt_bpe": (TransferRNNTBPEModel, EncDecRNNTBPEModel),
}


def head_outputs(model) -> dict[str, object]:
    """Eval-mode outputs on AUDIO: CTC log-probs, or the RNN-T joint on a fixed token prefix; and the greedy text."""
    model.eval()
    with torch.no_grad():
        first, lengths = model(input_signal=AUDIO, input_signal_length=LENGTHS)[:2]
        if not hasattr(model, "joint"):
            hyps = model.decoding.ctc_decoder_predictions_tensor(first, lengths)
            return {"logits": first, "text": [h.text for h in hyps]}
        targets = torch.tensor([[1, 2, 3], [4, 5, 0]])
        pred = model.decoder(targets=targets, target_length=torch.tensor([3, 2]))[0]
        joint = model.joint(encoder_outputs=first, decoder_outputs=pred)
        hyps = model.decoding.rnnt_decoder_predictions_tensor(encoder_output=first, encoded_lengths=lengths)
        return {"logits": joint, "encoded": first, "text": [h.text for h in hyps]}


def assert_same_outputs(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


@pytest.mark.parametrize("kind", list(CLASSES))
def test_every_ctc_and_rnnt_class_trains_adapters_and_recovers_the_base_from_its_nemo(
        kind, tokenizers, de_manifest, tmp_path):
    cls, nemo_class = CLASSES[kind]
    subword = kind.endswith("bpe")
    vocab = {"tokenizer_dir": tokenizers[0]} if subword else {"labels": EN_LABELS}
    base_path = build_base(nemo_class, str(tmp_path / "base.nemo"), tdt=kind == "tdt_bpe", **vocab)
    base = ASRModel.restore_from(base_path, map_location="cpu").eval()
    target = {"tokenizer_dir": tokenizers[1]} if subword else {"labels": DE_LABELS}
    model = cls.from_base(base_path, adapters={"dim": 4}, cfg={"optim": {"name": "adam", "lr": 0.05}}, **target)
    assert isinstance(model.encoder, ConformerEncoderAdapter)
    heads = ("decoder",) if kind.startswith("ctc") else ("decoder", "joint")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if is_adapter(n) or n.split(".")[0] in heads}
    share = adapter_parameter_share(model)
    assert share["adapters"] + share["decoder"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    if kind != "tdt_bpe":  # NeMo's TDT loss has no CPU implementation: the TDT model is saved untrained
        before = snapshot(model)
        model.unfreeze()
        fit_steps(model, de_manifest, steps=2)
        moved = {k for k, v in snapshot(model).items() if not torch.equal(v, before[k])}
        assert any(is_adapter(k) for k in moved) and all(is_adapter(k) or k.split(".")[0] in heads for k in moved)

    path = str(tmp_path / "de_adapters.nemo")
    model.save_to(path)
    restored = ASRModel.restore_from(path, map_location="cpu")
    assert type(restored) is cls and restored.get_enabled_adapters() == ["target"]
    target_outputs = head_outputs(restored)
    assert_same_outputs(target_outputs, head_outputs(model))
    base_outputs = head_outputs(base)
    assert not torch.equal(target_outputs["logits"][..., :3], base_outputs["logits"][..., :3])
    restored.set_enabled_adapters(enabled=False)
    restored.use_base_decoder(True)
    assert_same_outputs(head_outputs(restored), base_outputs)  # the base's logits and its decoded text, exactly
    if subword:
        assert restored.tokenizer.vocab == base.tokenizer.vocab  # the base tokenizer, from the .nemo
    restored.use_base_decoder(False)
    restored.set_enabled_adapters(enabled=True)
    assert_same_outputs(head_outputs(restored), target_outputs)


def test_a_subword_base_without_a_sentencepiece_tokenizer_is_refused():
    from types import SimpleNamespace

    from nemo_tl.transfer.adapters import AdapterConfig, adapter_encoder_config

    wordpiece_base = SimpleNamespace(tokenizer=object())  # what the check reads of a WordPiece (wpe) base
    raises_input_error(
        lambda: adapter_encoder_config(OmegaConf.create({}), wordpiece_base, AdapterConfig(dim=4),
                                       model=TransferRNNTBPEModel),
        r"model\.transfer\.adapters", "SentencePiece", "remove model.transfer.adapters",
    )


def test_hybrid_models_refuse_adapters_with_the_classes_that_take_them(tokenizers, tmp_path):
    base_path = build_base(EncDecHybridRNNTCTCBPEModel, str(tmp_path / "hybrid.nemo"), tokenizer_dir=tokenizers[0])
    raises_input_error(
        lambda: TransferHybridRNNTCTCBPEModel.from_base(base_path, tokenizer_dir=tokenizers[1], adapters={"dim": 4}),
        r"model\.transfer\.adapters", "TransferHybridRNNTCTCBPEModel does not support adapters", "TransferRNNTBPEModel",
    )



def test_killed_mid_epoch_and_resumed_adapter_run_equals_the_uninterrupted_run(base_nemo, de_manifest, en_manifest,
                                                                                tmp_path):
    from tests.test_resume import Killed, SaveAndKill

    def model(seed: int):
        torch.manual_seed(seed)
        train_ds = {"manifest_filepath": [de_manifest, en_manifest], "sample_rate": 16000, "labels": DE_LABELS,
                    "batch_size": 3, "shuffle": True, "num_workers": 0,
                    "mixing": {"weights": [0.7, 0.3], "num_batches": 2, "seed": 5}}
        return TransferCTCModel.from_base(base_nemo, labels=DE_LABELS, adapters={"dim": 4},
                                          cfg={"train_ds": train_ds, "optim": {"name": "adam", "lr": 0.05}})

    straight, killed = model(0), model(0)
    killed.load_state_dict(straight.state_dict())  # the same start (a first data set-up draws the RNG differently)
    torch.manual_seed(7)
    cpu_trainer(5).fit(straight)
    ckpt = str(tmp_path / "step3.ckpt")
    torch.manual_seed(7)
    with pytest.raises(Killed):
        cpu_trainer(5, callbacks=[SaveAndKill(3, ckpt)]).fit(killed)
    resumed = model(123)
    torch.manual_seed(999)
    cpu_trainer(5).fit(resumed, ckpt_path=ckpt)
    final, ref = snapshot(resumed), snapshot(straight)
    assert final.keys() == ref.keys()
    for name, value in ref.items():
        torch.testing.assert_close(final[name], value, rtol=0, atol=1e-6, msg=name)
