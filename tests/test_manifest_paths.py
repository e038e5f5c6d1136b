"""``manifest_filepath`` is parsed by one function, so validation, mixing and teacher caches agree on every form."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from nemo_tl.data.manifest import audio_sha256, flatten_manifest_filepath
from nemo_tl.data.mixing import mixed_manifest_paths
from nemo_tl.data.validate import check_dataset_config
from nemo_tl.distill.cache import manifest_list
from nemo_tl.errors import InputError
from tests.conftest import EN_LABELS
from tests.helpers import raises_input_error

FORMS = [
    (None, []),
    ("a.json", ["a.json"]),
    ("a.json, b.json,", ["a.json", "b.json"]),  # NeMo's comma-separated string; spaces and empty parts dropped
    (["a.json", "b.json"], ["a.json", "b.json"]),
    (OmegaConf.create({"m": ["a.json", "b.json"]}).m, ["a.json", "b.json"]),  # a ListConfig from YAML
    ([["a.json", "b.json"], ["c.json"]], ["a.json", "b.json", "c.json"]),  # bucketing: one list per bucket
    ([["a.json", 0.7], ["b.json", 3]], ["a.json", "b.json"]),  # Lhotse [path, weight] pairs: weights skipped
    (Path("dir") / "a.json", [os.path.join("dir", "a.json")]),
]


@pytest.mark.parametrize("value, paths", FORMS)
def test_every_form_of_manifest_filepath(value, paths):
    assert flatten_manifest_filepath(value) == paths
    assert manifest_list(value) == paths  # the teacher cache's name for the same parser


def test_a_mapping_is_not_a_manifest_path():
    raises_input_error(lambda: flatten_manifest_filepath({"a.json": 1}, "train_ds.manifest_filepath"),
                       r"train_ds\.manifest_filepath: must be a manifest path")


def test_mixing_reads_a_comma_string_or_a_flat_list_and_refuses_buckets():
    assert mixed_manifest_paths({"manifest_filepath": "t.json, s.json"}) == ["t.json", "s.json"]
    assert mixed_manifest_paths({"manifest_filepath": OmegaConf.create(["t.json", "s.json"])}) == ["t.json", "s.json"]
    for value in ([["t.json"], ["s.json"]], [["t.json", 0.8], ["s.json", 0.2]], None, ""):
        raises_input_error(lambda v=value: mixed_manifest_paths({"manifest_filepath": v}, "train_ds"),
                           r"train_ds\.manifest_filepath")


@pytest.mark.parametrize(
    "form", [lambda good, bad: f"{good}, {bad}", lambda good, bad: [[good], [bad]], lambda good, bad: [[good, 0.5], [bad, 0.5]]]
)
def test_validation_checks_each_manifest_of_each_form(form, en_manifest, tmp_path):
    missing = str(tmp_path / "missing.json")
    cfg = OmegaConf.create({"manifest_filepath": form(en_manifest, missing), "sample_rate": 16000, "labels": EN_LABELS})
    with pytest.raises(InputError, match=r"missing\.json.*manifest file not found") as info:
        check_dataset_config(cfg, labels=EN_LABELS, section="train_ds")
    assert "0.5" not in str(info.value)
    cfg.manifest_filepath = form(en_manifest, en_manifest)
    assert check_dataset_config(cfg, labels=EN_LABELS, section="train_ds").manifest_filepath == cfg.manifest_filepath


def test_audio_sha256_follows_the_audio_not_the_paths(tmp_path):
    """The same audio under another folder and with relative paths gives the same digest; one changed sample
    another."""
    import json
    import shutil

    import numpy as np
    import soundfile as sf

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    for i in range(2):
        sf.write(tmp_path / "a" / f"{i}.wav", np.full(160, 0.1 * (i + 1), dtype=np.float32), 16000)
    absolute = tmp_path / "a" / "m.json"
    absolute.write_text("".join(json.dumps({"audio_filepath": str(tmp_path / "a" / f"{i}.wav"), "duration": 0.01,
                                            "text": "x"}) + "\n" for i in range(2)), encoding="utf-8")
    for i in range(2):
        shutil.copy(tmp_path / "a" / f"{i}.wav", tmp_path / "b" / f"{i}.wav")
    relative = tmp_path / "b" / "m.json"  # paths relative to the manifest's folder, as NeMo resolves them
    relative.write_text("".join(json.dumps({"audio_filepath": f"{i}.wav", "duration": 0.01, "text": "x"}) + "\n"
                                for i in range(2)), encoding="utf-8")
    assert audio_sha256(str(absolute)) == audio_sha256(str(relative))
    sf.write(tmp_path / "b" / "1.wav", np.full(160, 0.25, dtype=np.float32), 16000)
    assert audio_sha256(str(absolute)) != audio_sha256(str(relative))
