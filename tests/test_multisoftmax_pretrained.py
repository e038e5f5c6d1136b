"""A multilingual RNN-T started from a pretrained NeMo ASR model: from_base, model.transfer, NeMo's init keys."""

from __future__ import annotations

import shutil

import pytest
import torch
from nemo.collections.asr.models import ASRModel, EncDecCTCModel
from omegaconf import OmegaConf

from nemo_tl.models.multisoftmax_rnnt import MultiSoftmaxRNNTModel
from tests.conftest import load_conf
from tests.helpers import cpu_trainer, raises_input_error, snapshot
from tests.test_multisoftmax_model import LANGS, manifests, ms_cfg  # noqa: F401  (manifests: a fixture)

pytestmark = pytest.mark.usefixtures("single_thread")

SMALL = {  # the head and loaders of the tests' tiny models
    "model_defaults": {"pred_hidden": 32, "joint_hidden": 32},
    "decoder": {"prednet": {"pred_hidden": 32, "dropout": 0.0}},
    "joint": {"jointnet": {"joint_hidden": 32, "dropout": 0.0}},
    "decoding": {"greedy": {"max_symbols": 3}},
    "spec_augment": None,
    "train_ds": {"batch_size": 4, "num_workers": 0},
    "validation_ds": {"batch_size": 4, "num_workers": 0},
}


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def ctc_base(base_nemo):
    return EncDecCTCModel.restore_from(base_nemo, map_location="cpu")


def test_from_base_takes_a_ctc_encoder_and_restores_without_the_base(base_nemo, ctc_base, tmp_path):
    path = str(tmp_path / "base.nemo")
    shutil.copy(base_nemo, path)
    model = MultiSoftmaxRNNTModel.from_base(path, languages=LANGS, cfg=SMALL)
    assert same(model.encoder, ctc_base.encoder) and same(model.preprocessor, ctc_base.preprocessor)
    assert model.cfg.preprocessor.features == ctc_base.cfg.preprocessor.features
    assert model.cfg.model_defaults.enc_hidden == 128  # the base encoder's output width, read by joints and LID head
    assert model.cfg.transfer.base_model == path and model.transfer_report == {}  # a CTC base has no RNN-T rows
    saved = str(tmp_path / "ms.nemo")
    model.save_to(saved)
    (tmp_path / "base.nemo").unlink()  # a restored model needs no base
    restored = MultiSoftmaxRNNTModel.restore_from(saved, map_location="cpu")
    assert same(restored.encoder, ctc_base.encoder)


def test_an_rnnt_base_starts_each_language_head_from_its_shared_rows(monkeypatch):
    from nemo.utils import logging

    torch.manual_seed(1)
    base = MultiSoftmaxRNNTModel(ms_cfg()).extract_language("en")  # a plain NeMo RNN-T over " abcdefgh"
    warned = []
    monkeypatch.setattr(logging, "warning", lambda msg, *a, **k: warned.append(msg))
    languages = {"en": list(" abcxyz"), "ru": list("кгб")}  # ru shares no label with the base
    model = MultiSoftmaxRNNTModel.from_base(base, languages=languages, cfg=SMALL)
    assert model.transfer_report == {"en": {"shared": 4, "new": 3}}
    assert any("'ru'" in m and "shares no label" in m for m in warned)
    embed, base_embed = model.decoder["en"].prediction["embed"].weight, base.decoder.prediction["embed"].weight
    out, base_out = model.joint["en"].joint_net[-1], base.joint.joint_net[-1]
    for new_row, base_row in ((0, 0), (1, 1), (3, 3), (7, 9)):  # ' ', a, c; blank (row V) to blank
        assert torch.equal(embed[new_row], base_embed[base_row]) and torch.equal(out.weight[new_row], base_out.weight[base_row])
    assert embed[4:7].abs().sum() == 0 and out.weight[4:7].abs().sum() == 0  # x, y, z: zero (new_label_init)
    assert same(model.encoder, base.encoder)
    shared_lstm = model.decoder["ru"].prediction["dec_rnn"].state_dict()
    assert all(torch.equal(v, base.decoder.prediction["dec_rnn"].state_dict()[k]) for k, v in shared_lstm.items())


def test_frozen_blocks_stay_frozen_through_training(base_nemo, manifests):  # noqa: F811
    train = {"manifest_filepath": list(manifests.values()), "mixing": {"per_batch": True, "weights": "count"}}
    cfg = OmegaConf.merge(OmegaConf.create(SMALL), {"train_ds": train, "optim": {"name": "adamw", "lr": 0.01}})
    model = MultiSoftmaxRNNTModel.from_base(base_nemo, languages=LANGS, freeze_encoder_blocks=2, cfg=cfg)
    assert len(model.frozen_blocks) == 2
    before = snapshot(model.encoder)
    trainer = cpu_trainer(3)
    model.set_trainer(trainer)
    model.setup_training_data(model.cfg.train_ds)
    trainer.fit(model)
    after = snapshot(model.encoder)
    frozen = [k for k in before if k.startswith(("encoder.0.", "encoder.1."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)  # weights and BatchNorm statistics
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("encoder.2."))


def _same_features_cfg(base_cfg):
    """ms_cfg with the base's preprocessor and encoder, so that NeMo's init keys can load it."""
    cfg = ms_cfg("batchnorm")
    cfg.preprocessor = base_cfg.preprocessor
    cfg.encoder = base_cfg.encoder
    return cfg


def test_init_from_nemo_model_loads_a_ctc_encoder_string_and_dict_forms(base_nemo, ctc_base):
    base_cfg = OmegaConf.create(OmegaConf.to_container(ctc_base.cfg, resolve=True))
    model = MultiSoftmaxRNNTModel(_same_features_cfg(base_cfg))
    assert not same(model.encoder, ctc_base.encoder)
    model.maybe_init_from_pretrained_checkpoint(OmegaConf.create({"init_from_nemo_model": base_nemo}))
    assert same(model.encoder, ctc_base.encoder)
    assert "restore_from" not in model.__dict__  # the class's own restore_from is back

    model = MultiSoftmaxRNNTModel(_same_features_cfg(base_cfg))
    first = snapshot(model.encoder.encoder[0])
    init = {"base": {"path": base_nemo, "include": ["encoder"], "exclude": ["encoder.encoder.0."]}}
    model.maybe_init_from_pretrained_checkpoint(OmegaConf.create({"init_from_nemo_model": init}))
    assert same(model.encoder.encoder[1], ctc_base.encoder.encoder[1])
    assert all(torch.equal(v, first[k]) for k, v in model.encoder.encoder[0].state_dict().items())  # excluded


def test_init_from_pretrained_model_finds_ctc_names(ctc_base, monkeypatch):
    from nemo.collections.asr.models import EncDecRNNTModel

    def names(cls):
        return {m.pretrained_model_name for m in cls.list_available_models() or []}

    # A CTC name, which the RNN-T class (what NeMo's own init searches through self.from_pretrained) lacks.
    assert "stt_en_conformer_ctc_small" in names(ASRModel) - names(EncDecRNNTModel)
    asked = []

    def from_pretrained(name, *args, **kwargs):  # NGC is out of reach: stand in for the download
        asked.append(name)
        return ctc_base

    monkeypatch.setattr(ASRModel, "from_pretrained", from_pretrained)
    base_cfg = OmegaConf.create(OmegaConf.to_container(ctc_base.cfg, resolve=True))
    model = MultiSoftmaxRNNTModel(_same_features_cfg(base_cfg))
    init = {"init_from_pretrained_model": {"base": {"name": "stt_en_conformer_ctc_small", "include": ["encoder"]}}}
    model.maybe_init_from_pretrained_checkpoint(OmegaConf.create(init))
    assert asked == ["stt_en_conformer_ctc_small"] and same(model.encoder, ctc_base.encoder)


def test_bad_bases_are_input_errors_before_training(base_nemo, tmp_path):
    # A preprocessor or feature size other than the base's, through from_base and through NeMo's init key.
    raises_input_error(
        lambda: MultiSoftmaxRNNTModel.from_base(base_nemo, languages=LANGS, cfg={"preprocessor": {"features": 80}}),
        r"model\.preprocessor", r"features: base has 40, config asks 80",
    )
    model = MultiSoftmaxRNNTModel(ms_cfg("batchnorm"))  # features 40, but window_size 0.025 (the base: 0.02)
    raises_input_error(
        lambda: model.maybe_init_from_pretrained_checkpoint(OmegaConf.create({"init_from_nemo_model": base_nemo})),
        r"window_size: base has 0\.02, config asks 0\.025",
    )
    missing = str(tmp_path / "nope.nemo")
    raises_input_error(
        lambda: model.maybe_init_from_pretrained_checkpoint(OmegaConf.create({"init_from_nemo_model": missing})),
        r"init_from_nemo_model", "nope.nemo",
    )
    raises_input_error(
        lambda: model.maybe_init_from_pretrained_checkpoint(
            OmegaConf.create({"init_from_nemo_model": {"base": {"path": missing}}})),
        r"init_from_nemo_model\.base\.path",
    )
    # Not an ASR model.
    raises_input_error(lambda: MultiSoftmaxRNNTModel.from_base(torch.nn.Linear(2, 2), languages=LANGS),
                       r"model\.transfer\.base_model")
    # Encoder shapes other than the base's, through NeMo's init key: listed, with include/exclude as the fix.
    cfg = ms_cfg("batchnorm")
    cfg.preprocessor = load_conf("quartznet_tiny").preprocessor
    cfg.encoder.jasper[0].filters = 32
    raises_input_error(
        lambda: MultiSoftmaxRNNTModel(cfg).maybe_init_from_pretrained_checkpoint(
            OmegaConf.create({"init_from_nemo_model": base_nemo})),
        r"do not fit the model", r"include",
    )
    # model.transfer keys that do not apply to a multilingual model.
    raises_input_error(lambda: MultiSoftmaxRNNTModel.from_base(base_nemo, languages=LANGS, vocabulary="same"),
                       r"model\.transfer\.vocabulary")
    raises_input_error(lambda: MultiSoftmaxRNNTModel.from_base(base_nemo, languages=LANGS, architecture="onehot"),
                       r"model\.architecture")
    cfg = ms_cfg(transfer={"regularization": {"l2sp": {"weight": 0.1}}})
    raises_input_error(lambda: MultiSoftmaxRNNTModel(cfg), r"model\.transfer\.regularization")


def test_model_transfer_section_loads_the_base_by_path(base_nemo, ctc_base):
    cfg = OmegaConf.merge(ms_cfg(), SMALL)
    del cfg["preprocessor"], cfg["encoder"]  # they come from the base
    cfg.transfer = {"base_model": base_nemo, "freeze_encoder_blocks": 1}
    model = MultiSoftmaxRNNTModel(cfg)
    assert same(model.encoder, ctc_base.encoder) and len(model.frozen_blocks) == 1

