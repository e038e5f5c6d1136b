"""Manifests checked against a subword tokenizer: a transcript it encodes with <unk> is reported by file and line."""

from __future__ import annotations

import os

import pytest
from conftest import DE_TEXTS, EN_TEXTS
from helpers import raises_input_error
from omegaconf import OmegaConf

from nemo_tl.data.validate import check_dataset_config, load_tokenizer, main, validate_manifest
from nemo_tl.transfer.tokenizer import train_tokenizer

pytestmark = pytest.mark.usefixtures("single_thread")

# DE_TEXTS lines holding a character that no English transcript has (1-based line numbers).
UNENCODABLE = {n: sorted(set(t) - set("".join(EN_TEXTS))) for n, t in enumerate(DE_TEXTS, start=1)}
UNENCODABLE = {n: chars for n, chars in UNENCODABLE.items() if chars}


@pytest.fixture(scope="module")
def en_tokenizer_dir(en_manifest, tmp_path_factory):
    return train_tokenizer([en_manifest], str(tmp_path_factory.mktemp("tok") / "en"), vocab_size=30)


def test_lines_the_tokenizer_cannot_encode_are_named_with_their_characters(en_tokenizer_dir, de_manifest):
    problems = validate_manifest(de_manifest, tokenizer=load_tokenizer(en_tokenizer_dir))
    assert {p.line for p in problems} == set(UNENCODABLE)
    for p in problems:
        assert p.is_error and p.file == de_manifest and p.key == "text" and "<unk>" in p.message
        assert all(c in p.message for c in UNENCODABLE[p.line]), (p, UNENCODABLE[p.line])
        assert "nemo_tl.transfer.tokenizer" in p.fix


def test_a_tokenizer_trained_on_the_target_passes_it(de_manifest, tmp_path):
    de = train_tokenizer([de_manifest], str(tmp_path / "de"), vocab_size=40)
    assert validate_manifest(de_manifest, tokenizer=load_tokenizer(de)) == []


def test_command_line(en_tokenizer_dir, de_manifest, capsys):
    assert main([de_manifest, "--tokenizer-dir", en_tokenizer_dir, "--no-audio"]) == 1
    out = capsys.readouterr().out
    first = min(UNENCODABLE)
    assert f"{de_manifest}:{first}: [text] characters the tokenizer cannot encode" in out
    assert f"{len(UNENCODABLE)} error(s)" in out


def test_command_line_bad_tokenizer_directory(tmp_path, de_manifest, en_tokenizer_dir, capsys):
    assert main([de_manifest, "--tokenizer-dir", str(tmp_path / "missing")]) == 2
    assert "model.tokenizer.dir" in capsys.readouterr().err
    assert main([de_manifest, "--tokenizer-dir", en_tokenizer_dir, "--tokenizer-type", "wpe"]) == 2
    assert "model.tokenizer.type" in capsys.readouterr().err
    assert main([de_manifest, "--tokenizer-dir", en_tokenizer_dir, "--labels", "de"]) == 2


def test_dataset_config_check_and_skip_invalid(en_tokenizer_dir, de_manifest):
    tok = load_tokenizer(en_tokenizer_dir)
    # NeMo's RNN-T BPE data sections carry `labels` (the pieces): with a tokenizer they are not characters.
    section = {"manifest_filepath": de_manifest, "sample_rate": 16000, "labels": ["▁o", "ne"]}
    raises_input_error(
        lambda: check_dataset_config(OmegaConf.create(section), labels=None, tokenizer=tok, section="train_ds"),
        f"{de_manifest}:{min(UNENCODABLE)}: \\[text\\] characters the tokenizer cannot encode",
    )
    kept = check_dataset_config(OmegaConf.create({**section, "skip_invalid": True}), labels=None, tokenizer=tok)
    with open(kept.manifest_filepath, encoding="utf-8") as f:
        assert sum(1 for _ in f) == len(DE_TEXTS) - len(UNENCODABLE)


def test_training_data_of_a_subword_model_is_checked_against_its_tokenizer(en_tokenizer_dir, de_manifest, tmp_path):
    from nemo.collections.asr.models import EncDecCTCModelBPE
    from tiny_asr import build_base

    from nemo_tl.models import TransferCTCBPEModel

    base = build_base(EncDecCTCModelBPE, str(tmp_path / "base.nemo"), tokenizer_dir=en_tokenizer_dir)
    model = TransferCTCBPEModel.from_base(base, tokenizer_dir=en_tokenizer_dir, vocabulary="same")
    data = {"manifest_filepath": de_manifest, "sample_rate": 16000, "batch_size": 2}
    raises_input_error(lambda: model.setup_training_data(data), f"{de_manifest}:{min(UNENCODABLE)}:", "<unk>")
    # the .nemo file brings its tokenizer to the command line
    assert main([de_manifest, "--labels", base]) == 1


def test_tokenizer_dir_type_mismatch(en_tokenizer_dir):
    raises_input_error(lambda: load_tokenizer(en_tokenizer_dir, "wpe"), "SentencePiece", "type", "bpe")
    os.makedirs(os.path.join(en_tokenizer_dir, "..", "empty"), exist_ok=True)
    raises_input_error(lambda: load_tokenizer(os.path.join(en_tokenizer_dir, "..", "empty")), "tokenizer")


def test_ctc_frames_are_counted_in_tokens(en_tokenizer_dir, en_manifest, tmp_path):
    from nemo.collections.asr.models import EncDecCTCModelBPE
    from tiny_asr import build_base

    from nemo_tl.data.frames import model_encoder_frames
    from nemo_tl.data.manifest import read_manifest
    from nemo_tl.data.synthetic import write_manifest
    from nemo_tl.transfer.base import load_base_model

    model = load_base_model(build_base(EncDecCTCModelBPE, str(tmp_path / "b.nemo"), tokenizer_dir=en_tokenizer_dir),
                            vocabulary="any", expected=EncDecCTCModelBPE)
    first = read_manifest(en_manifest)[0]
    long = write_manifest(str(tmp_path / "long.json"), [{**first, "text": " ".join(EN_TEXTS * 4)}])
    problems = validate_manifest(long, tokenizer=model.tokenizer, frames=model_encoder_frames(model))
    assert len(problems) == 1 and "tokens" in problems[0].message and "CTC cannot align it" in problems[0].message
