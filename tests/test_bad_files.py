"""Bad files on every entry point: read-only and half-written saves, truncated .nemo files,
stale or damaged teacher caches, manifests that NeMo cannot read, non-finite mixing shares.

Each test stands for a case that failed silently or deep inside NeMo before nemo_tl checked it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time

import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from nemo_tl.data.mixing import build_mixed_dataloader, mixing_probabilities, parse_mixing_config
from nemo_tl.data.synthetic import make_tone_manifest, tone_audio, write_manifest
from nemo_tl.distill.cache import TeacherCache, build_cache, utterance_key
from nemo_tl.distill.cache import main as cache_main
from nemo_tl.errors import InputError
from nemo_tl.transcribe import TranscriptionConfig, transcribe
from nemo_tl.transfer import introspect
from nemo_tl.utils.atomic import atomic_path, atomic_write
from tests.conftest import EN_LABELS, EN_TEXTS, load_conf


@pytest.fixture(scope="module")
def transfer_model(base_nemo):
    from nemo_tl.models import TransferCTCModel

    return TransferCTCModel.from_base(base_nemo, labels=EN_LABELS)


@pytest.fixture(scope="module")
def truncated_nemo(base_nemo, tmp_path_factory):
    """The first half of a complete .nemo, as a copy cut short leaves it."""
    path = tmp_path_factory.mktemp("bad_nemo") / "cut.nemo"
    data = open(base_nemo, "rb").read()
    path.write_bytes(data[: len(data) // 2])
    return str(path)


def _listing(directory) -> list[str]:
    return sorted(os.listdir(directory))


# ---------------------------------------------------------------------------- saving .nemo files
def test_save_to_refuses_a_read_only_nemo_and_writes_nothing(transfer_model, tmp_path):
    target = tmp_path / "model.nemo"
    target.write_bytes(b"the user's protected model")
    os.chmod(target, 0o444)
    with pytest.raises(InputError, match=r"model\.nemo.*read-only"):
        transfer_model.save_to(str(target))
    assert target.read_bytes() == b"the user's protected model"
    assert _listing(tmp_path) == ["model.nemo"]  # no temporary file left


def test_save_to_refuses_a_directory_that_cannot_hold_it(transfer_model, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("a file, not a directory")
    with pytest.raises(InputError, match=r"notes\.txt is a file, not a directory"):
        transfer_model.save_to(str(notes / "model.nemo"))
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o555)
    try:
        with pytest.raises(InputError, match=r"locked: the directory cannot be written"):
            transfer_model.save_to(str(locked / "model.nemo"))
        assert _listing(locked) == []
    finally:
        os.chmod(locked, 0o755)


def _killed_mid_save(target) -> int:
    """Start writing ``target`` atomically in a child process that dies half-way; returns its (dead) pid."""
    pid = os.fork()
    if pid == 0:  # the child: no cleanup runs after os._exit, as after a SIGKILL
        try:
            with atomic_path(target) as tmp, open(tmp, "wb") as f:
                f.write(b"half a nemo")
                f.flush()
                os._exit(0)
        finally:
            os._exit(1)
    os.waitpid(pid, 0)
    return pid


def test_next_save_removes_the_temporary_file_a_killed_save_left(tmp_path):
    target = tmp_path / "model.nemo"
    target.write_bytes(b"previous")
    pid = _killed_mid_save(target)
    left = [f for f in _listing(tmp_path) if f != "model.nemo"]
    assert len(left) == 1 and left[0].startswith(".model.nemo.")  # hidden, beside the target
    assert target.read_bytes() == b"previous"
    with atomic_write(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new"
    assert _listing(tmp_path) == ["model.nemo"]

    # Only stale ones go: a live writer's file (here: this process), files of another target, and
    # files without a pid in the name (another host's) until they are an hour old, stay.
    live = tmp_path / left[0].replace(f"-{pid}.", f"-{os.getpid()}.")
    old = tmp_path / ".model.nemo.k3j9x2ab.tmp"
    recent = tmp_path / ".model.nemo.p0q1r2s3.tmp"
    other_target = tmp_path / left[0].replace(".model.nemo.", ".model.nemo.bak.")
    for path in (live, old, recent, other_target):
        path.write_bytes(b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    with atomic_write(target) as f:
        f.write(b"newer")
    assert _listing(tmp_path) == sorted(["model.nemo", live.name, recent.name, other_target.name])


# ---------------------------------------------------------------------------- restoring .nemo files
def test_restore_from_a_truncated_or_foreign_file_names_it(truncated_nemo, tmp_path):
    from nemo_tl.models import TransferCTCModel

    with pytest.raises(InputError, match=r"cut\.nemo.*not a \.nemo archive: it is truncated"):
        TransferCTCModel.restore_from(truncated_nemo)
    notes = tmp_path / "notes.nemo"
    notes.write_text("not a model")
    with pytest.raises(InputError, match=r"notes\.nemo.*not a \.nemo archive: it is not a tar archive"):
        TransferCTCModel.restore_from(str(notes))


def test_transcribe_names_a_truncated_model_before_loading_it(truncated_nemo, en_manifest):
    cfg = TranscriptionConfig(model_path=truncated_nemo, dataset_manifest=en_manifest)
    with pytest.raises(InputError, match=r"model_path: .*cut\.nemo.*not a \.nemo archive"):
        transcribe(cfg)


def test_introspect_names_a_truncated_model_and_refuses_an_out_file(base_nemo, truncated_nemo, tmp_path, capsys):
    out = str(tmp_path / "introspect")
    assert introspect.main([base_nemo, truncated_nemo, "--out", out]) == 2
    assert "TUNED" in (err := capsys.readouterr().err) and "cut.nemo" in err and "not a .nemo archive" in err
    assert not os.path.exists(out)
    table = tmp_path / "table.md"
    table.write_text("keep me")
    assert introspect.main([base_nemo, base_nemo, "--out", str(table)]) == 2
    assert "--out" in capsys.readouterr().err and table.read_text() == "keep me"


# ---------------------------------------------------------------------------- manifests NeMo cannot read
@pytest.fixture
def bad_manifests(tmp_path):
    """Manifests that NeMo's loaders fail on: a BOM, a stereo file, a missing file (each on a known line)."""
    good = make_tone_manifest(str(tmp_path), EN_TEXTS[:3], name="good")
    lines = open(good, encoding="utf-8").read().splitlines()
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode("utf-8") + b"\n")
    stereo_wav = str(tmp_path / "stereo.wav")
    mono = tone_audio("two")
    sf.write(stereo_wav, np.stack([mono, mono], axis=1), 16000)
    stereo = write_manifest(
        str(tmp_path / "stereo.json"),
        [json.loads(lines[0]), {"audio_filepath": stereo_wav, "duration": len(mono) / 16000, "text": "two"}],
    )
    missing = write_manifest(
        str(tmp_path / "missing.json"),
        [json.loads(lines[0]), {**json.loads(lines[1]), "audio_filepath": str(tmp_path / "gone.wav")}],
    )
    return {"bom": (str(bom), 1, "byte-order mark"), "stereo": (stereo, 2, "2 channels"),
            "missing": (missing, 2, "audio file not found")}


def test_transcribe_checks_the_manifest_before_nemo_reads_it(base_nemo, bad_manifests):
    for manifest, line, problem in bad_manifests.values():
        cfg = TranscriptionConfig(model_path=base_nemo, dataset_manifest=manifest)
        with pytest.raises(InputError, match=rf"{re.escape(manifest)}:{line}: .*{problem}"):
            transcribe(cfg)


def test_cache_command_checks_the_manifests_before_building(base_nemo, bad_manifests, tmp_path, capsys):
    for name, (manifest, line, problem) in bad_manifests.items():
        out = tmp_path / f"cache_{name}"
        assert cache_main([base_nemo, manifest, "--out", str(out), "--device", "cpu"]) == 2
        assert f"{manifest}:{line}: " in (err := capsys.readouterr().err) and problem in err
        assert not out.exists()  # nothing half-built


# ---------------------------------------------------------------------------- teacher caches
@pytest.fixture
def cached(base_nemo, tmp_path):
    """A manifest of 4 utterances and a complete teacher cache of it, built by the command line."""
    manifest = make_tone_manifest(str(tmp_path), EN_TEXTS[:4], name="train")
    out = str(tmp_path / "cache")
    assert cache_main([base_nemo, manifest, "--out", out, "--device", "cpu"]) == 0
    return manifest, out


def _entries(manifest):
    return [json.loads(line) for line in open(manifest, encoding="utf-8")]


def test_cache_of_audio_rewritten_in_place_is_refused(base_nemo, cached, capsys):
    manifest, out = cached
    wav = _entries(manifest)[1]["audio_filepath"]
    audio, rate = sf.read(wav, dtype="float32")
    before = os.stat(wav)
    sf.write(wav, np.roll(audio, 400), rate)  # other audio, same path, same length
    os.utime(wav, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    assert os.stat(wav).st_size == before.st_size
    capsys.readouterr()
    assert cache_main([base_nemo, manifest, "--out", out, "--device", "cpu"]) == 2
    assert "the audio files (size or modification time" in capsys.readouterr().err


def test_missing_or_truncated_cache_entry_names_the_audio_file(base_nemo, cached, capsys):
    manifest, out = cached
    entries = _entries(manifest)
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs if f.endswith(".pt"))
    assert len(files) == 4
    cache = TeacherCache(out, {})
    owner = {}  # .pt file -> audio file
    for entry in entries:
        sample = type("S", (), {"audio_file": entry["audio_filepath"], "offset": 0.0, "duration": entry["duration"]})
        owner[cache._file(utterance_key(sample))] = entry["audio_filepath"]
    os.remove(files[0])
    with open(files[1], "r+b") as f:
        f.truncate(os.path.getsize(files[1]) // 2)
    capsys.readouterr()
    assert cache_main([base_nemo, manifest, "--out", out, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"{owner[files[0]]}: no entry" in err
    assert f"{owner[files[1]]}: entry truncated" in err
    assert "lacks the outputs of 2 of the 4" in err


def test_distill_model_finds_a_missing_cache_entry_when_it_is_built(base_nemo, cached):
    from nemo_tl.models.distill_ctc import DistillCTCModel

    manifest, out = cached
    cache_dir = os.path.dirname(out) + "/caches"
    shutil.copytree(out, f"{cache_dir}/teacher_0")
    victim = next(os.path.join(d, f) for d, _, fs in os.walk(cache_dir) for f in fs if f.endswith(".pt"))
    os.remove(victim)
    cfg = load_conf("quartznet_tiny")
    cfg.train_ds.manifest_filepath = manifest
    cfg.train_ds.batch_size = 2
    cfg.distillation = {"teachers": [{"model": base_nemo}], "cache": cache_dir}
    with pytest.raises(InputError, match=r"(?s)teacher 0.*lacks the outputs of 1 of the 4.*\.wav: no entry"):
        DistillCTCModel(cfg=cfg)


def test_damaged_fingerprint_names_the_file_and_the_fix(base_nemo, cached, capsys):
    manifest, out = cached
    with open(os.path.join(out, "fingerprint.json"), "w") as f:
        f.write('{"version": 2, "teach')  # cut short
    capsys.readouterr()
    assert cache_main([base_nemo, manifest, "--out", out, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert os.path.join(out, "fingerprint.json") in err and f"delete the cache directory {out}" in err


def test_cache_out_that_is_a_file_is_refused(base_nemo, en_manifest, tmp_path, capsys):
    out = tmp_path / "cache.pt"
    out.write_bytes(b"something else")
    assert cache_main([base_nemo, en_manifest, "--out", str(out), "--device", "cpu"]) == 2
    assert "--out" in (err := capsys.readouterr().err) and "existing file" in err
    assert out.read_bytes() == b"something else"
    model = type("Teacher", (), {"cfg": OmegaConf.create({"sample_rate": 16000})})()
    with pytest.raises(InputError, match="model.distillation.cache.*existing file"):
        build_cache(model, [en_manifest], str(out))


# ---------------------------------------------------------------------------- mixing probabilities
def test_mixing_probabilities_that_are_not_finite_name_the_key(en_manifest):
    with pytest.raises(InputError, match=r"train_ds\.mixing\.temperature"):
        parse_mixing_config({"weights": [0.5, 0.5], "temperature": 1e-5}, 2)
    with pytest.raises(InputError, match=r"train_ds\.mixing\.weights"):
        parse_mixing_config({"weights": [1e308, 1e308]}, 2)
    with pytest.raises(ValueError, match="underflows"):
        mixing_probabilities([8, 8], 1e-5)

    class Dataset(torch.utils.data.Dataset):  # "count" weights are only known once the datasets exist
        def __len__(self):
            return 8

        def collate_fn(self, batch):
            return batch

    config = {"manifest_filepath": [en_manifest, en_manifest], "batch_size": 2, "mixing": {"temperature": 1e-5}}
    with pytest.raises(InputError, match=r"train_ds\.mixing\.temperature.*non-finite"):
        build_mixed_dataloader(config, lambda one: Dataset())
