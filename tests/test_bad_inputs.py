"""Bad input stops before training with an InputError naming the problem, where it is, and the fix.

Complements the unit tests of test_validate.py, test_transfer_ctc.py, test_mixing.py,
test_distill.py and test_multisoftmax_model.py: here the inputs go in the way a user gives them
(a model config, a .nemo path, ``restore_from``), end to end.
"""

from __future__ import annotations

import io
import json
import tarfile

import pytest
from omegaconf import OmegaConf

from nemo_tl.models import TransferCTCModel
from tests.conftest import EN_LABELS, load_conf
from tests.helpers import raises_input_error


def _cfg(base_nemo, train=None, val=None, transfer=None, train_ds=None, validation_ds=None):
    """The tiny config of a TransferCTCModel from ``base_nemo``, with the given manifests and overrides."""
    cfg = load_conf("quartznet_tiny")
    cfg.transfer = {"base_model": base_nemo, **(transfer or {})}
    cfg.train_ds.manifest_filepath = train
    cfg.validation_ds.manifest_filepath = val
    return OmegaConf.merge(cfg, {"train_ds": train_ds or {}, "validation_ds": validation_ds or {}})


def _lines(manifest):
    with open(manifest, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def _write(path, lines) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return str(path)


def _with_bad_line(manifest, directory, bad: str, name: str = "bad.json") -> str:
    """``manifest``'s first two lines, then ``bad`` as line 3."""
    return _write(directory / name, [*_lines(manifest)[:2], bad])


def _entry(manifest, **changes) -> str:
    return json.dumps({**json.loads(_lines(manifest)[0]), **changes}, ensure_ascii=False)


# ---------------------------------------------------------------------------- manifests, end to end
@pytest.mark.parametrize(
    "case, pattern",
    [
        ("malformed_json", r"bad\.json:3.*JSON"),
        ("missing_audio", r"bad\.json:3.*audio_filepath.*nowhere\.wav"),
        ("empty_text", r"bad\.json:3.*text.*empty"),
        ("outside_vocabulary", r"bad\.json:3.*'ü'"),
        ("duration_off", r"bad\.json:3.*duration"),
    ],
)
def test_bad_training_manifest_line_stops_model_construction(case, pattern, base_nemo, en_manifest, tmp_path):
    bad = {
        "malformed_json": _entry(en_manifest)[:-1],
        "missing_audio": _entry(en_manifest, audio_filepath=str(tmp_path / "nowhere.wav")),
        "empty_text": _entry(en_manifest, text=""),
        "outside_vocabulary": _entry(en_manifest, text="fünf"),
        "duration_off": _entry(en_manifest, duration=99.0),
    }[case]
    path = _with_bad_line(en_manifest, tmp_path, bad)
    raises_input_error(lambda: TransferCTCModel(_cfg(base_nemo, train=path)), pattern, r"train_ds")


def test_bad_validation_manifest_is_named_with_its_section(base_nemo, en_manifest, tmp_path):
    dev = _with_bad_line(en_manifest, tmp_path, _entry(en_manifest, lang=None, text="one two?"), "dev.json")
    raises_input_error(lambda: TransferCTCModel(_cfg(base_nemo, train=en_manifest, val=dev)), r"validation_ds", r"dev\.json:3.*'\?'")


def test_missing_training_manifest_file(base_nemo, tmp_path):
    raises_input_error(lambda: TransferCTCModel(_cfg(base_nemo, train=str(tmp_path / "train.json"))), r"train\.json")


# ---------------------------------------------------------------------------- configs: wrong types, unknown keys
@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"train_ds": {"skip_invalid": "false"}}, r"train_ds\.skip_invalid: must be true or false, got 'false'"),
        ({"train_ds": {"skip_invalids": True}}, r"train_ds\.skip_invalids.*did you mean 'skip_invalid'"),
        ({"train_ds": {"batch_size": "eight"}}, r"train_ds\.batch_size: must be a whole number ≥ 1"),
        ({"validation_ds": {"max_duration": "long"}}, r"validation_ds\.max_duration"),
        ({"transfer": {"reinitialize": "yes"}}, r"model\.transfer\.reinitialize"),
        ({"transfer": {"new_label_init": "ones"}}, r"model\.transfer\.new_label_init.*'ones'.*zero, random"),
    ],
)
def test_config_values_of_the_wrong_type_or_name(overrides, pattern, base_nemo, en_manifest):
    raises_input_error(lambda: TransferCTCModel(_cfg(base_nemo, train=en_manifest, val=en_manifest, **overrides)), pattern)


def test_transfer_section_that_is_not_a_mapping(base_nemo, en_manifest):
    cfg = _cfg(base_nemo, train=en_manifest)
    cfg.transfer = base_nemo  # forgot `base_model:`
    raises_input_error(lambda: TransferCTCModel(cfg), r"model\.transfer: must be a mapping", r"base_model:")


# ---------------------------------------------------------------------------- .nemo files
@pytest.fixture(scope="module")
def tuned_nemo(base_nemo, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tuned") / "tuned.nemo")
    TransferCTCModel.from_base(base_nemo, labels=EN_LABELS).save_to(path)
    return path


@pytest.fixture(scope="module")
def speaker_nemo(tmp_path_factory):
    """A NeMo model that is not an ASRModel: a tiny speaker-embedding model."""
    from nemo.collections.asr.models import EncDecSpeakerLabelModel

    tiny = load_conf("quartznet_tiny")
    cfg = OmegaConf.create({
        "sample_rate": 16000, "preprocessor": tiny.preprocessor, "encoder": tiny.encoder, "train_ds": None,
        "decoder": {"_target_": "nemo.collections.asr.modules.SpeakerDecoder", "feat_in": 128, "num_classes": 2,
                    "pool_mode": "xvector", "emb_sizes": [16]},
        "loss": {"_target_": "nemo.collections.asr.losses.angularloss.AngularSoftmaxLoss"},
    })
    path = str(tmp_path_factory.mktemp("speaker") / "speaker.nemo")
    EncDecSpeakerLabelModel(cfg=cfg).save_to(path)
    return path


def test_base_model_file_of_another_format(base_nemo, en_manifest, tmp_path):
    text = tmp_path / "notes.nemo"
    text.write_text("these are my notes, not a model")
    raises_input_error(lambda: TransferCTCModel(_cfg(str(text), train=en_manifest)), r"notes\.nemo.*not a \.nemo archive")


def test_base_model_archive_without_a_model_config(en_manifest, tmp_path):
    path = str(tmp_path / "weights_only.nemo")
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("model_weights.ckpt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"0000"))
    raises_input_error(lambda: TransferCTCModel(_cfg(path, train=en_manifest)), r"weights_only\.nemo", r"model_config\.yaml")


def test_base_model_that_is_not_an_asr_model(speaker_nemo, en_manifest):
    raises_input_error(
        lambda: TransferCTCModel(_cfg(speaker_nemo, train=en_manifest)),
        r"model\.transfer\.base_model.*EncDecSpeakerLabelModel, not a EncDecCTCModel",
    )


def test_transfer_ctc_nemo_where_an_rnnt_model_is_expected(tuned_nemo):
    from nemo_tl.models.multisoftmax_rnnt import MultiSoftmaxRNNTModel

    raises_input_error(
        lambda: MultiSoftmaxRNNTModel.restore_from(tuned_nemo, map_location="cpu"),
        r"tuned\.nemo: the file holds a nemo_tl\.models\.transfer_ctc\.TransferCTCModel, not a MultiSoftmaxRNNTModel",
        r"TransferCTCModel\.restore_from",
    )


# ---------------------------------------------------------------------------- teacher / student
def test_teacher_that_is_not_a_ctc_model(speaker_nemo):
    from nemo_tl.models.distill_ctc import DistillCTCModel

    cfg = load_conf("quartznet_tiny")
    cfg.distillation = {"teachers": [{"model": speaker_nemo}]}
    raises_input_error(
        lambda: DistillCTCModel(cfg=cfg),
        r"model\.distillation\.teachers\[0\]\.model.*EncDecSpeakerLabelModel, not a EncDecCTCModel",
    )


# ---------------------------------------------------------------------------- language configs
def _ms_cfg(**changes):
    from tests.test_multisoftmax_model import ms_cfg

    cfg = ms_cfg()
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def _multisoftmax(cfg):
    from nemo_tl.models.multisoftmax_rnnt import MultiSoftmaxRNNTModel

    return lambda: MultiSoftmaxRNNTModel(cfg)


def test_languages_given_as_a_string():
    raises_input_error(_multisoftmax(_ms_cfg(languages="en,ru")), r"model\.languages: must be a mapping", r"languages: \{en:")


@pytest.mark.parametrize(
    "changes, pattern",
    [
        ({"languages": {"en": {"labels": 5}}}, r"model\.languages\.en\.labels"),
        ({"lid.weight": "high"}, r"model\.lid\.weight"),
        ({"lid.wieght": 1.0}, r"model\.lid.*wieght"),
    ],
)
def test_language_config_values_of_the_wrong_type_or_name(changes, pattern):
    raises_input_error(_multisoftmax(_ms_cfg(**changes)), pattern)
