"""Weight averaging of a base and its fine-tuned model (nemo_tl.transfer.average)."""

from __future__ import annotations

import math

import pytest
import torch
from nemo.collections.asr.models import ASRModel, EncDecCTCModel

from nemo_tl.models import TransferCTCModel
from nemo_tl.transfer.average import average_models, main
from nemo_tl.transfer.vocabulary import shared_label_rows
from tests.conftest import DE_LABELS, EN_LABELS, load_conf
from tests.helpers import raises_input_error

pytestmark = pytest.mark.usefixtures("single_thread")

DECODER_W = "decoder.decoder_layers.0.weight"
ENCODER_W = "encoder.encoder.1.mconv.0.conv.weight"
BN_MEAN = "encoder.encoder.1.mconv.2.running_mean"
BN_COUNT = "encoder.encoder.1.mconv.2.num_batches_tracked"


@pytest.fixture(scope="module")
def base(base_nemo):
    return ASRModel.restore_from(base_nemo, map_location="cpu").eval()


@pytest.fixture(scope="module")
def tuned(base_nemo):
    """A German model from the English base with every weight and BatchNorm statistic moved (as fine-tuning does)."""
    torch.manual_seed(1)
    model = TransferCTCModel.from_base(base_nemo, labels=DE_LABELS).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.add_(0.2)
            elif name.endswith("num_batches_tracked"):
                b.fill_(7)
    return model


@pytest.fixture(scope="module")
def tuned_nemo(tuned, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tuned") / "tuned_de.nemo")
    tuned.save_to(path)
    return path


def test_weight_one_is_the_tuned_model_exactly(base, tuned):
    averaged = average_models(base, tuned, 1.0).state_dict()
    for name, t in tuned.state_dict().items():
        assert torch.equal(averaged[name], t), name


def test_weight_zero_is_the_base_on_every_shared_row_and_the_tuned_model_elsewhere(base, tuned):
    averaged = average_models(base, tuned, 0.0).state_dict()
    b, t = base.state_dict(), tuned.state_dict()
    assert torch.equal(averaged[ENCODER_W], b[ENCODER_W])
    assert torch.equal(averaged[BN_MEAN], b[BN_MEAN])  # BatchNorm statistics are averaged too
    assert torch.equal(averaged[BN_COUNT], t[BN_COUNT])  # integer buffers come from the tuned model
    base_rows, new_rows = shared_label_rows(EN_LABELS, DE_LABELS)
    assert torch.equal(averaged[DECODER_W][new_rows], b[DECODER_W][base_rows])  # shared labels and blank
    only_new = [DE_LABELS.index(c) for c in "äöüß"]
    assert torch.equal(averaged[DECODER_W][only_new], t[DECODER_W][only_new])  # German-only rows: tuned


def test_intermediate_weight_mixes_parameters_and_mapped_rows(base, tuned):
    lam = 0.25
    averaged = average_models(base, tuned, lam).state_dict()
    b, t = base.state_dict(), tuned.state_dict()
    torch.testing.assert_close(averaged[ENCODER_W], (1 - lam) * b[ENCODER_W] + lam * t[ENCODER_W])
    a_row, de_row = EN_LABELS.index("a"), DE_LABELS.index("a")
    blank_en, blank_de = len(EN_LABELS), len(DE_LABELS)
    torch.testing.assert_close(averaged[DECODER_W][de_row], (1 - lam) * b[DECODER_W][a_row] + lam * t[DECODER_W][de_row])
    torch.testing.assert_close(averaged[DECODER_W][blank_de],
                               (1 - lam) * b[DECODER_W][blank_en] + lam * t[DECODER_W][blank_de])


def test_command_line_writes_a_nemo_that_restores_without_the_base(base_nemo, tuned_nemo, tuned, tmp_path, capsys):
    out = str(tmp_path / "avg.nemo")
    assert main([base_nemo, tuned_nemo, "--weight", "0.5", "--out", out]) == 0
    restored = ASRModel.restore_from(out, map_location="cpu")
    assert isinstance(restored, TransferCTCModel)
    assert list(restored.decoder.vocabulary) == DE_LABELS
    expected = average_models(base_nemo, tuned, 0.5).state_dict()
    for name, value in restored.state_dict().items():
        assert torch.equal(value, expected[name]), name


@pytest.mark.parametrize("weight", [1.5, -0.1, math.nan])
def test_weight_outside_zero_one_is_refused(base, tuned, weight):
    raises_input_error(lambda: average_models(base, tuned, weight), r"weight", r"\[0, 1\]")


def test_command_line_reports_a_bad_weight(base_nemo, tuned_nemo, tmp_path, capsys):
    assert main([base_nemo, tuned_nemo, "--weight", "2", "--out", str(tmp_path / "x.nemo")]) == 2
    assert "--weight" in capsys.readouterr().err


def test_models_of_different_architectures_are_refused(tuned):
    cfg = load_conf("quartznet_tiny")
    cfg.encoder.jasper[3].filters = 80
    other = EncDecCTCModel(cfg=cfg)
    raises_input_error(lambda: average_models(other, tuned, 0.5), r"different architectures", r"encoder\.encoder\.3")
