"""The espeak-ng corpus tool: text normalization, labels, splits, determinism, NeMo loading.

Needs an espeak-ng backend (`apt-get install espeak-ng` or `pip install espeakng-loader`):
without one these tests fail rather than skip.
"""

from __future__ import annotations

import filecmp
import json
import multiprocessing
import os
import subprocess
import sys

import pytest
import soundfile as sf

from nemo_tl.data import synth_corpus
from nemo_tl.data.manifest import audio_sha256
from nemo_tl.data.synth_corpus import (
    Utterance,
    describe_backend,
    get_backend,
    render,
    split_texts,
    synthesize_corpus,
)
from nemo_tl.data.texts import LANGUAGES, digit_texts, labels_for, normalize, text_pool
from nemo_tl.errors import InputError


def read_manifest(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tiny two-language corpus, synthesized with two worker processes."""
    out = str(tmp_path_factory.mktemp("corpus_a"))
    return out, synthesize_corpus(out, ["en", "de"], utterances=20, seed=3, jobs=2)


@pytest.mark.parametrize(
    "lang,raw,expected",
    [
        ("en", "Côte d’Ivoire & Guinea-Bissau, 'quoted' 42!", "cote d'ivoire guinea bissau quoted four two"),
        ("de", "Größe: STRASSE 3, Ärger — Café", "größe strasse drei ärger cafe"),
        ("ru", "Ёлка, Москва-3! (Россия)", "ёлка москва три россия"),
        ("hi", "अफ़्रीका। ५ किलोमीटर", "अफ़्रीका पाँच किलोमीटर"),
    ],
)
def test_normalize_per_language(lang, raw, expected):
    assert normalize(raw, lang) == expected


def test_hindi_nukta_letters_are_decomposed_into_labels():
    # U+095E (precomposed pha + nukta) becomes U+092B U+093C under NFC; both are labels.
    text = normalize("\u095e\u094d\u0930\u093e\u0902\u0938", "hi")
    assert "\u095e" not in text and set(text) <= set(labels_for("hi"))


def test_labels():
    assert labels_for("en") == [" ", *"abcdefghijklmnopqrstuvwxyz", "'"]
    assert labels_for("en-029") == labels_for("en")
    assert labels_for("de")[-4:] == ["ä", "ö", "ü", "ß"]
    for lang in LANGUAGES:
        labels = labels_for(lang)
        assert labels[0] == " " and len(labels) == len(set(labels))


@pytest.mark.parametrize("source", ["digits", "cldr", "mixed"])
def test_every_text_uses_only_labels(source):
    for lang in LANGUAGES:
        texts = text_pool(lang, source, seed=0, count=400)
        assert len(texts) == len(set(texts)) == 400
        assert set("".join(texts)) <= set(labels_for(lang)), lang


def test_cldr_gives_many_distinct_texts():
    assert len(text_pool("de", "cldr", seed=0, count=5000)) == 5000
    assert len(set(digit_texts("ru"))) == 11110


def test_text_splits_are_disjoint_and_deterministic():
    texts = text_pool("en", "digits", seed=1)
    a = split_texts(texts, {"train": 0.8, "dev": 0.1, "test": 0.1}, seed=1, lang="en")
    b = split_texts(texts, {"train": 0.8, "dev": 0.1, "test": 0.1}, seed=1, lang="en")
    assert a == b
    assert sum(len(v) for v in a.values()) == len(texts)
    assert not set(a["train"]) & set(a["dev"]) and not set(a["train"]) & set(a["test"])
    assert not set(a["dev"]) & set(a["test"])


def test_text_split_does_not_depend_on_corpus_size():
    for source in ("digits", "cldr"):
        small = split_texts(text_pool("de", source, seed=5, count=1000), {"train": 0.8, "dev": 0.2}, 5, "de")
        large = split_texts(text_pool("de", source, seed=5, count=3000), {"train": 0.8, "dev": 0.2}, 5, "de")
        assert set(small["dev"]) <= set(large["dev"]) and not set(small["dev"]) & set(large["train"])


def test_corpus_manifests(corpus):
    out, manifests = corpus
    assert set(manifests) == {"en", "de"} and set(manifests["en"]) == {"train", "dev", "test"}
    # The language is in the file name: NeMo names per-set validation metrics by manifest stem.
    assert manifests["de"]["dev"] == os.path.join(out, "de", "de_dev.json")
    stems = [os.path.splitext(os.path.basename(p))[0] for splits in manifests.values() for p in splits.values()]
    assert len(set(stems)) == len(stems) == 6
    for lang, splits in manifests.items():
        by_split = {s: read_manifest(p) for s, p in splits.items()}
        assert [len(v) for v in by_split.values()] == [16, 2, 2]
        texts = {s: {e["text"] for e in v} for s, v in by_split.items()}
        assert not texts["train"] & texts["dev"] and not texts["train"] & texts["test"]
        assert not texts["dev"] & texts["test"]
        for entry in (e for v in by_split.values() for e in v):
            assert entry["lang"] == lang and os.path.isabs(entry["audio_filepath"])
            assert set(entry["text"]) <= set(labels_for(lang))
            info = sf.info(entry["audio_filepath"])
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            assert entry["duration"] == pytest.approx(info.frames / 16000, abs=1e-3)
            assert 0.3 < entry["duration"] < 6.0
    summary = json.load(open(os.path.join(out, "corpus.json"), encoding="utf-8"))
    assert summary["command"].startswith("python -m nemo_tl.data.synth_corpus --langs en,de")
    assert summary["languages"]["de"]["splits"]["train"]["utterances"] == 16


def test_same_seed_gives_identical_corpus(corpus, tmp_path):
    out_a, manifests_a = corpus
    out_b = str(tmp_path)
    manifests_b = synthesize_corpus(out_b, ["en", "de"], utterances=20, seed=3, jobs=1)  # one process this time
    for lang in manifests_a:
        for split in manifests_a[lang]:
            a, b = read_manifest(manifests_a[lang][split]), read_manifest(manifests_b[lang][split])
            assert [e["audio_filepath"].replace(out_a, "") for e in a] == [
                e["audio_filepath"].replace(out_b, "") for e in b
            ]
            assert [(e["text"], e["duration"]) for e in a] == [(e["text"], e["duration"]) for e in b]
            for ea, eb in zip(a, b):
                assert filecmp.cmp(ea["audio_filepath"], eb["audio_filepath"], shallow=False)
    other = synthesize_corpus(str(tmp_path / "seed4"), ["en"], utterances=20, seed=4, jobs=1)
    first = [(e["text"], e["duration"]) for e in read_manifest(other["en"]["train"])]
    assert first != [(e["text"], e["duration"]) for e in read_manifest(manifests_a["en"]["train"])]


def test_manifests_load_in_nemo_char_dataset(corpus):
    from nemo.collections.asr.data.audio_to_text import AudioToCharDataset

    _, manifests = corpus
    for lang in ("en", "de"):
        labels = labels_for(lang)
        entries = read_manifest(manifests[lang]["train"])
        # NeMo's default "en" parser transliterates (ä -> a); the "base" parser keeps every label.
        ds = AudioToCharDataset(manifests[lang]["train"], labels, sample_rate=16000, parser="base")
        assert len(ds) == len(entries)
        audio, audio_len, tokens, tokens_len = ds[0]
        assert abs(int(audio_len) - entries[0]["duration"] * 16000) <= 1
        assert "".join(labels[i] for i in tokens[: int(tokens_len)].tolist()) == entries[0]["text"]


def test_hours_target_and_accent_lang_from_cli(tmp_path, capsys):
    manifests = synth_corpus.main(
        ["--langs", "en-029", "--hours", "0.004", "--out", str(tmp_path), "--jobs", "1", "--texts", "cldr"]
    )
    assert manifests["en-029"]["dev"] == str(tmp_path / "en-029" / "en-029_dev.json")
    assert str(tmp_path / "en-029" / "en-029_train.json") in capsys.readouterr().out  # says where they are
    summary = json.load(open(tmp_path / "corpus.json", encoding="utf-8"))
    info = summary["languages"]["en-029"]
    assert info["voice"] == "en-029" and info["base_language"] == "en"
    for split, frac in {"train": 0.8, "dev": 0.1, "test": 0.1}.items():
        entries = read_manifest(manifests["en-029"][split])
        seconds = sum(e["duration"] for e in entries)
        target = 0.004 * 3600 * frac
        assert seconds >= target > seconds - entries[-1]["duration"]  # stops at the first utterance past it
        assert {e["lang"] for e in entries} == {"en-029"}


_RENDER_IN_FRESH_PROCESS = """
import json, sys
from nemo_tl.data.synth_corpus import Utterance, get_backend, render
assert "espeakng_loader" not in sys.modules
utt = Utterance(sys.argv[1], "zwei drei", "de+f2", 175, 50, 0.8, 35.0, 0)
print(json.dumps(render(utt, get_backend("libespeak-ng"))))
"""


@pytest.mark.parametrize("backend", ["espeakng-loader", "libespeak-ng", "cli"])
def test_backend_synthesizes_speech(backend, tmp_path):
    """scripts/setup_env.sh installs all three backends (espeak-ng from Debian, espeakng-loader from PyPI)."""
    utt = Utterance(str(tmp_path / "x.wav"), "zwei drei", "de+f2", 175, 50, 0.8, 35.0, 0)
    if backend == "libespeak-ng" and "espeakng_loader" in sys.modules:
        # The wheel's libespeak-ng (same soname) is loaded in this process: use a fresh interpreter.
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        run = subprocess.run(
            [sys.executable, "-c", _RENDER_IN_FRESH_PROCESS, utt.path],
            capture_output=True, text=True, timeout=300, cwd=root,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        duration = json.loads(run.stdout.strip().splitlines()[-1])
    else:
        engine = get_backend(backend)
        # In a forked child: libespeak-ng state (pitch flutter) must not change in the test process.
        with multiprocessing.get_context("fork").Pool(1) as pool:
            duration = pool.apply(render, (utt, engine))
    audio, rate = sf.read(utt.path)
    assert rate == 16000 and 0.4 < duration < 3.0 and audio.std() > 0.05


def test_some_backend_is_available():
    get_backend("auto")  # CI installs espeak-ng: no backend is a failure, not a skip


def test_describe_backend_names_the_one_that_spoke():
    """scripts/setup_env.sh prints this line: the backend the corpus tool will use."""
    with multiprocessing.get_context("fork").Pool(1) as pool:  # keep libespeak-ng's state out of this process
        line = pool.apply(describe_backend, ("espeakng-loader",))
    assert line.startswith("espeakng-loader (espeak-ng ") and line.endswith("from the espeakng-loader wheel)")


def test_unknown_language_or_voice(tmp_path):
    with pytest.raises(InputError, match="unknown language 'xx'"):
        synthesize_corpus(str(tmp_path), ["en", "xx"], utterances=5)
    with pytest.raises(InputError, match="no voice for 'en-au'.*\n.*en-gb-scotland"):
        synthesize_corpus(str(tmp_path), ["en-au"], utterances=5)
    with pytest.raises(InputError, match="splits"):
        synthesize_corpus(str(tmp_path), ["en"], utterances=5, splits="train=0.5,dev=0.1")


def test_missing_backend_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)
    monkeypatch.setattr(synth_corpus.shutil, "which", lambda name: None)
    monkeypatch.setattr(synth_corpus.ctypes.util, "find_library", lambda name: None)
    with pytest.raises(InputError, match=r"apt-get install espeak-ng.*pip install espeakng-loader"):
        get_backend("auto")


def _synth_into(out: str, log: str | None = None) -> None:
    import contextlib

    with open(log or os.devnull, "w") as f, contextlib.redirect_stdout(f):
        synthesize_corpus(out, ["en"], utterances=12, seed=3, jobs=1)


def test_same_request_reuses_the_corpus_and_a_changed_file_is_synthesized_again(tmp_path, capsys):
    """A corpus already in the folder with the same request and the same audio is reused (nothing rewritten);
    a damaged wav or another request makes it synthesize again, to the same audio as before."""
    out = str(tmp_path)
    first = synthesize_corpus(out, ["en"], utterances=12, seed=3, jobs=1)
    # what the scripts report as the corpus's identity is the audio's own digest
    assert synth_corpus.recorded_audio_sha256(out) == {f"en_{split}": audio_sha256(path)
                                                       for split, path in first["en"].items()}
    wavs = [e["audio_filepath"] for e in read_manifest(first["en"]["train"])]
    before = {w: (os.stat(w).st_mtime_ns, open(w, "rb").read()) for w in wavs}
    capsys.readouterr()
    assert synthesize_corpus(out, ["en"], utterances=12, seed=3, jobs=2) == first  # jobs do not change the audio
    assert "reused" in capsys.readouterr().out
    assert {w: (os.stat(w).st_mtime_ns, open(w, "rb").read()) for w in wavs} == before

    with open(wavs[0], "r+b") as f:  # a damaged file: synthesized again
        f.seek(100)
        f.write(b"\x00\x01" * 50)
    assert synthesize_corpus(out, ["en"], utterances=12, seed=3, jobs=1) == first
    assert "reused" not in capsys.readouterr().out
    assert open(wavs[0], "rb").read() == before[wavs[0]][1]

    synthesize_corpus(out, ["en"], utterances=12, seed=4, jobs=1)  # another request
    assert "reused" not in capsys.readouterr().out
    assert [e["audio_filepath"] for e in read_manifest(first["en"]["train"])] == wavs  # same names, new audio
    assert open(wavs[0], "rb").read() != before[wavs[0]][1]


def test_two_processes_synthesizing_one_folder_both_get_the_whole_corpus(tmp_path):
    """Two synthesizers started on one folder at once: the second waits for the first and reuses its corpus,
    instead of deleting the audio the first is writing."""
    out = str(tmp_path / "shared")
    ctx = multiprocessing.get_context("fork")
    logs = [str(tmp_path / f"log{i}.txt") for i in range(2)]
    procs = [ctx.Process(target=_synth_into, args=(out, log)) for log in logs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert sorted("reused" in open(log).read() for log in logs) == [False, True]  # one synthesized, one reused
    alone = str(tmp_path / "alone")
    _synth_into(alone)

    for split in ("train", "dev", "test"):
        shared_manifest = os.path.join(out, "en", f"en_{split}.json")
        assert audio_sha256(shared_manifest) == audio_sha256(os.path.join(alone, "en", f"en_{split}.json"))
