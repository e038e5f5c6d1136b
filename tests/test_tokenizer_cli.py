"""python -m nemo_tl.transfer.tokenizer: the target tokenizer from the target manifests."""

from __future__ import annotations

import json
import os

from conftest import DE_TEXTS
from helpers import raises_input_error
from nemo.collections.common.tokenizers.sentencepiece_tokenizer import SentencePieceTokenizer

from nemo_tl.transfer.tokenizer import TOKENIZER_LAYOUT, main, train_tokenizer


def test_writes_the_layout_nemo_reads_and_encodes_the_target_text(de_manifest, tmp_path, capsys):
    out = str(tmp_path / "tok" / "de_bpe")
    assert main([de_manifest, "--out", out, "--vocab-size", "40"]) == 0
    assert sorted(os.listdir(out)) == sorted(TOKENIZER_LAYOUT)  # nothing else, no leftovers beside it
    assert os.listdir(tmp_path / "tok") == ["de_bpe"]
    assert f"model.tokenizer.dir={out}" in capsys.readouterr().out
    tok = SentencePieceTokenizer(os.path.join(out, "tokenizer.model"))
    for text in DE_TEXTS:
        assert tok.ids_to_text(tok.text_to_ids(text)) == text
        assert tok.tokenizer.unk_id() not in tok.text_to_ids(text)
    with open(os.path.join(out, "vocab.txt"), encoding="utf-8") as f:
        assert "ü" in f.read()


def test_unigram_type(en_manifest, tmp_path):
    out = train_tokenizer([en_manifest], str(tmp_path / "uni"), vocab_size=30, tokenizer_type="unigram")
    tok = SentencePieceTokenizer(os.path.join(out, "tokenizer.model"))
    assert tok.ids_to_text(tok.text_to_ids("seven")) == "seven"


def test_refuses_an_existing_tokenizer_directory_and_leaves_it_alone(de_manifest, en_manifest, tmp_path):
    out = str(tmp_path / "tok")
    train_tokenizer([en_manifest], out, vocab_size=30)
    before = {name: (tmp_path / "tok" / name).read_bytes() for name in TOKENIZER_LAYOUT}
    raises_input_error(lambda: train_tokenizer([de_manifest], out, vocab_size=40), "--out", "already exists",
                       "create_spt_model")
    assert {name: (tmp_path / "tok" / name).read_bytes() for name in TOKENIZER_LAYOUT} == before
    os.makedirs(tmp_path / "empty")
    train_tokenizer([de_manifest], str(tmp_path / "empty"), vocab_size=40)  # an empty directory is fine


def test_bad_manifests_are_named_by_file_and_line(tmp_path, de_manifest):
    bad = tmp_path / "bad.json"
    good = json.dumps({"audio_filepath": "a.wav", "duration": 1.0, "text": "eins"})
    bad.write_text(good + "\n\n{not json\n", encoding="utf-8")
    raises_input_error(lambda: train_tokenizer([str(bad)], str(tmp_path / "t1")), f"{bad}:3", "JSON")
    bad.write_text(good + "\n" + json.dumps({"audio_filepath": "b.wav", "duration": 1.0}) + "\n", encoding="utf-8")
    raises_input_error(lambda: train_tokenizer([de_manifest, str(bad)], str(tmp_path / "t2")), f"{bad}:2", "text")
    raises_input_error(lambda: train_tokenizer([str(tmp_path / "nope.json")], str(tmp_path / "t3")), "does not exist")
    assert not os.path.exists(tmp_path / "t1") and not os.path.exists(tmp_path / "t2")


def test_bad_vocab_size(de_manifest, tmp_path):
    raises_input_error(lambda: train_tokenizer([de_manifest], str(tmp_path / "t"), vocab_size=1), "--vocab-size")


def test_command_line_exit_status_and_message(de_manifest, tmp_path, capsys):
    out = tmp_path / "tok"
    out.mkdir()
    (out / "tokenizer.model").write_bytes(b"old")
    assert main([de_manifest, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "already exists" in err
    assert (out / "tokenizer.model").read_bytes() == b"old"
