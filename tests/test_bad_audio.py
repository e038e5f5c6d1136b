"""Audio and transcripts that NeMo would train on silently wrong: each is stopped before training.

Multi-channel audio, NaN/Inf samples, duration filters that leave nothing, and transcripts that
CTC cannot align to their audio: through the validator, its command line, and model construction.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from nemo_tl.data.frames import config_encoder_frames, ctc_frames_needed, model_encoder_frames
from nemo_tl.data.synthetic import make_tone_manifest, tone_audio, write_manifest
from nemo_tl.data.validate import check_dataset_config, check_manifests, main, validate_manifest
from nemo_tl.models import TransferCTCModel
from tests.conftest import EN_LABELS, load_conf
from tests.helpers import cpu_trainer, data_cfg, raises_input_error

SR = 16000


def _wav(path, samples: np.ndarray, subtype: str = "PCM_16") -> str:
    sf.write(str(path), samples, SR, subtype=subtype)
    return str(path)


def _line(wav: str, text: str = "one", **extra) -> dict:
    return {"audio_filepath": wav, "duration": round(sf.info(wav).frames / SR, 4), "text": text, **extra}


def _tone(path, text: str = "one", seconds: float | None = None, subtype: str = "PCM_16") -> str:
    audio = tone_audio(text) if seconds is None else 0.1 * np.sin(np.arange(int(seconds * SR)) / 7.0)
    return _wav(path, audio.astype(np.float32), subtype)


def _errors(manifest: str, **kw) -> list:
    return [p for p in validate_manifest(manifest, **kw) if p.is_error]


def _from_base(base_nemo, train: str, train_ds: dict | None = None, **sections):
    """Builds a TransferCTCModel training on ``train`` (with ``train_ds`` changes) when called."""
    cfg = {"train_ds": {**data_cfg(train, EN_LABELS), **(train_ds or {})}, **sections}
    return lambda: TransferCTCModel.from_base(base_nemo, labels=EN_LABELS, cfg=cfg)


@pytest.fixture(scope="module")
def tiny_frames():
    """The encoder frames of the tiny QuartzNet (10 ms hop, stride 2: one frame per 320 samples)."""
    return config_encoder_frames(load_conf("quartznet_tiny"))


# ---------------------------------------------------------------------------- 1. multi-channel audio
@pytest.mark.parametrize("channels", [2, 6])
def test_multichannel_audio_is_an_error_of_its_line(tmp_path, channels):
    mono = _tone(tmp_path / "mono.wav", "one")
    multi = _wav(tmp_path / "multi.wav", np.stack([tone_audio("two")] * channels, axis=1))
    m = write_manifest(str(tmp_path / "m.json"), [_line(mono), _line(multi, "two")])
    (error,) = _errors(m, labels=EN_LABELS)
    assert (error.line, error.key) == (2, "audio_filepath")
    assert f"{channels} channels" in error.message and "multi.wav" in error.message
    assert "sox in.wav -c 1 out.wav" in error.fix

    cfg = OmegaConf.create(data_cfg(m, EN_LABELS))
    raises_input_error(lambda: check_dataset_config(cfg, labels=EN_LABELS, section="train_ds"), rf"m\.json:2.*{channels} channels")
    # NeMo downmixes when the dataset says how: then it is no error
    cfg.channel_selector = "average"
    check_dataset_config(cfg, labels=EN_LABELS, section="train_ds")


def test_multichannel_audio_stops_model_construction_and_the_cli(base_nemo, tmp_path, capsys):
    stereo = _wav(tmp_path / "stereo.wav", np.stack([tone_audio("one")] * 2, axis=1))
    m = write_manifest(str(tmp_path / "train.json"), [_line(_tone(tmp_path / "a.wav")), _line(stereo)])
    raises_input_error(_from_base(base_nemo, m), r"train\.json:2: \[audio_filepath\] 2 channels", r"sox in\.wav -c 1 out\.wav")

    assert main([m]) == 1
    assert "train.json:2: [audio_filepath] 2 channels" in capsys.readouterr().out
    # the check other entry points (transcribe, teacher caches) call: audio only, no text needed
    raises_input_error(lambda: check_manifests([m], audio_only=True, where="dataset_manifest"), r"dataset_manifest.*2 channels")


# ---------------------------------------------------------------------------- 5. NaN / Inf samples
@pytest.mark.parametrize("value, subtype", [(math.nan, "FLOAT"), (math.inf, "FLOAT"), (-math.inf, "DOUBLE")])
def test_float_audio_with_nonfinite_samples_is_an_error(tmp_path, value, subtype):
    audio = tone_audio("one")
    audio[100:103] = value
    bad = _wav(tmp_path / "bad.wav", audio, subtype)
    good = _wav(tmp_path / "good.wav", tone_audio("two"), subtype)  # finite float audio is fine
    m = write_manifest(str(tmp_path / "m.json"), [_line(good, "two"), _line(bad)])
    (error,) = _errors(m, labels=EN_LABELS)
    assert (error.line, error.key) == (2, "audio_filepath")
    assert "bad.wav holds 3 NaN or Inf sample(s)" in error.message


def test_nonfinite_audio_stops_model_construction(base_nemo, tmp_path):
    audio = tone_audio("two")
    audio[-1] = math.nan
    m = write_manifest(str(tmp_path / "train.json"), [_line(_tone(tmp_path / "a.wav")),
                                                     _line(_wav(tmp_path / "nan.wav", audio, "FLOAT"), "two")])
    raises_input_error(_from_base(base_nemo, m), r"train\.json:2: \[audio_filepath\].*nan\.wav holds 1 NaN or Inf")


class _WithSampleIds(TransferCTCModel):
    """Trains on batches that carry NeMo's sample ids (as distillation from a teacher cache does)."""

    def training_step(self, batch, batch_idx):
        return super().training_step(batch[:4], batch_idx)


@pytest.mark.parametrize("sample_ids", [False, True])
def test_skipped_step_names_the_utterance_with_nonfinite_audio(base_nemo, tmp_path, monkeypatch, sample_ids):
    """Audio that turns NaN after validation: the guard's warning says which utterance of the batch it was."""
    from nemo.utils import logging

    wavs = [_tone(tmp_path / f"{i}.wav", text, subtype="FLOAT") for i, text in enumerate(["one", "two", "six"])]
    m = write_manifest(str(tmp_path / "train.json"), [_line(w, t) for w, t in zip(wavs, ["one", "two", "six"])])
    cls = _WithSampleIds if sample_ids else TransferCTCModel
    model = cls.from_base(base_nemo, labels=EN_LABELS)
    model.setup_training_data({**data_cfg(m, EN_LABELS, batch_size=3, shuffle=False), "return_sample_id": sample_ids})
    audio = tone_audio("two")
    audio[10] = math.nan
    _wav(wavs[1], audio, "FLOAT")  # rewritten after the manifest check
    logged = []
    monkeypatch.setattr(logging, "warning", lambda msg, *args, **kw: logged.append(str(msg)))
    trainer = cpu_trainer(1)
    model.set_trainer(trainer)
    trainer.fit(model)
    assert model.skipped_nonfinite_steps == 1
    (warning,) = [w for w in logged if "non-finite training loss" in w]
    named = re.escape(f"row 1 ({wavs[1]})") if sample_ids else r"row 1 \(38[34]\d samples\) of 3"
    assert re.search(f"NaN/Inf audio in {named}", warning), warning


# ---------------------------------------------------------------------------- 2. duration filters
@pytest.fixture
def durations_manifest(tmp_path):
    """Five utterances of 0.5, 1.0, 1.0, 1.5 and 2.0 s (one a segment at an offset)."""
    lines = [_line(_tone(tmp_path / f"{i}.wav", seconds=s)) for i, s in enumerate([0.5, 1.0, 1.0, 1.5])]
    long = _tone(tmp_path / "long.wav", seconds=3.0)
    lines.append({"audio_filepath": long, "offset": 0.5, "duration": 2.0, "text": "one"})
    return write_manifest(str(tmp_path / "durations.json"), lines)


@pytest.mark.parametrize("lo, hi", [(None, 1.0), (1.0, None), (0.6, 1.4), (None, 1.5), (2.0, None)])
def test_duration_filter_counts_match_nemos(durations_manifest, lo, hi, monkeypatch):
    """What the validator says the filters remove is what NeMo's dataset leaves out (bounds kept)."""
    from nemo.collections.asr.data.audio_to_text import AudioToCharDataset

    import nemo_tl.data.validate as validate

    logged = []
    monkeypatch.setattr(validate, "_log_once", logged.append)
    cfg = OmegaConf.create({**data_cfg(durations_manifest, EN_LABELS), "min_duration": lo, "max_duration": hi})
    nemo_kept = len(AudioToCharDataset(manifest_filepath=durations_manifest, labels=EN_LABELS, sample_rate=SR,
                                       min_duration=lo, max_duration=hi))
    check_dataset_config(cfg, labels=EN_LABELS, section="train_ds")
    removed = 5 - nemo_kept
    counts = [int(n) for w in logged for n in re.findall(r"(\d+) (?:longer|shorter) than", w)]
    assert sum(counts) == removed, logged
    if removed > 0:  # every count here is over 10% of the manifest: warned, naming the manifest
        assert len(logged) == 1 and "durations.json" in logged[0] and f"{removed / 5:.0%}" in logged[0]


def test_filters_that_leave_nothing_stop_the_model_naming_manifest_filter_and_count(base_nemo, en_manifest, tmp_path):
    raises_input_error(
        _from_base(base_nemo, en_manifest, {"max_duration": 0.2}),
        r"train_ds\.max_duration: the duration filters remove all 8 utterances of \S*en\.json "
        r"\(8 longer than train_ds\.max_duration: 0\.2\); nothing is left for train_ds",
        r"raise train_ds\.max_duration to at least 0\.36 ",
    )
    raises_input_error(
        _from_base(base_nemo, en_manifest, {"min_duration": 30.0, "max_duration": None}),
        r"train_ds\.min_duration: the duration filters remove all 8 utterances .*30\.0",
    )
    # an evaluation set left empty is as wrong, and mixed training data is checked the same way
    raises_input_error(
        _from_base(base_nemo, en_manifest, validation_ds={**data_cfg(en_manifest, EN_LABELS), "max_duration": 0.2}),
        r"validation_ds\.max_duration: the duration filters remove all 8 utterances",
    )
    other = make_tone_manifest(str(tmp_path), ["one", "two"], name="other")
    mixed = {"manifest_filepath": [other, en_manifest], "mixing": {"weights": [0.5, 0.5]}, "max_duration": 0.2}
    raises_input_error(_from_base(base_nemo, en_manifest, mixed), r"train_ds\.max_duration.*all 2 utterances of \S*other\.json")


# ---------------------------------------------------------------------------- 3. transcripts CTC cannot align
@pytest.mark.parametrize("tokens, needed", [([], 0), ([1], 1), ([1, 2, 3], 3), ([1, 1], 3), ([5, 5, 5, 2, 2], 8)])
def test_ctc_frames_needed_is_what_ctc_loss_can_align(tokens, needed):
    """U labels + one blank between equal neighbours; below that PyTorch's CTC loss is infinite."""
    assert ctc_frames_needed(tokens) == needed
    if tokens:
        log_probs = torch.randn(needed + 1, 1, 8).log_softmax(-1)
        targets = torch.tensor([tokens])
        for frames, finite in ((needed, True), (needed - 1, False))[: 2 if needed > 1 else 1]:
            loss = torch.nn.functional.ctc_loss(log_probs[:frames], targets, torch.tensor([frames]),
                                                torch.tensor([len(tokens)]), reduction="none")
            assert bool(torch.isfinite(loss).all()) == finite


def test_encoder_frames_are_the_models_encoded_lengths(base_nemo, tiny_frames):
    model = TransferCTCModel.from_base(base_nemo, labels=EN_LABELS).eval()
    lengths = [160, 321, 3199, 3200, 3201, 16000, 23456]
    with torch.no_grad():
        _, encoded_len, _ = model.forward(input_signal=torch.randn(len(lengths), max(lengths)),
                                          input_signal_length=torch.tensor(lengths))
    assert tiny_frames.frames(lengths) == encoded_len.tolist() == model_encoder_frames(model).frames(lengths)


def test_transcript_longer_than_its_audio_allows(tmp_path, tiny_frames):
    frames = tiny_frames.frames([3200])[0]  # 0.2 s
    short = _wav(tmp_path / "short.wav", tone_audio("abcd")[:3200])
    fits, repeats = "abcdefghij"[:frames], "abcdefghij"[: frames - 1].replace("b", "a")  # a run of two: +1 frame
    assert ctc_frames_needed(list(repeats)) == frames
    too_long = "abcdefghijklmnopqrstuvwxyz"[: frames + 1]
    m = write_manifest(str(tmp_path / "m.json"), [_line(short, fits), _line(short, repeats + "a"), _line(short, too_long),
                                                  _line(short, "a b c d e")])
    errors = _errors(m, labels=EN_LABELS, frames=tiny_frames)
    assert [(p.line, p.key) for p in errors] == [(2, "text"), (3, "text")]
    assert f"needs {frames + 1} encoder frames ({frames} labels + 1 between repeated labels)" in errors[0].message
    assert f"0.200 s of audio give {frames}" in errors[0].message
    assert f"needs {frames + 1} encoder frames ({frames + 1} labels + 0" in errors[1].message
    assert _errors(m, labels=EN_LABELS) == []  # without the model's frames: not checked


def test_normalized_text_is_what_is_counted(tmp_path, tiny_frames):
    """With normalize_transcripts, the labels NeMo's parser makes are counted, not the raw characters."""
    frames = tiny_frames.frames([3200])[0]
    short = _wav(tmp_path / "short.wav", tone_audio("abcd")[:3200])
    text = "Ab, de!!!!!!!!!!!!!!!!!!!!"  # NeMo's 'en' normalizer keeps 'ab de' (5 labels)
    long = "A B C D E F!"  # 'a b c d e f': 11 labels
    m = write_manifest(str(tmp_path / "m.json"), [_line(short, text), _line(short, long)])
    assert len(text) > frames > 5 and 11 > frames
    errors = _errors(m, labels=EN_LABELS, frames=tiny_frames, normalize=True, parser="en")
    assert [(p.line, p.key) for p in errors] == [(2, "text")] and "needs 11 encoder frames" in errors[0].message


def test_unalignable_transcript_stops_the_model_or_is_dropped(base_nemo, tmp_path, monkeypatch):
    from nemo.utils import logging

    wavs = [_tone(tmp_path / f"{i}.wav", t) for i, t in enumerate(["one", "two", "six"])]
    lines = [_line(wavs[0], "one"), _line(wavs[1], " ".join(["two"] * 20)), _line(wavs[2], "six")]
    m = write_manifest(str(tmp_path / "train.json"), lines)
    raises_input_error(_from_base(base_nemo, m), r"train\.json:2: \[text\] the transcript needs \d+ encoder frames",
            r"audio give \d+: CTC cannot align it")

    logged = []
    monkeypatch.setattr(logging, "warning", lambda msg, *args, **kw: logged.append(str(msg)))
    model = _from_base(base_nemo, m, {"skip_invalid": True})()
    assert len(model._train_dl.dataset) == 2
    assert any("dropped 1 of 3 lines" in w and "1 transcript longer than the audio allows" in w for w in logged)


def test_cli_takes_the_frames_from_the_nemo_file(base_nemo, tmp_path, capsys):
    wav = _tone(tmp_path / "a.wav", "one")
    m = write_manifest(str(tmp_path / "m.json"), [_line(wav, "one"), _line(wav, "one two three four five six")])
    assert main([m, "--labels", base_nemo]) == 1
    out = capsys.readouterr().out
    assert "m.json:2: [text] the transcript needs" in out and "m.json:1:" not in out


def test_rnnt_needs_only_one_encoder_frame(tmp_path):
    """RNN-T emits several labels per frame: a long transcript is fine, audio with no frame is not."""
    from nemo_tl.models.multisoftmax_rnnt import MultiSoftmaxRNNTModel
    from tests.test_multisoftmax_model import ms_cfg

    cfg = ms_cfg()
    frames = config_encoder_frames(cfg)
    assert not frames.ctc and frames.shortest() == 160  # one 10 ms feature frame
    ok = _wav(tmp_path / "ok.wav", tone_audio("ab")[:320])
    tiny = _wav(tmp_path / "tiny.wav", tone_audio("ab")[:100])
    m = write_manifest(str(tmp_path / "m.json"), [_line(ok, "abcdefgh" * 4, lang="en"), _line(tiny, "a", lang="en")])
    errors = _errors(m, frames=frames)
    assert [(p.line, p.key) for p in errors] == [(2, "duration")] and "give no encoder frame" in errors[0].message

    cfg.train_ds.manifest_filepath = m
    raises_input_error(lambda: MultiSoftmaxRNNTModel(cfg), r"m\.json:2: \[duration\] 0\.006 s of audio give no encoder frame")


def test_an_rnnt_model_with_a_ctc_head_is_counted_as_ctc():
    """NeMo's hybrid RNN-T/CTC config and the multilingual model's aux_ctc train CTC on the same transcripts."""
    from tests.tiny_asr import model_config

    hybrid = model_config("hybrid", labels=list("abc"))
    assert config_encoder_frames(hybrid).ctc
    hybrid.aux_ctc.ctc_loss_weight = 0.0  # the CTC head trains nothing: RNN-T alone
    assert not config_encoder_frames(hybrid).ctc
    assert not config_encoder_frames(model_config("rnnt", labels=list("abc"))).ctc


def test_skip_invalid_drops_exactly_the_unalignable_lines(tmp_path, tiny_frames):
    short = _wav(tmp_path / "short.wav", tone_audio("abcd")[:3200])
    lines = [_line(short, "ab"), _line(short, "x" * 40), _line(short, "ba")]
    m = write_manifest(str(tmp_path / "m.json"), lines)
    cfg = OmegaConf.create({**data_cfg(m, EN_LABELS), "skip_invalid": True})
    out = check_dataset_config(cfg, labels=EN_LABELS, frames=tiny_frames)
    with open(out.manifest_filepath, encoding="utf-8") as f:
        assert [json.loads(x)["text"] for x in f] == ["ab", "ba"]
