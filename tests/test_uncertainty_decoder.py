"""UncertaintyConvASRDecoder: a drop-in ConvASRDecoder with a log σ² head (Kim et al. eqs. 3-5)."""

from __future__ import annotations

import pytest
import torch
from nemo.collections.asr.models import ASRModel, EncDecCTCModel
from nemo.collections.asr.modules import ConvASRDecoder

from nemo_tl.modules import UncertaintyConvASRDecoder
from nemo_tl.modules.uncertainty_decoder import corrupt_logits

VOCAB = ["a", "b", "c"]


def _pair():
    unc = UncertaintyConvASRDecoder(feat_in=6, num_classes=3, vocabulary=VOCAB)
    plain = ConvASRDecoder(feat_in=6, num_classes=3, vocabulary=VOCAB)
    missing, unexpected = plain.load_state_dict(unc.state_dict(), strict=False)
    assert not missing and unexpected == ["logvar_layers.0.weight", "logvar_layers.0.bias"]
    return unc, plain


def test_eval_output_equals_plain_decoder_with_same_weights():
    unc, plain = _pair()
    unc.eval(), plain.eval()
    x = torch.randn(2, 6, 7)
    assert torch.equal(unc(encoder_output=x), plain(encoder_output=x))
    assert unc.last_logvar.shape == (2, 7, 4)  # (B, T, V+1)
    assert torch.allclose(unc.last_logvar, unc.logvar_layers(x).transpose(1, 2))


def test_training_output_is_log_softmax_of_corrupted_logits():
    unc, plain = _pair()
    unc.train()
    x = torch.randn(2, 6, 7)
    torch.manual_seed(123)
    out = unc(encoder_output=x)
    f = plain.decoder_layers(x).transpose(1, 2).contiguous()  # randn_like follows the memory layout
    logvar = unc.logvar_layers(x).transpose(1, 2).contiguous()
    torch.manual_seed(123)
    g = corrupt_logits(f, logvar)  # g = f + σ² ε with the same ε
    assert torch.allclose(out, g.log_softmax(-1), atol=1e-5)
    # the kept logits are g up to a per-frame shift: the KD distribution softmax(g) of eq. 5
    assert torch.allclose(unc.last_logits.log_softmax(-1), g.log_softmax(-1), atol=1e-5)
    assert not torch.allclose(out, plain(encoder_output=x), atol=1e-3)


def test_noise_scale_follows_predicted_variance_and_gradient_reaches_logvar_head():
    unc, plain = _pair()
    unc.train()
    x = torch.randn(2, 6, 7)
    with torch.no_grad():
        unc.logvar_layers[0].weight.zero_()
        unc.logvar_layers[0].bias.fill_(-30.0)  # σ² ≈ 1e-13: no visible noise
    assert torch.allclose(unc(encoder_output=x), plain(encoder_output=x), atol=1e-6)
    with torch.no_grad():
        unc.logvar_layers[0].bias.fill_(0.0)
    unc(encoder_output=x).sum().backward()  # any loss of the output
    assert unc.logvar_layers[0].weight.grad.abs().sum() > 0


def test_swapped_in_by_target_and_restored_from_nemo(tiny_cfg, tmp_path):
    from nemo_tl.data.synthetic import tone_audio

    tiny_cfg.decoder._target_ = "nemo_tl.modules.UncertaintyConvASRDecoder"
    model = EncDecCTCModel(cfg=tiny_cfg)
    assert isinstance(model.decoder, UncertaintyConvASRDecoder)
    path = str(tmp_path / "unc.nemo")
    model.save_to(path)
    restored = ASRModel.restore_from(path, map_location="cpu")
    assert isinstance(restored.decoder, UncertaintyConvASRDecoder)
    audio = torch.tensor(tone_audio("two")).unsqueeze(0)
    length = torch.tensor([audio.shape[1]])
    model.eval(), restored.eval()
    with torch.no_grad():
        expected, _, _ = model(input_signal=audio, input_signal_length=length)
        expected_logvar = model.decoder.last_logvar
        got, _, _ = restored(input_signal=audio, input_signal_length=length)
    assert torch.equal(got, expected)
    assert torch.equal(restored.decoder.last_logvar, expected_logvar)


@pytest.mark.parametrize("bias", [-4.0, -1.0])
def test_logvar_bias_init(bias):
    unc = UncertaintyConvASRDecoder(feat_in=6, num_classes=3, vocabulary=VOCAB, logvar_bias_init=bias)
    assert torch.all(unc.logvar_layers[0].bias == bias)
