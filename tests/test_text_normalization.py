"""Transcripts reach the model as the manifest wrote them: no silent transliteration, no dropped utterance.

Each test reads what a user relies on: the token ids of a real batch of the training loader,
decoded back to text with the model's labels, or the InputError that stops the run first.
"""

from __future__ import annotations

import os

import pytest
from nemo.collections.asr.models import ASRModel

from nemo_tl.data.synthetic import make_tone_manifest
from nemo_tl.data.texts import labels_for
from nemo_tl.data.validate import default_parser, validate_manifest
from nemo_tl.errors import InputError
from nemo_tl.models import DistillCTCModel, TransferCTCModel
from tests.conftest import ROOT, load_conf
from tests.test_scripts_ctc import run

DE_CAPITALIZED = ["Fünf Größe über", "Straße", "Übermut Öl", "Äpfel  Bitte "]
DE_EXPECTED = ["fünf größe über", "straße", "übermut öl", "äpfel  bitte"]
RU_CAPITALIZED = ["Привет Ёлка", "Ёж", "Мир", "Щука"]


@pytest.fixture(scope="module")
def de_caps(tmp_path_factory):
    return make_tone_manifest(str(tmp_path_factory.mktemp("de_caps")), DE_CAPITALIZED, name="de_train", seed=7)


@pytest.fixture(scope="module")
def ru_caps(tmp_path_factory):
    return make_tone_manifest(str(tmp_path_factory.mktemp("ru_caps")), RU_CAPITALIZED, name="ru_train", seed=9)


def train_cfg(manifest: str, **extra) -> dict:
    return {"train_ds": {"manifest_filepath": manifest, "sample_rate": 16000, "batch_size": 8, "shuffle": False,
                         "num_workers": 0, **extra}}


def batch_texts(model) -> list[str]:
    """The transcripts of the first training batch, decoded from their token ids with the model's labels."""
    labels = list(model.decoder.vocabulary)
    _, _, tokens, lengths = next(iter(model._train_dl))[:4]
    return sorted("".join(labels[int(i)] for i in row[: int(n)]) for row, n in zip(tokens, lengths))


def test_default_parser_follows_the_labels():
    assert default_parser(labels_for("en")) == "en"
    for lang in ("de", "es", "ru", "hi"):
        assert default_parser(labels_for(lang)) == "base"


def test_capitalized_german_with_normalization_keeps_every_umlaut(base_nemo, de_caps):
    model = TransferCTCModel.from_base(base_nemo, labels="de", cfg=train_cfg(de_caps, normalize_transcripts=True))
    assert list(model.cfg.labels) == labels_for("de")  # the language code is saved as the explicit list
    # NeMo's 'base' parser, picked for these labels: stripped and lowercased, every umlaut and ß kept.
    assert batch_texts(model) == sorted(DE_EXPECTED)


def test_capitalized_russian_with_normalization_stays_cyrillic(base_nemo, ru_caps):
    model = TransferCTCModel.from_base(base_nemo, labels="ru", cfg=train_cfg(ru_caps, normalize_transcripts=True))
    assert batch_texts(model) == sorted(t.lower() for t in RU_CAPITALIZED)


def test_english_parser_on_german_labels_is_an_error_before_training(base_nemo, de_caps):
    with pytest.raises(InputError) as e:
        TransferCTCModel.from_base(
            base_nemo, labels="de", cfg=train_cfg(de_caps, normalize_transcripts=True, parser="en")
        )
    message = str(e.value)
    assert f"{de_caps}:1:" in message and "'größe' into 'grosse'" in message
    assert "train_ds.parser: base" in message


def test_russian_parser_replacing_yo_is_an_error(ru_caps):
    problems = validate_manifest(ru_caps, labels=labels_for("ru"), normalize=True, parser="ru")
    lines = {p.line for p in problems if p.is_error}
    assert {1, 2} <= lines  # 'ёлка' and 'ёж': NeMo's ru parser writes ё as е (and transliterates)
    assert all("parser: base" in p.fix for p in problems if p.line in (1, 2))


def test_capitals_without_normalization_point_to_a_safe_fix(base_nemo, de_caps):
    with pytest.raises(InputError) as e:
        TransferCTCModel.from_base(base_nemo, labels="de", cfg=train_cfg(de_caps))
    message = str(e.value)
    assert "characters not in the vocabulary: 'F', 'G'" in message
    assert "train_ds.normalize_transcripts: true" in message
    # Following that advice trains on the umlauts (the test above); the advice never names the 'en' parser.
    assert "parser: en" not in message


def test_english_numbers_are_spelled_out(base_nemo, tmp_path):
    manifest = make_tone_manifest(str(tmp_path), ["I have 3 apples", "Mr. Smith"], name="en_numbers")
    model = TransferCTCModel.from_base(base_nemo, labels="en", cfg=train_cfg(manifest, normalize_transcripts=True))
    assert batch_texts(model) == ["i have three apples", "mister smith"]


def test_a_normalizer_that_would_drop_an_utterance_is_an_error(tmp_path, monkeypatch):
    """Without the optional inflect package NeMo's 'en' normalizer drops every utterance with a digit."""
    import sys

    from nemo.collections.common.parts.preprocessing import cleaners

    manifest = make_tone_manifest(str(tmp_path), ["one", "I have 3 apples"], name="m")
    monkeypatch.setitem(sys.modules, "inflect", None)  # import inflect now fails
    cleaners.inflect_engine.cache_clear()
    try:
        problems = [p for p in validate_manifest(manifest, labels=labels_for("en"), normalize=True) if p.is_error]
    finally:
        cleaners.inflect_engine.cache_clear()
    assert [p.line for p in problems] == [2]
    assert "drop the utterance" in problems[0].message and "pip install inflect" in problems[0].fix


def test_unknown_language_code_names_the_key(base_nemo, de_caps):
    with pytest.raises(InputError, match=r"labels: unknown language code 'xx'"):
        TransferCTCModel.from_base(base_nemo, labels="xx", cfg=train_cfg(de_caps))
    cfg = load_conf("quartznet_tiny")
    cfg.labels = "klingon"
    with pytest.raises(InputError, match=r"model\.labels: unknown language code 'klingon'"):
        TransferCTCModel(cfg=cfg)


def test_distill_model_derives_its_decoder_from_a_language_code(tmp_path, de_caps):
    """A DistillCTCModel config names only model.labels; the decoder's size follows it."""
    teacher = TransferCTCModel(cfg=_tiny_with_labels("de"))
    teacher_path = str(tmp_path / "teacher_de.nemo")
    teacher.save_to(teacher_path)
    cfg = _tiny_with_labels("de")
    cfg.distillation = {"teachers": [{"model": teacher_path, "weight": 1.0}], "uncertainty": False}
    cfg.train_ds = train_cfg(de_caps, normalize_transcripts=True)["train_ds"]
    student = DistillCTCModel(cfg=cfg)
    assert student.decoder.num_classes_with_blank == len(labels_for("de")) + 1
    assert list(student.decoder.vocabulary) == labels_for("de")
    assert batch_texts(student) == sorted(DE_EXPECTED)


def test_decoder_size_that_disagrees_with_the_labels_is_an_error():
    cfg = _tiny_with_labels("de")
    cfg.decoder.num_classes = 28
    with pytest.raises(InputError, match=r"model\.decoder\.num_classes: num_classes=28, but model\.labels has 31"):
        TransferCTCModel(cfg=cfg)


def _tiny_with_labels(labels):
    cfg = load_conf("quartznet_tiny")
    cfg.labels = labels
    cfg.decoder.vocabulary = "${labels}"  # as the shipped configs write it: follows model.labels
    del cfg.decoder["num_classes"]  # derived from model.labels
    cfg.pop("train_ds")
    cfg.pop("validation_ds")
    return cfg


def test_finetune_script_trains_capitalized_german_with_its_umlauts(tmp_path, base_nemo, de_caps):
    """examples/finetune_ctc.py with model.labels=de and normalize_transcripts: the saved model's batches
    still hold ü, ö, ß (the 'en' parser is refused before training: the from_base test above)."""
    out = str(tmp_path / "de.nemo")
    common = [
        os.path.join(ROOT, "examples", "finetune_ctc.py"), f"model.transfer.base_model={base_nemo}",
        "model.labels=de", f"model.train_ds.manifest_filepath={de_caps}",
        f"model.validation_ds.manifest_filepath={de_caps}", "model.train_ds.normalize_transcripts=true",
        "model.validation_ds.normalize_transcripts=true", "model.train_ds.batch_size=4",
        "model.validation_ds.batch_size=4", "model.spec_augment=null", "trainer.max_steps=2", "trainer.accelerator=cpu",
        "+trainer.enable_progress_bar=false", f"exp_manager.exp_dir={tmp_path}",
        "exp_manager.create_checkpoint_callback=false", "exp_manager.create_tensorboard_logger=false",
    ]
    run(*common, f"save_to={out}", cwd=str(tmp_path))
    model = ASRModel.restore_from(out, map_location="cpu")
    assert list(model.cfg.labels) == labels_for("de")
    model.setup_training_data(model.cfg.train_ds)
    assert batch_texts(model) == sorted(DE_EXPECTED)

