"""NeMo's SpecCutout crash on batches of short utterances is an InputError before training."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from nemo_tl.data.spec_cutout import MAX_CRASH_CHANCE, check_spec_cutout, feature_frames, short_batch_chance
from nemo_tl.data.synthetic import make_tone_manifest
from nemo_tl.models import TransferCTCModel
from tests.conftest import EN_LABELS, EN_TEXTS, load_conf
from tests.helpers import data_cfg, raises_input_error

RECT_TIME = 64  # frames (0.64 s at hop 160, 16 kHz): longer than every EN_TEXTS tone utterance
LONG_TEXTS = [" ".join([t] * 4) for t in EN_TEXTS]  # 1 s and more: over 64 frames


def _augment(rect_time: int = RECT_TIME, rect_freq: int = 10, rect_masks: int = 2) -> dict:
    return {"_target_": "nemo.collections.asr.modules.SpectrogramAugmentation",
            "rect_masks": rect_masks, "rect_time": rect_time, "rect_freq": rect_freq}


def _model(base_nemo, manifest, batch_size: int = 4, **train):
    cfg = {"train_ds": {**data_cfg(manifest, EN_LABELS, batch_size), **train}, "spec_augment": _augment()}
    return TransferCTCModel.from_base(base_nemo, labels=EN_LABELS, cfg=cfg)


@pytest.fixture(scope="module")
def long_manifest(tmp_path_factory):
    return make_tone_manifest(str(tmp_path_factory.mktemp("long")), LONG_TEXTS, name="long")


@pytest.fixture(scope="module")
def one_short_manifest(tmp_path_factory):
    """16 long utterances and one short one: with batch size 8 the last batch holds just the short one."""
    return make_tone_manifest(str(tmp_path_factory.mktemp("mixed")), [*LONG_TEXTS, *LONG_TEXTS, "one"], name="last")


def _durations(manifest) -> list[float]:
    with open(manifest, encoding="utf-8") as f:
        return [json.loads(line)["duration"] for line in f if line.strip()]


def test_nemo_spec_cutout_crashes_on_a_batch_of_short_utterances(en_manifest):
    """Without the check the crash is real: NeMo's preprocessor pads the batch to fewer frames than rect_time."""
    import soundfile as sf
    from nemo.collections.asr.modules import AudioToMelSpectrogramPreprocessor, SpectrogramAugmentation

    with open(en_manifest, encoding="utf-8") as f:
        entries = [json.loads(line) for line in f if line.strip()]
    audio = [torch.as_tensor(sf.read(e["audio_filepath"], dtype="float32")[0]) for e in entries[:4]]
    lengths = torch.tensor([len(a) for a in audio])
    batch = torch.nn.utils.rnn.pad_sequence(audio, batch_first=True)
    pre = load_conf("quartznet_tiny").preprocessor
    preprocessor = AudioToMelSpectrogramPreprocessor(**{k: v for k, v in pre.items() if k != "_target_"})
    spec, _ = preprocessor(input_signal=batch, length=lengths)
    # The frames the check counts are the frames NeMo makes.
    assert spec.shape[-1] == feature_frames(max(e["duration"] for e in entries[:4]), 16000, 160, 16) < RECT_TIME
    with pytest.raises(ValueError, match="empty range"):
        SpectrogramAugmentation(**{k: v for k, v in _augment().items() if k != "_target_"})(
            input_spec=spec, length=lengths
        )


def test_all_short_training_set_is_an_input_error(base_nemo, en_manifest):
    message = raises_input_error(
        lambda: _model(base_nemo, en_manifest), r"en\.json", r"rect_time", r"8 of the 8", r"64 feature frames",
        r"0\.64 s", r"en\.json:\d+ \(0\.\d+ s", r"rect_masks: 0",
    )
    assert "drop_last" not in message  # every batch is short: dropping the last one does not help


def test_long_utterances_build(base_nemo, long_manifest):
    assert min(_durations(long_manifest)) > RECT_TIME / 100
    model = _model(base_nemo, long_manifest)
    assert model._train_dl is not None


def test_drop_last_fixes_a_short_last_batch(base_nemo, one_short_manifest):
    message = raises_input_error(
        lambda: _model(base_nemo, one_short_manifest, batch_size=8), r"1 of the 17", r"drop_last: true"
    )
    assert "last.json:17" in message
    model = _model(base_nemo, one_short_manifest, batch_size=8, drop_last=True)
    assert model._train_dl is not None


def test_multilingual_training_set_is_checked_too(tmp_path):
    from nemo_tl.models.multisoftmax_rnnt import MultiSoftmaxRNNTModel
    from tests.test_multisoftmax_model import TEXTS, ms_cfg

    path = make_tone_manifest(str(tmp_path), TEXTS["en"], name="en_short", lang="en")
    model = MultiSoftmaxRNNTModel(ms_cfg(encoder="batchnorm", spec_augment=_augment()))
    train = OmegaConf.merge(model.cfg.train_ds, {"manifest_filepath": [path]})
    raises_input_error(lambda: model.setup_training_data(train), r"en_short\.json", r"rect_time")
    model.setup_validation_data(OmegaConf.merge(model.cfg.validation_ds, {"manifest_filepath": [path]}))


def test_rect_freq_above_the_features_is_an_input_error(long_manifest):
    model_cfg = OmegaConf.merge(load_conf("quartznet_tiny"), {"spec_augment": _augment(rect_time=8, rect_freq=50)})
    raises_input_error(
        lambda: check_spec_cutout(OmegaConf.create(data_cfg(long_manifest, EN_LABELS)), model_cfg),
        r"spec_augment\.rect_freq", r"50", r"40 features",
    )


def test_only_train_ds_with_rect_masks_is_checked(en_manifest):
    config = OmegaConf.create(data_cfg(en_manifest, EN_LABELS))
    model_cfg = OmegaConf.merge(load_conf("quartznet_tiny"), {"spec_augment": _augment()})
    check_spec_cutout(config, model_cfg, section="validation_ds")  # no SpecCutout in evaluation
    check_spec_cutout(config, OmegaConf.merge(model_cfg, {"spec_augment": {"rect_masks": 0}}))
    with pytest.raises(ValueError, match="rect_time"):
        check_spec_cutout(config, model_cfg)


@pytest.mark.parametrize("per_batch", [False, True])
def test_mixing_counts_what_the_mixed_sampler_draws(en_manifest, long_manifest, per_batch):
    """Mixed batches are full: a short manifest is a risk only through its share of the slots (or batches)."""
    model_cfg = OmegaConf.merge(load_conf("quartznet_tiny"), {"spec_augment": _augment()})
    config = OmegaConf.create({**data_cfg([long_manifest, en_manifest], EN_LABELS, batch_size=8),
                               "mixing": {"weights": [0.99, 0.01], "per_batch": per_batch}})
    check_spec_cutout(config, model_cfg)  # 1 % short slots, or no whole short batch in 2 steps
    config.mixing.weights = [0.5, 0.5]
    raises_input_error(lambda: check_spec_cutout(config, model_cfg), r"en\.json", r"mixed batches")


def test_validate_command_checks_a_training_set_with_the_model_config(en_manifest, long_manifest, tmp_path, capsys):
    from nemo_tl.data.validate import main

    conf = OmegaConf.create({"model": OmegaConf.merge(load_conf("quartznet_tiny"), {"spec_augment": _augment()})})
    conf.model.train_ds = {"batch_size": 4}
    OmegaConf.save(conf, tmp_path / "model.yaml")
    args = ["--labels", str(tmp_path / "model.yaml"), "--no-audio"]
    assert main([en_manifest, *args]) == 0  # a dev set: SpecCutout does not run on it
    assert main([en_manifest, *args, "--train"]) == 1
    assert "rect_time" in capsys.readouterr().out
    assert main([long_manifest, *args, "--train"]) == 0


def test_short_batch_chance():
    assert short_batch_chance(0, 10, 4) == 0.0
    assert short_batch_chance(10, 10, 4) == 1.0
    # N = 17, B = 8, one short: the last batch of one is short with p = 1/17; without it, 2·(1/17)^8.
    assert short_batch_chance(1, 17, 8) == pytest.approx(2 / 17**8 + 1 / 17)
    assert short_batch_chance(1, 17, 8, drop_last=True) == pytest.approx(2 / 17**8)
    assert 2 / 17**8 < MAX_CRASH_CHANCE
