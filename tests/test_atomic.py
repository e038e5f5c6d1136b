"""Atomic saves: a write that fails half-way leaves the previous file byte-identical."""

from __future__ import annotations

import os

import pytest
import torch

from nemo_tl.utils import atomic_path, atomic_save_to, atomic_write


class Interrupted(BaseException):
    """Stands in for a kill (KeyboardInterrupt-like: not an Exception)."""


class HalfSavingModel:
    """A model whose save_to writes part of the archive, then dies."""

    def save_to(self, path: str) -> None:
        with open(path, "wb") as f:
            f.write(b"half a nemo file")
        raise Interrupted()


def test_atomic_write_replaces_the_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    with atomic_write(target) as f:
        f.write(b"new content")
    assert target.read_bytes() == b"new content"
    assert os.stat(target).st_mode & 0o777 == 0o640  # permissions kept
    assert os.listdir(tmp_path) == ["out.bin"]


def test_exception_during_write_leaves_previous_file_and_no_temp_files(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("previous\n")
    before = target.read_bytes()
    with pytest.raises(RuntimeError), atomic_write(target, "w", encoding="utf-8") as f:
        f.write("partial")
        raise RuntimeError("disk full")
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["out.txt"]


def test_failed_first_write_creates_nothing(tmp_path):
    with pytest.raises(Interrupted), atomic_path(tmp_path / "new.pt") as tmp:
        torch.save({"w": torch.ones(3)}, tmp)
        raise Interrupted()
    assert os.listdir(tmp_path) == []


def test_atomic_save_to_killed_mid_save_keeps_previous_nemo(tmp_path):
    target = tmp_path / "model.nemo"
    target.write_bytes(b"the previous, complete .nemo")
    before = target.read_bytes()
    with pytest.raises(Interrupted):
        atomic_save_to(HalfSavingModel(), target)
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.nemo"]


def test_atomic_save_to_writes_a_nemo_that_restores(tmp_path, tiny_cfg):
    from nemo.collections.asr.models import EncDecCTCModel

    model = EncDecCTCModel(cfg=tiny_cfg)
    target = tmp_path / "model.nemo"
    target.write_bytes(b"old")
    assert atomic_save_to(model, target) == str(target)
    assert os.listdir(tmp_path) == ["model.nemo"]
    restored = EncDecCTCModel.restore_from(str(target), map_location="cpu")
    for (name, a), b in zip(model.state_dict().items(), restored.state_dict().values()):
        assert torch.equal(a, b), name
