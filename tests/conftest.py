"""Shared fixtures: tiny configs, tone-audio manifests and small saved base models."""

from __future__ import annotations

import os

import pytest
import torch
from omegaconf import OmegaConf

import nemo_tl  # noqa: F401  (registers the nemo_tl target prefix)
from nemo_tl.data.synthetic import make_tone_manifest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONF = os.path.join(ROOT, "conf")
EN_LABELS = [" ", *"abcdefghijklmnopqrstuvwxyz", "'"]
DE_LABELS = [" ", *"abcdefghijklmnopqrstuvwxyz", "ä", "ö", "ü", "ß"]
EN_TEXTS = ["one", "two", "three", "four", "five", "six", "seven", "eight"]
DE_TEXTS = ["eins", "zwei", "drei", "vier", "fünf", "sechs", "größe", "süß"]


def load_conf(name: str):
    """The ``model`` section of conf/{name}.yaml, resolved, as a DictConfig."""
    cfg = OmegaConf.load(os.path.join(CONF, f"{name}.yaml"))
    return OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for the module: tiny models and several processes on a shared 2-core CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_cfg():
    """The tiny QuartzNet model config with English labels and no data sections set."""
    return load_conf("quartznet_tiny")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def en_manifest(data_dir):
    return make_tone_manifest(data_dir, EN_TEXTS, name="en", lang="en")


@pytest.fixture(scope="session")
def de_manifest(data_dir):
    return make_tone_manifest(data_dir, DE_TEXTS, name="de", lang="de", seed=100)


@pytest.fixture(scope="session")
def base_nemo(tmp_path_factory):
    """A tiny English EncDecCTCModel (plain NeMo) saved as .nemo; returns its path."""
    from nemo.collections.asr.models import EncDecCTCModel

    torch.manual_seed(0)
    model = EncDecCTCModel(cfg=load_conf("quartznet_tiny"))
    # Non-trivial BatchNorm statistics, so that tests can tell when they move.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    path = str(tmp_path_factory.mktemp("base") / "base_en.nemo")
    model.save_to(path)
    return path
