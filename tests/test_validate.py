"""Manifest validation: every bad input is reported with its file, line and key, before training."""

from __future__ import annotations

import io
import json
import os
import runpy
import sys
import tarfile
import unicodedata
import warnings
from contextlib import redirect_stdout

import numpy as np
import pytest
import soundfile as sf
from conftest import DE_LABELS, EN_LABELS, ROOT
from helpers import count_calls
from omegaconf import OmegaConf

from nemo_tl.data import Problem, check_dataset_config, validate_manifest
from nemo_tl.data.validate import main
from nemo_tl.errors import InputError

HI_LABELS = [" ", *"कखगचजतदनपमरलवसह", "ा", "ि", "ी", "ु", "ू", "े", "ो", "ं", "्"]


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    """Three short wavs: two at 16 kHz (0.5 s, 1.0 s), one at 8 kHz (0.5 s)."""
    d = tmp_path_factory.mktemp("wavs")
    out = {}
    for name, seconds, sr in (("a", 0.5, 16000), ("b", 1.0, 16000), ("low", 0.5, 8000)):
        path = str(d / f"{name}.wav")
        sf.write(path, np.zeros(int(seconds * sr), dtype=np.float32), sr)
        out[name] = path
    return out


def line(wav: str, text: str = "one two", duration: float = 0.5, **extra) -> dict:
    return {"audio_filepath": wav, "duration": duration, "text": text, **extra}


def write_lines(path, lines: list) -> str:
    """Write raw lines: dicts as JSON, strings as they are."""
    with open(path, "w", encoding="utf-8") as f:
        for x in lines:
            f.write((json.dumps(x, ensure_ascii=False) if isinstance(x, dict) else x) + "\n")
    return str(path)


def ds_config(manifest, **kw):
    return OmegaConf.create({"manifest_filepath": manifest, "sample_rate": 16000, "labels": EN_LABELS, **kw})


def assert_reported(manifest: str, line_no: int, key: str, *, contains: str = "", **kw) -> Problem:
    """The one error of ``manifest`` is at ``line_no``/``key``, and the config check raises it."""
    errors = [p for p in validate_manifest(manifest, **kw) if p.severity == "error"]
    assert [(p.file, p.line, p.key) for p in errors] == [(manifest, line_no, key)], errors
    assert contains in errors[0].message
    assert errors[0].fix
    cfg = ds_config(manifest)
    with pytest.raises(InputError) as e:
        check_dataset_config(cfg, labels=kw.get("labels"), languages=kw.get("languages"), section="train_ds")
    msg = str(e.value)
    assert f"{manifest}:{line_no}: [{key}]" in msg
    # skip_invalid can drop bad lines, not a missing or empty file: the hint is offered only for lines.
    assert ("train_ds.skip_invalid: true" in msg) == (line_no > 0)
    return errors[0]


# ---- clean input ------------------------------------------------------------------------


def test_clean_manifest_has_no_problems(en_manifest):
    assert validate_manifest(en_manifest, labels=EN_LABELS, languages=["en"], sample_rate=16000) == []
    cfg = ds_config(en_manifest)
    assert check_dataset_config(cfg, labels=EN_LABELS, languages=["en"]) is cfg


def test_clean_german_and_hindi_labels(de_manifest, tmp_path, wavs):
    assert validate_manifest(de_manifest, labels=DE_LABELS, languages=["de"], sample_rate=16000) == []
    hi = write_lines(tmp_path / "hi.json", [line(wavs["a"], "कमल नमक"), line(wavs["a"], "हिंदी")])
    assert validate_manifest(hi, labels=HI_LABELS) == []


def test_relative_audio_path_resolves_against_manifest_dir(tmp_path, wavs, monkeypatch):
    d = tmp_path / "corpus"
    (d / "audio").mkdir(parents=True)
    os.link(wavs["a"], d / "audio" / "x.wav")
    manifest = write_lines(d / "m.json", [line("audio/x.wav")])
    monkeypatch.chdir(tmp_path)  # not the manifest's directory
    assert validate_manifest(manifest, labels=EN_LABELS) == []


def test_problem_str_names_file_line_key_and_fix():
    p = Problem("m.json", 3, "text", "empty text", "add the transcript")
    assert str(p) == "m.json:3: [text] empty text (fix: add the transcript)"
    assert p.severity == "error"


# ---- one test per bad input ---------------------------------------------------------------


def test_missing_manifest_file(tmp_path):
    missing = str(tmp_path / "nope.json")
    assert_reported(missing, 0, "manifest_filepath", contains="not found")


def test_empty_manifest_file(tmp_path):
    empty = write_lines(tmp_path / "empty.json", ["", "   "])
    assert_reported(empty, 0, "manifest_filepath", contains="empty")


def test_malformed_json_line(tmp_path, wavs):
    m = write_lines(
        tmp_path / "m.json", [line(wavs["a"]), '{"audio_filepath": "x.wav", "duration": 1.0', line(wavs["a"])]
    )
    assert_reported(m, 2, "json", contains="malformed JSON")


def test_json_line_that_is_not_an_object(tmp_path, wavs):
    m = write_lines(tmp_path / "m.json", [line(wavs["a"]), "[1, 2]"])
    assert_reported(m, 2, "json", contains="not an object")


def test_blank_lines_are_skipped_and_numbers_stay_physical(tmp_path, wavs):
    m = write_lines(tmp_path / "m.json", [line(wavs["a"]), "", line(wavs["a"], text="")])
    assert_reported(m, 3, "text", contains="empty text")


@pytest.mark.parametrize("key", ["audio_filepath", "duration", "text"])
def test_missing_key(tmp_path, wavs, key):
    bad = line(wavs["a"])
    del bad[key]
    m = write_lines(tmp_path / "m.json", [line(wavs["a"]), bad])
    assert_reported(m, 2, key, contains=f"missing key '{key}'")


def test_missing_audio_file(tmp_path, wavs):
    m = write_lines(tmp_path / "m.json", [line(wavs["a"]), line("audio/gone.wav")])
    p = assert_reported(m, 2, "audio_filepath", contains="audio file not found: audio/gone.wav")
    assert str(tmp_path) in p.message  # says where relative paths were looked for


def test_unreadable_audio_file(tmp_path, wavs):
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not a wav file" * 10)
    m = write_lines(tmp_path / "m.json", [line(wavs["a"]), line(str(junk))])
    assert_reported(m, 2, "audio_filepath", contains="unreadable audio")


@pytest.mark.parametrize("duration", [0, -1.5])
def test_non_positive_duration(tmp_path, wavs, duration):
    m = write_lines(tmp_path / "m.json", [line(wavs["a"]), line(wavs["a"], duration=duration)])
    assert_reported(m, 2, "duration", contains="not positive")


def test_duration_not_a_number(tmp_path, wavs):
    m = write_lines(tmp_path / "m.json", [line(wavs["a"]), line(wavs["a"], duration="0.5")])
    assert_reported(m, 2, "duration", contains="must be a number")


def test_duration_more_than_ten_percent_off(tmp_path, wavs):
    m = write_lines(
        tmp_path / "m.json",
        [line(wavs["b"], duration=1.05), line(wavs["b"], duration=0.8), line(wavs["b"], duration=0.95)],
    )
    p = assert_reported(m, 2, "duration", contains="20% off")
    assert p.fix == "set duration to 1.000"


def test_segment_past_the_end_of_the_audio(tmp_path, wavs):
    m = write_lines(
        tmp_path / "m.json",
        [line(wavs["b"], duration=0.5, offset=0.5), line(wavs["b"], duration=0.8, offset=0.5)],
    )
    assert_reported(m, 2, "duration", contains="runs past the end")


def test_empty_text(tmp_path, wavs):
    m = write_lines(tmp_path / "m.json", [line(wavs["a"]), line(wavs["a"], text="  ")])
    assert_reported(m, 2, "text", contains="empty text")


def test_characters_outside_the_vocabulary_are_listed(tmp_path, wavs):
    m = write_lines(tmp_path / "m.json", [line(wavs["a"]), line(wavs["a"], text="größe süß")])
    p = assert_reported(m, 2, "text", labels=EN_LABELS)
    assert p.message == "characters not in the vocabulary: 'ö', 'ß', 'ü'"
    # The same line is clean for a German vocabulary.
    assert validate_manifest(m, labels=DE_LABELS) == []


def test_decomposed_unicode_is_explained(tmp_path, wavs):
    m = write_lines(tmp_path / "m.json", [line(wavs["a"], text=unicodedata.normalize("NFD", "süß"))])
    (p,) = validate_manifest(m, labels=DE_LABELS)
    assert (p.line, p.key) == (1, "text") and "(U+0308)" in p.message
    assert "NFC" in p.fix


def test_uppercase_follows_nemos_normalize_transcripts(tmp_path, wavs):
    m = write_lines(tmp_path / "m.json", [line(wavs["a"], text="Hello, World!")])
    # NeMo's default (normalize_transcripts: false) keeps case and punctuation: they are out of vocabulary.
    (p,) = validate_manifest(m, labels=EN_LABELS)
    assert (p.line, p.key) == (1, "text") and "'H'" in p.message and "','" in p.message
    assert "normalize_transcripts" in p.fix
    # With normalization, NeMo's en parser lowercases and drops punctuation: NeMo accepts it, so do we.
    assert validate_manifest(m, labels=EN_LABELS, normalize=True) == []
    assert check_dataset_config(ds_config(m, normalize_transcripts=True), labels=EN_LABELS) is not None


def test_normalization_that_destroys_vocabulary_letters_is_an_error(tmp_path, wavs):
    m = write_lines(tmp_path / "m.json", [line(wavs["a"], text="Grüße")])
    (p,) = validate_manifest(m, labels=DE_LABELS, normalize=True, parser="en")
    assert p.severity == "error" and (p.line, p.key) == (1, "text")
    assert "the 'en' normalizer turns 'grüße' into 'grusse'" in p.message and p.fix.startswith("set parser: base")
    assert validate_manifest(m, labels=DE_LABELS, normalize=True, parser="base") == []
    assert validate_manifest(m, labels=DE_LABELS, normalize=True) == []  # no parser: base for these labels


def test_missing_lang(tmp_path, wavs):
    m = write_lines(tmp_path / "m.json", [line(wavs["a"], lang="en"), line(wavs["a"])])
    assert_reported(m, 2, "lang", contains="missing key 'lang'", languages=["en", "de"])


def test_unknown_lang(tmp_path, wavs):
    m = write_lines(tmp_path / "m.json", [line(wavs["a"], lang="en"), line(wavs["a"], lang="fr")])
    p = assert_reported(m, 2, "lang", contains="unknown language 'fr'", languages=["en", "de"])
    assert "de, en" in p.message


def test_per_language_vocabularies(tmp_path, wavs):
    m = write_lines(
        tmp_path / "m.json",
        [line(wavs["a"], "süß", lang="de"), line(wavs["a"], "süß", lang="en"), line(wavs["a"], "one", lang="de")],
    )
    (p,) = validate_manifest(m, labels={"en": EN_LABELS, "de": DE_LABELS})
    assert (p.line, p.key) == (2, "text")
    assert p.message == "characters not in the vocabulary of language 'en': 'ü', 'ß'"


def test_sample_rate_mismatch_is_a_warning_not_an_error(tmp_path, wavs):
    m = write_lines(tmp_path / "m.json", [line(wavs["a"]), line(wavs["low"]), line(wavs["low"])])
    (p,) = validate_manifest(m, labels=EN_LABELS, sample_rate=16000)
    assert p.severity == "warning"
    assert (p.file, p.line, p.key) == (m, 2, "sample_rate")
    assert "8000 Hz" in p.message and "resampled" in p.message and "2 line(s)" in p.message
    cfg = ds_config(m)
    assert check_dataset_config(cfg, labels=EN_LABELS) is cfg  # no error, config unchanged


def test_every_problem_is_reported_and_the_message_is_capped(tmp_path, wavs):
    lines = [line(wavs["a"])] + [line(wavs["a"], text="") for _ in range(60)]
    m = write_lines(tmp_path / "m.json", lines)
    assert [p.line for p in validate_manifest(m)] == list(range(2, 62))
    with pytest.raises(InputError) as e:
        check_dataset_config(ds_config(m), labels=EN_LABELS)
    msg = str(e.value)
    assert f"{m}:51: [text]" in msg and f"{m}:52: [text]" not in msg
    assert "... and 10 more" in msg
    assert "skip_invalid: true" in msg


# ---- dataset configs ------------------------------------------------------------------------


def _bad_and_good(tmp_path, wavs):
    d = tmp_path / "corpus"
    (d / "audio").mkdir(parents=True)
    os.link(wavs["a"], d / "audio" / "x.wav")
    a = write_lines(
        d / "a.json",
        [line("audio/x.wav"), line("audio/gone.wav"), line("audio/x.wav", text="süß"), line("audio/x.wav", text="")],
    )
    b = write_lines(d / "b.json", [line(wavs["a"]), line(wavs["a"], "two")])
    return a, b


def test_skip_invalid_writes_filtered_copies_and_leaves_originals(tmp_path, wavs, monkeypatch):
    a, b = _bad_and_good(tmp_path, wavs)
    before = {p: open(p, "rb").read() for p in (a, b)}
    logged = []
    from nemo.utils import logging

    monkeypatch.setattr(logging, "warning", lambda msg, *args, **kw: logged.append(msg))
    monkeypatch.chdir(ROOT)
    cfg = ds_config([a, b], skip_invalid=True)
    new = check_dataset_config(cfg, labels=EN_LABELS, section="train_ds")

    assert {p: open(p, "rb").read() for p in (a, b)} == before  # originals byte-identical
    assert list(cfg.manifest_filepath) == [a, b]  # the caller's config is not modified
    filtered, same = new.manifest_filepath
    assert same == b and filtered != a and os.path.dirname(filtered) != os.path.dirname(a)
    kept = [json.loads(x) for x in open(filtered, encoding="utf-8")]
    assert len(kept) == 1 and kept[0]["text"] == "one two"
    assert os.path.isabs(kept[0]["audio_filepath"]) and os.path.isfile(kept[0]["audio_filepath"])
    assert validate_manifest(filtered, labels=EN_LABELS) == []
    (msg,) = [m for m in logged if "dropped" in m]
    assert "dropped 3 of 4 lines" in msg and a in msg
    assert "1 missing audio" in msg and "1 characters not in vocabulary" in msg and "1 empty text" in msg


def test_skip_invalid_keeps_comma_string_and_nested_list_structure(tmp_path, wavs):
    a, b = _bad_and_good(tmp_path, wavs)
    new = check_dataset_config(ds_config(f"{a},{b}", skip_invalid=True), labels=EN_LABELS)
    first, second = new.manifest_filepath.split(",")
    assert first != a and second == b
    buckets = check_dataset_config(ds_config([[a], [b]], skip_invalid=True), labels=EN_LABELS)
    assert OmegaConf.to_container(buckets.manifest_filepath)[1] == [b]
    assert buckets.manifest_filepath[0][0] != a


def test_skip_invalid_on_a_model_section_keeps_interpolations_and_struct_mode(tmp_path, wavs):
    a, _ = _bad_and_good(tmp_path, wavs)
    model_cfg = OmegaConf.create(
        {
            "sample_rate": 16000,
            "labels": EN_LABELS,
            "train_ds": {
                "manifest_filepath": a,
                "sample_rate": "${sample_rate}",
                "labels": "${labels}",
                "skip_invalid": True,
            },
        }
    )
    OmegaConf.set_struct(model_cfg, True)
    new = check_dataset_config(model_cfg.train_ds, labels=None)  # labels fall back to train_ds.labels
    assert new.sample_rate == 16000 and new.manifest_filepath != a
    assert model_cfg.train_ds.manifest_filepath == a
    assert len(open(new.manifest_filepath).readlines()) == 1


def test_read_manifest_names_the_bad_line(tmp_path, wavs):
    from nemo_tl.data.manifest import read_manifest

    m = write_lines(tmp_path / "m.json", [line(wavs["a"]), "", "{bad"])
    with pytest.raises(InputError, match=rf"{m}:3: malformed JSON"):
        read_manifest(m)


def test_skip_invalid_still_fails_when_nothing_is_left(tmp_path, wavs):
    m = write_lines(tmp_path / "m.json", [line("gone.wav"), line(wavs["a"], text="")])
    with pytest.raises(InputError) as e:
        check_dataset_config(ds_config(m, skip_invalid=True), labels=EN_LABELS)
    assert "every line" in str(e.value) and f"{m}:1: [audio_filepath]" in str(e.value)


def test_config_without_manifest_is_returned_unchanged():
    cfg = OmegaConf.create({"manifest_filepath": None, "sample_rate": 16000})
    assert check_dataset_config(cfg, labels=EN_LABELS) is cfg


def test_large_manifests_read_each_audio_header_once_and_decode_nothing(tmp_path, wavs, monkeypatch):
    """What validating 100k lines in seconds rests on (timed by ``bench/bench_validate.py``): each
    distinct audio file's header is read once, however many lines name it; no samples of a PCM
    file are decoded; the work per line is constant (no parser or file read per line)."""
    opened = []

    class HeaderOnly(sf.SoundFile):
        def __init__(self, file, *args, **kwargs):
            opened.append(file)
            super().__init__(file, *args, **kwargs)

        def read(self, *args, **kwargs):
            raise AssertionError("validation decoded audio samples")

        def blocks(self, *args, **kwargs):
            raise AssertionError("validation decoded audio samples")

    monkeypatch.setattr(sf, "SoundFile", HeaderOnly)
    entries = [json.dumps(line(wavs["a"])) + "\n", json.dumps(line(wavs["b"], duration=1.0)) + "\n"]

    def validate(lines: int) -> int:
        m = tmp_path / f"m{lines}.json"
        m.write_text("".join(entries[i % 2] for i in range(lines)))
        opened.clear()
        calls, problems = count_calls(lambda: validate_manifest(str(m), labels=EN_LABELS, sample_rate=16000))
        assert problems == []
        assert sorted(opened) == sorted(os.path.abspath(wavs[k]) for k in "ab")  # once per file, not per line
        return calls

    validate(10)  # NeMo's text parser is built on first use
    small, medium, large = validate(1000), validate(2000), validate(4000)
    per_line = (medium - small) / 1000
    assert abs((large - medium) / 2000 - per_line) <= 0.1 * per_line, (small, medium, large)  # linear
    assert per_line < 1000, per_line


# ---- command line ----------------------------------------------------------------------------


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


def test_cli_exit_codes_and_output(tmp_path, wavs, en_manifest):
    code, out = run_cli(en_manifest, "--labels", "".join(EN_LABELS), "--languages", "en,de")
    assert code == 0 and "0 error(s)" in out

    bad = write_lines(tmp_path / "bad.json", [line(wavs["a"], "ja"), line(wavs["a"], "süß"), "{oops"])
    code, out = run_cli(en_manifest, bad, "--labels", "".join(EN_LABELS))
    assert code == 1
    assert f"{bad}:2: [text] characters not in the vocabulary: 'ü', 'ß'" in out
    assert f"{bad}:3: [json] malformed JSON" in out
    assert "2 error(s)" in out and "2 manifest(s)" in out

    code, out = run_cli(bad.replace("bad", "low"), "--sample-rate", "16000")
    assert code == 1 and "manifest file not found" in out


def test_cli_warnings_exit_zero(tmp_path, wavs):
    m = write_lines(tmp_path / "m.json", [line(wavs["low"])])
    code, out = run_cli(m, "--sample-rate", "16000")
    assert code == 0
    assert f"{m}:1: [sample_rate] warning:" in out and "resampled" in out


def test_cli_labels_from_yaml_and_nemo(tmp_path, wavs):
    m = write_lines(tmp_path / "m.json", [line(wavs["a"], "grüße"), line(wavs["low"], "one")])
    model_cfg = {"sample_rate": 16000, "labels": DE_LABELS, "train_ds": {"normalize_transcripts": False}}
    yaml_path = tmp_path / "model.yaml"
    OmegaConf.save(OmegaConf.create({"model": model_cfg}), yaml_path)
    code, out = run_cli(m, "--labels", str(yaml_path))
    assert code == 0 and "[sample_rate] warning" in out  # the model's sample rate is used

    nemo = tmp_path / "model.nemo"
    data = OmegaConf.to_yaml(OmegaConf.create({**model_cfg, "labels": EN_LABELS})).encode()
    with tarfile.open(nemo, "w:gz") as tar:
        info = tarfile.TarInfo("./model_config.yaml")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    code, out = run_cli(m, "--labels", str(nemo))
    assert code == 1 and f"{m}:1: [text] characters not in the vocabulary: 'ü', 'ß'" in out

    truncated = tmp_path / "bad.nemo"
    truncated.write_bytes(nemo.read_bytes()[:20])
    assert run_cli(m, "--labels", str(truncated))[0] == 2


def test_cli_runs_as_a_module(tmp_path, wavs, monkeypatch):
    """``python -m nemo_tl.data.validate`` (run in-process: a subprocess would re-import NeMo, ~10 s)."""
    m = write_lines(tmp_path / "m.json", [line(wavs["a"]), line(wavs["a"], text="")])
    monkeypatch.setattr(sys, "argv", ["validate", m, "--labels", " abcdefghijklmnopqrstuvwxyz'"])
    out = io.StringIO()
    with pytest.raises(SystemExit) as e, redirect_stdout(out), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "found in sys.modules": it is imported above
        runpy.run_module("nemo_tl.data.validate", run_name="__main__")
    assert e.value.code == 1
    assert f"{m}:2: [text] empty text" in out.getvalue()
