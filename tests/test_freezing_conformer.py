"""Freezing the lowest blocks of a Conformer/FastConformer encoder: [pre_encode, *layers]."""

from __future__ import annotations

import pytest
import torch
from helpers import raises_input_error, snapshot
from nemo.collections.asr.modules import ConformerEncoder

from nemo_tl.transfer import freezing
from nemo_tl.transfer.freezing import encoder_blocks, freeze_encoder_blocks, frozen_block_count, frozen_parameters

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_fastconformer(untie_biases: bool = False, n_layers: int = 2) -> ConformerEncoder:
    """A 2-layer FastConformer (dw_striding x8, BatchNorm in the convolution modules)."""
    torch.manual_seed(0)
    enc = ConformerEncoder(
        feat_in=16, n_layers=n_layers, d_model=32, n_heads=2, subsampling="dw_striding", subsampling_factor=8,
        subsampling_conv_channels=8, ff_expansion_factor=2, conv_kernel_size=9, untie_biases=untie_biases,
        dropout=0.1, dropout_att=0.1, dropout_pre_encoder=0.1, dropout_emb=0.0,
    )
    for m in enc.modules():  # statistics a test can see move
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    return enc


def train_steps(enc: ConformerEncoder, blocks: list[torch.nn.Module], steps: int = 3) -> None:
    """Real AdamW steps over the parameters a model would hand its optimizer (frozen ones filtered out)."""
    frozen = {id(p) for p in frozen_parameters(blocks)}
    params = [p for p in enc.parameters() if id(p) not in frozen]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=1e-3)
    enc.train()
    for _ in range(steps):
        x = torch.randn(2, 16, 64)
        out, _ = enc(audio_signal=x, length=torch.tensor([64, 48]))
        loss = (out**2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not any(id(p) in frozen for g in opt.param_groups for p in g["params"])


def moved(before: dict, module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in snapshot(module).items())


def test_blocks_are_pre_encode_then_layers():
    enc = tiny_fastconformer()
    assert encoder_blocks(enc) == [enc.pre_encode, enc.layers[0], enc.layers[1]]


@pytest.mark.parametrize("k", [1, 2])
def test_frozen_blocks_do_not_move_and_get_no_gradient(k):
    enc = tiny_fastconformer(untie_biases=True)  # the tied case is the next test
    blocks = encoder_blocks(enc)
    before = [snapshot(b) for b in blocks]
    frozen = freeze_encoder_blocks(enc, k)
    assert frozen == blocks[:k] and frozen_block_count(enc) == k
    train_steps(enc, frozen)
    for i, block in enumerate(blocks):
        # weights and BatchNorm running statistics (both in the snapshot)
        assert moved(before[i], block) == (i >= k), f"block {i}"
    for p in frozen_parameters(frozen):
        assert not p.requires_grad and p.grad is None


def test_tied_positional_biases_stay_trainable_unless_every_layer_is_frozen(monkeypatch):
    enc = tiny_fastconformer(untie_biases=False)
    bias_u = enc.layers[0].self_attn.pos_bias_u
    assert bias_u is enc.layers[1].self_attn.pos_bias_u  # one pair shared by all layers
    before = bias_u.detach().clone()
    logged = []
    monkeypatch.setattr(freezing.logging, "info", logged.append)
    frozen = freeze_encoder_blocks(enc, 2)  # subsampling and layer 0
    assert "pos_bias_u" in logged[0] and "every layer" in logged[0]
    assert bias_u.requires_grad and id(bias_u) not in {id(p) for p in frozen_parameters(frozen)}
    layer0 = snapshot(enc.layers[0])
    train_steps(enc, frozen)
    assert not torch.equal(bias_u, before)  # trained, through both layers
    assert all(torch.equal(layer0[k], v) for k, v in snapshot(enc.layers[0]).items() if "pos_bias" not in k)

    enc = tiny_fastconformer(untie_biases=False)
    frozen = freeze_encoder_blocks(enc, 3)  # every layer frozen: the shared biases too
    assert not enc.layers[0].self_attn.pos_bias_u.requires_grad
    assert not any(p.requires_grad for p in enc.parameters())


def test_untied_positional_biases_freeze_with_their_layer():
    enc = tiny_fastconformer(untie_biases=True)
    freeze_encoder_blocks(enc, 2)
    assert not enc.layers[0].self_attn.pos_bias_u.requires_grad
    assert enc.layers[1].self_attn.pos_bias_u.requires_grad


def test_train_unfreeze_and_eval_forwards_keep_blocks_frozen():
    enc = tiny_fastconformer()
    freeze_encoder_blocks(enc, 2)
    enc.train()  # what Lightning and NeMo's transcribe() do
    for p in enc.parameters():  # what ModelPT.unfreeze() does
        p.requires_grad_(True)
    stats = snapshot(enc.layers[0])
    enc(audio_signal=torch.randn(2, 16, 64), length=torch.tensor([64, 64]))
    assert not enc.pre_encode.training and not enc.layers[0].training and enc.layers[1].training
    assert all(torch.equal(stats[k], v) for k, v in snapshot(enc.layers[0]).items())
    assert not any(p.requires_grad for p in enc.pre_encode.parameters())
    assert enc.layers[0].self_attn.pos_bias_u.requires_grad  # still shared with layer 1
    assert not enc.layers[0].self_attn.linear_q.weight.requires_grad


def test_more_blocks_than_exist_names_the_maximum_and_what_a_block_is():
    enc = tiny_fastconformer()
    raises_input_error(
        lambda: freeze_encoder_blocks(enc, 4), "maximum 3", "pre_encode", "ConvSubsampling", "freeze_encoder_blocks"
    )


def test_a_fastconformer_bpe_model_keeps_its_frozen_blocks_through_training_and_restore(tmp_path, de_manifest):
    from nemo.collections.asr.models import ASRModel, EncDecCTCModelBPE
    from tiny_asr import DE_TEXT, EN_TEXT, fit_steps, make_tokenizer, model_config

    from nemo_tl.compat import optimizer_param_groups
    from nemo_tl.models import TransferCTCBPEModel

    en, de = make_tokenizer(str(tmp_path / "en"), EN_TEXT, 40), make_tokenizer(str(tmp_path / "de"), DE_TEXT, 48)
    cfg = model_config("ctc", tokenizer_dir=en)
    cfg.encoder.untie_biases = False  # one pos_bias_u/v pair shared by both layers
    torch.manual_seed(0)
    base = EncDecCTCModelBPE(cfg=cfg)
    base.save_to(str(tmp_path / "base.nemo"))
    model = TransferCTCBPEModel.from_base(str(tmp_path / "base.nemo"), tokenizer_dir=de, freeze_encoder_blocks=2)
    for m in model.encoder.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
    enc = model.encoder
    before = {"pre_encode": snapshot(enc.pre_encode), "layer0": snapshot(enc.layers[0]), "layer1": snapshot(enc.layers[1])}
    bias_u = enc.layers[0].self_attn.pos_bias_u.detach().clone()
    fit_steps(model, de_manifest, steps=2)

    def unchanged(saved: dict, module: torch.nn.Module) -> bool:
        return all(torch.equal(saved[k], v) for k, v in snapshot(module).items() if "pos_bias" not in k)

    assert unchanged(before["pre_encode"], enc.pre_encode) and unchanged(before["layer0"], enc.layers[0])
    assert not unchanged(before["layer1"], enc.layers[1])
    assert not torch.equal(enc.layers[0].self_attn.pos_bias_u, bias_u)  # shared with layer 1: trained
    held = {id(p) for g in optimizer_param_groups(model) for p in g["params"]}
    assert id(enc.layers[0].self_attn.pos_bias_u) in held and id(enc.layers[0].self_attn.linear_q.weight) not in held

    model.save_to(str(tmp_path / "tuned.nemo"))
    restored = ASRModel.restore_from(str(tmp_path / "tuned.nemo"), map_location="cpu")
    assert restored.frozen_blocks == [restored.encoder.pre_encode, restored.encoder.layers[0]]
    assert not any(p.requires_grad for p in restored.encoder.pre_encode.parameters())
    assert restored.encoder.layers[0].self_attn.pos_bias_u.requires_grad
    assert not restored.encoder.layers[0].self_attn.linear_q.weight.requires_grad
