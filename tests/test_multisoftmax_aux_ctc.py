"""The auxiliary CTC loss on the shared encoder (model.aux_ctc.ctc_loss_weight), NeMo's hybrid weighting."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from nemo.collections.asr.models import EncDecCTCModel

from nemo_tl.data.batches import LanguageBatch
from nemo_tl.data.synthetic import write_manifest
from nemo_tl.losses.lid import frame_lid_loss
from nemo_tl.models.multisoftmax_rnnt import MultiSoftmaxRNNTModel
from tests.helpers import raises_input_error
from tests.test_multisoftmax_model import LANGS, TEXTS, lang_batch, manifests, ms_cfg  # noqa: F401
from tests.test_multisoftmax_pretrained import SMALL

pytestmark = pytest.mark.usefixtures("single_thread")


def test_ctc_share_of_the_loss_and_union_targets(manifests):  # noqa: F811
    model = MultiSoftmaxRNNTModel(ms_cfg(aux_ctc={"ctc_loss_weight": 0.3}))
    union = list(model.cfg.labels)
    batch = LanguageBatch._make(lang_batch(model, manifests["ru"]))
    targets = model.aux_ctc.union_tokens(batch.tokens, batch.lang_ids)
    for row, text in enumerate(TEXTS["ru"]):  # ru's own label ids become the union's
        assert targets[row, : len(text)].tolist() == [union.index(c) for c in text]
    torch.manual_seed(0)
    loss, parts, encoded, encoded_len = model._losses(batch)
    lid = frame_lid_loss(model.lid_head(encoded), encoded_len, batch.lang_ids)
    expected = 0.7 * parts["rnnt_loss"] + 0.3 * parts["ctc_loss"] + lid
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    ctc = model.aux_ctc(encoded, encoded_len, batch.tokens, batch.token_lens, batch.lang_ids)
    assert float(ctc) == pytest.approx(float(parts["ctc_loss"]), rel=1e-6)
    # The CTC term reaches the encoder and its head only.
    model.zero_grad(set_to_none=True)
    ctc.backward()
    assert all(p.grad is not None for p in model.aux_ctc.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert all(p.grad is None for p in (*model.decoder.parameters(), *model.joint.parameters()))
    # Off by default, and extraction leaves the head out.
    assert MultiSoftmaxRNNTModel(ms_cfg()).aux_ctc is None
    assert not any(k.startswith("aux_ctc") for k in model.extract_language("ru").state_dict())


def test_a_ctc_base_starts_the_aux_head_from_its_shared_rows(base_nemo):
    base = EncDecCTCModel.restore_from(base_nemo, map_location="cpu")
    model = MultiSoftmaxRNNTModel.from_base(base, languages=LANGS, cfg={**SMALL, "aux_ctc": {"ctc_loss_weight": 0.3}})
    union, base_labels = list(model.cfg.labels), list(base.decoder.vocabulary)
    weight, base_weight = model.aux_ctc.decoder.decoder_layers[0].weight, base.decoder.decoder_layers[0].weight
    for label in " abc":
        assert torch.equal(weight[union.index(label)], base_weight[base_labels.index(label)])
    assert torch.equal(weight[len(union)], base_weight[len(base_labels)])  # blank
    assert weight[union.index("б")].abs().sum() == 0  # a label the base lacks starts at zero
    assert model.transfer_report["aux_ctc"]["shared"] == len(set(union) & set(base_labels))


@pytest.mark.parametrize("weight", [1.0, -0.1, "a lot"])
def test_bad_ctc_weight(weight):
    raises_input_error(lambda: MultiSoftmaxRNNTModel(ms_cfg(aux_ctc={"ctc_loss_weight": weight})),
                       r"model\.aux_ctc\.ctc_loss_weight")


def test_aux_ctc_rejects_a_transcript_the_encoder_cannot_ctc_align(tmp_path):
    """8x subsampling: 0.5 s give 7 encoder frames, too few for CTC over 17 labels (NeMo's loss would be 0)."""
    entries = []
    for i, (seconds, text) in enumerate([(1.0, "abc"), (0.5, "abcdefgh abcdefgh")]):
        wav = str(tmp_path / f"{i}.wav")
        sf.write(wav, 0.1 * np.random.default_rng(i).standard_normal(int(16000 * seconds)), 16000)
        entries.append({"audio_filepath": wav, "duration": seconds, "text": text, "lang": "en"})
    manifest = write_manifest(str(tmp_path / "en.json"), entries)

    def cfg(**overrides):
        cfg = ms_cfg(train_ds={"manifest_filepath": manifest}, **overrides)
        cfg.encoder.subsampling_factor = 8
        return cfg

    message = raises_input_error(
        lambda: MultiSoftmaxRNNTModel(cfg(aux_ctc={"ctc_loss_weight": 0.3})),
        r"en\.json:2: \[text\] the transcript needs 17 encoder frames", "CTC cannot align", "subsampling_factor: 4",
    )
    assert "en.json:1:" not in message
    assert MultiSoftmaxRNNTModel(cfg())._train_dl is not None  # RNN-T needs one frame: accepted
