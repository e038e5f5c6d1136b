"""Mixed-manifest training data (issue 3): the sampler, the loader, the model mixin."""

from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from nemo.collections.asr.data.audio_to_text_dataset import get_char_dataset
from nemo.collections.asr.models import EncDecCTCModel
from omegaconf import OmegaConf, open_dict

from nemo_tl.data.mixing import (
    MixedBatchSampler,
    build_mixed_dataloader,
    mixing_probabilities,
    parse_mixing_config,
    quotas,
)
from nemo_tl.data.synthetic import make_tone_manifest, write_manifest
from nemo_tl.errors import InputError
from nemo_tl.models import mixins
from nemo_tl.models.mixins import CHECKPOINT_KEY, ManifestDataMixin
from tests.conftest import EN_LABELS, load_conf
from tests.helpers import count_calls

# Distinct texts: a batch's transcripts tell which utterances it holds.
SRC_TEXTS = ["one", "two", "three", "four", "five", "six", "seven", "eight"]
TGT_TEXTS = ["alpha", "bravo", "charlie", "delta"]
LONG_TEXTS = ["abcdefghijklmnopqrst", "bcdefghijklmnopqrstu", "cdefghijklmnopqrstuv"]


class _M(ManifestDataMixin, EncDecCTCModel):
    """The smallest nemo_tl-style model: the mixin first, then a plain NeMo class."""


@pytest.fixture(scope="module")
def mdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("mixing"))


@pytest.fixture(scope="module")
def src(mdir):
    return make_tone_manifest(mdir, SRC_TEXTS, name="src_train", lang="en")


@pytest.fixture(scope="module")
def tgt(mdir):
    return make_tone_manifest(mdir, TGT_TEXTS, name="tgt_train", lang="en-GB", seed=50)


@pytest.fixture(scope="module")
def long(mdir):
    return make_tone_manifest(mdir, LONG_TEXTS, name="long_train", seed=90)


def _ds_cfg(paths, mixing=None, batch_size=2, **extra):
    cfg = {"manifest_filepath": list(paths), "sample_rate": 16000, "labels": EN_LABELS, "batch_size": batch_size}
    if mixing is not None:
        cfg["mixing"] = mixing
    cfg.update(extra)
    return OmegaConf.create(cfg)


def _loader(paths, mixing, **kw):
    return build_mixed_dataloader(
        _ds_cfg(paths, mixing, **{k: v for k, v in kw.items() if k == "batch_size"}),
        get_char_dataset,
        **{k: v for k, v in kw.items() if k != "batch_size"},
    )


def _owner(sampler, index):
    return int(np.searchsorted(sampler.offsets, index, side="right") - 1)


# ----------------------------------------------------------------------------- weights
def test_probabilities_and_quotas():
    assert np.allclose(mixing_probabilities([8, 2]), [0.8, 0.2])
    # p_i ∝ w_i^(1/T): T = 2 takes square roots, [0.9, 0.1] -> [0.75, 0.25]
    assert np.allclose(mixing_probabilities([0.9, 0.1], temperature=2.0), [0.75, 0.25])
    assert np.allclose(mixing_probabilities([1, 0, 3], temperature=0.5), [0.1, 0.0, 0.9])
    q = quotas([0.5, 0.25, 0.25], 7)
    assert q.sum() == 7 and (np.abs(q - np.array([3.5, 1.75, 1.75])) < 1).all()


@pytest.mark.parametrize("per_batch", [False, True])
@pytest.mark.parametrize("probs", [[0.8, 0.2], [0.5, 0.3, 0.2], [0.75, 0.25]])
def test_epoch_shares_are_exact_up_to_rounding(per_batch, probs):
    sizes = [40, 300, 7][: len(probs)]
    bs, n = 4, 25
    for epoch in range(3):
        s = MixedBatchSampler(sizes, probs, bs, per_batch=per_batch, num_batches=n, seed=3)
        s.set_epoch(epoch)
        batches = list(s)
        assert len(batches) == n and all(len(b) == bs for b in batches)
        owners = [_owner(s, i) for b in batches for i in b]
        counts = np.bincount(owners, minlength=len(sizes))
        unit = bs if per_batch else 1  # "within one batch" (per batch) or one utterance (per sample)
        assert (np.abs(counts - np.array(probs) * n * bs) < unit).all(), counts


def test_per_batch_batches_hold_one_manifest():
    s = MixedBatchSampler([9, 30, 5], [0.2, 0.5, 0.3], 3, per_batch=True, num_batches=40)
    kinds = set()
    for j, b in enumerate(s):
        owners = {_owner(s, i) for i in b}
        assert len(owners) == 1
        assert s.manifest_of_batch(j) == owners.pop()
        kinds.add(s.manifest_of_batch(j))
    assert kinds == {0, 1, 2}
    mixed = MixedBatchSampler([9, 30], [0.5, 0.5], 8, num_batches=10)
    assert any(mixed.manifest_of_batch(j) == -1 for j in range(10))


def test_per_sample_batches_mix_manifests():
    s = MixedBatchSampler([50, 50], [0.5, 0.5], 8, num_batches=20)
    assert any(len({_owner(s, i) for i in b}) == 2 for b in s)


# ----------------------------------------------------------------------------- without replacement
@pytest.mark.parametrize("per_batch", [False, True])
def test_no_repeats_before_a_manifest_is_used_up(per_batch):
    sizes = [7, 23]
    s = MixedBatchSampler(sizes, [0.5, 0.5], 4, per_batch=per_batch, num_batches=15, num_replicas=2, seed=1)
    streams = {0: [], 1: []}
    for epoch in range(4):  # the stream continues across epochs
        indices, owners = s.global_plan(epoch)
        for i, m in zip(indices.ravel(), owners.ravel()):
            streams[int(m)].append(int(i - s.offsets[m]))
    for m, stream in streams.items():
        size = sizes[m]
        assert len(stream) > 3 * size  # several passes: the small set is repeated...
        for c in range(len(stream) // size):
            cycle = stream[c * size : (c + 1) * size]
            assert sorted(cycle) == list(range(size))  # ...but only after each full pass
        assert stream[:size] != stream[size : 2 * size]  # and reshuffled


# ----------------------------------------------------------------------------- DDP
@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("per_batch", [False, True])
def test_ddp_ranks_get_disjoint_batches_of_equal_count(world, per_batch):
    sizes, probs, bs = [600, 900], [0.4, 0.6], 4
    default = MixedBatchSampler(sizes, probs, bs, per_batch=per_batch, num_replicas=world, rank=world - 1)
    assert len(default) == int(np.ceil(sum(sizes) / (bs * world)))  # default: one pass over all data
    ranks = [  # short epochs: two of them use less than one pass over each manifest
        MixedBatchSampler(sizes, probs, bs, per_batch=per_batch, num_batches=25, num_replicas=world, rank=r, seed=7)
        for r in range(world)
    ]
    lengths = {25}
    seen = []
    for epoch in (0, 1):
        for s in ranks:
            s.set_epoch(epoch)
        per_rank = [list(s) for s in ranks]
        assert {len(b) for b in per_rank} == lengths
        flat = [i for batches in per_rank for b in batches for i in b]
        seen += flat
        assert len(seen) == len(set(seen))  # nothing drawn twice on any rank, in this epoch or the last
        for step in range(len(per_rank[0])):
            owners = [{_owner(ranks[0], i) for i in per_rank[r][step]} for r in range(world)]
            if per_batch:  # one manifest per step, the same on every rank
                assert all(len(o) == 1 for o in owners) and len(set.union(*owners)) == 1
                assert len({s.manifest_of_batch(step) for s in ranks}) == 1


def test_ddp_small_manifest_per_batch_same_manifest_every_rank():
    ranks = [
        MixedBatchSampler([5, 40], [0.5, 0.5], 2, per_batch=True, num_batches=12, num_replicas=3, rank=r)
        for r in range(3)
    ]
    per_rank = [list(s) for s in ranks]
    for step in range(12):
        assert len({_owner(ranks[0], i) for r in range(3) for i in per_rank[r][step]}) == 1


# ----------------------------------------------------------------------------- determinism, epochs, resume
def test_deterministic_for_seed_and_epoch():
    def run(seed, epoch):
        s = MixedBatchSampler([30, 12], [0.6, 0.4], 4, seed=seed)
        s.set_epoch(epoch)
        return list(s)

    assert run(0, 0) == run(0, 0)
    assert run(0, 1) == run(0, 1)
    assert run(0, 0) != run(1, 0)
    assert run(0, 0) != run(0, 1)


@pytest.mark.parametrize("per_batch", [False, True])
def test_state_dict_resumes_mid_epoch(per_batch):
    def fresh():
        return MixedBatchSampler(
            [13, 40], [0.3, 0.7], 3, per_batch=per_batch, num_batches=10, seed=5, num_replicas=2, rank=1
        )

    ref = fresh()
    ref.set_epoch(2)
    expected = list(ref)
    ref.set_epoch(3)
    expected_next = list(ref)

    s = fresh()
    s.set_epoch(2)
    it = iter(s)
    head = [next(it) for _ in range(4)]
    state = json.loads(json.dumps(s.state_dict()))  # plain data: fits in a checkpoint
    assert state["epoch"] == 2 and state["position"] == 4

    resumed = fresh()
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # Lightning calls this again for the restored epoch: the position stays
    assert len(resumed) == 10
    assert head + list(resumed) == expected
    resumed.set_epoch(3)
    assert list(resumed) == expected_next
    # a trainer's count of batches trained wins over the prefetching loader's count
    assert s.state_dict(batches_done=2)["position"] == 2


def test_changed_data_restarts_the_epoch():
    s = MixedBatchSampler([13, 40], [0.3, 0.7], 3, num_batches=10)
    state = {**s.state_dict(), "position": 6, "epoch": 1}
    other = MixedBatchSampler([14, 40], [0.3, 0.7], 3, num_batches=10)
    other.load_state_dict(state)
    assert other.epoch == 1 and len(list(other)) == 10


def test_lightning_keeps_the_sampler_under_ddp_and_sets_its_epoch(src, tgt):
    from lightning.fabric.utilities.data import _set_sampler_epoch
    from lightning.pytorch.trainer.states import RunningStage

    loader = _loader([src, tgt], {"weights": [1, 1]}, world_size=2, global_rank=1)
    ddp = Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False)
    prepared = ddp._data_connector._prepare_dataloader(loader, shuffle=True, mode=RunningStage.TRAINING)
    assert prepared is loader and prepared.sampler.rank == 1  # not wrapped in another DistributedSampler
    _set_sampler_epoch(loader, 3)  # what Lightning's fit loop calls before each epoch
    assert loader.sampler.epoch == 3


@pytest.mark.parametrize("per_batch", [False, True])
def test_epoch_plan_does_no_work_per_sample(per_batch):
    """The plan is a few NumPy calls whatever the epoch's size: no Python work per sample (its
    speed is printed by ``bench/bench_mixed_loader.py``, goal ≥ 100k samples/s)."""
    counts = []
    for num_batches in (400, 4000):
        s = MixedBatchSampler([5000, 200000, 31], [0.5, 0.3, 0.2], 32, num_batches=num_batches, per_batch=per_batch)
        calls, (indices, manifests) = count_calls(lambda s=s: s.global_plan(0))
        assert indices.shape == manifests.shape == (num_batches, 1, 32)
        counts.append(calls)
    assert counts[1] <= counts[0] + 20, counts  # 10x the samples (128,000), about the same calls
    assert counts[1] < 1000, counts


# ----------------------------------------------------------------------------- the loader
def test_loader_weights_count_hours_and_list(src, long):
    count = _loader([src, long], {"weights": "count"})
    assert np.allclose(count.sampler.probabilities, [8 / 11, 3 / 11])
    hours = _loader([src, long], {"weights": "hours"})
    dur = [sum(json.loads(x)["duration"] for x in open(p)) for p in (src, long)]
    assert np.allclose(hours.sampler.probabilities, np.array(dur) / sum(dur))
    assert hours.sampler.probabilities[1] > 0.5 > count.sampler.probabilities[1]  # few but long
    flat = _loader([src, long], {"weights": "count", "temperature": 2.0})
    assert np.allclose(flat.sampler.probabilities, mixing_probabilities([8, 3], 2.0))
    listed = _loader([src, long], {"weights": [1, 3], "num_batches": 6})
    assert np.allclose(listed.sampler.probabilities, [0.25, 0.75])
    assert len(listed) == 6 and len(listed.dataset) == 12  # NeMo's scheduler: max_steps = 6 per epoch
    assert listed.sampler.micro_batch_size == 2


def test_loader_batches_come_from_the_scheduled_manifests(src, tgt):
    loader = _loader(
        [src, tgt], {"weights": [0.5, 0.5], "per_batch": True, "num_batches": 6}, return_manifest_index=True
    )
    assert loader.sampler.manifests == [src, tgt]
    assert loader.sampler.languages == [("en",), ("en-GB",)]
    assert loader.sampler.manifest_language(1) == "en-GB"
    texts = [set(SRC_TEXTS), set(TGT_TEXTS)]
    for j, (signal, _, tokens, tokens_len, manifest) in enumerate(loader):
        assert signal.shape[0] == 2 and manifest.tolist() == [loader.sampler.manifest_of_batch(j)] * 2
        for row, n in zip(tokens, tokens_len):
            text = "".join(EN_LABELS[t] for t in row[:n])
            assert text in texts[manifest[0]]


def test_worker_processes_give_the_same_batches(src, tgt):
    def tokens(num_workers):
        cfg = _ds_cfg([src, tgt], {"weights": [0.6, 0.4], "num_batches": 4}, num_workers=num_workers)
        return [b[2].tolist() for b in build_mixed_dataloader(cfg, get_char_dataset)]

    assert tokens(1) == tokens(0)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "mixing, key",
    [
        ({"weights": [1.0]}, "mixing.weights"),
        ({"weights": [1, 2, 3]}, "mixing.weights"),
        ({"weights": [1, -1]}, "mixing.weights"),
        ({"weights": [0, 0]}, "mixing.weights"),
        ({"weights": "duration"}, "mixing.weights"),
        ({"temperature": 0}, "mixing.temperature"),
        ({"temperature": -1.5}, "mixing.temperature"),
        ({"per_batch": "yes"}, "mixing.per_batch"),
        ({"seed": -1}, "mixing.seed"),
        ({"num_batches": 0}, "mixing.num_batches"),
        ({"weigths": [1, 1]}, "train_ds.mixing"),
    ],
)
def test_bad_mixing_keys(mixing, key):
    with pytest.raises(InputError, match=key.replace(".", r"\.")):
        parse_mixing_config(mixing, 2)


def test_empty_manifest_is_named(src, mdir):
    empty = write_manifest(os.path.join(mdir, "empty.json"), [])
    with pytest.raises(InputError, match=r"empty\.json.*is empty"):
        _loader([src, empty], {"weights": "count"})


def test_hours_without_duration_names_file_and_line(src, mdir):
    lines = [json.loads(x) for x in open(src)]
    del lines[2]["duration"]
    bad = write_manifest(os.path.join(mdir, "no_duration.json"), lines)
    with pytest.raises(InputError, match=r"no_duration\.json:3: no numeric 'duration'"):
        _loader([bad, src], {"weights": "hours"})


def test_filters_emptying_a_manifest_are_named(src, long):
    cfg = _ds_cfg([src, long], {"weights": "count"}, max_duration=1.0)
    with pytest.raises(InputError, match=r"manifest_filepath\[1\].*max_duration"):
        build_mixed_dataloader(cfg, get_char_dataset)


@pytest.mark.parametrize("key", ["use_lhotse", "is_tarred", "is_concat"])
def test_lhotse_or_tarred_with_mixing_is_refused(src, tgt, key):
    with pytest.raises(InputError, match=f"train_ds.{key}"):
        build_mixed_dataloader(_ds_cfg([src, tgt], {}, **{key: True}), get_char_dataset)


def test_single_path_string_with_nested_lists_is_refused(src, tgt):
    cfg = _ds_cfg([src, tgt], {})
    cfg.manifest_filepath = [[src], [tgt]]
    with pytest.raises(InputError, match=r"train_ds\.manifest_filepath"):
        build_mixed_dataloader(cfg, get_char_dataset)


# ----------------------------------------------------------------------------- the model mixin
def _model_cfg(train_paths, mixing=None, val_paths=None, val=None):
    cfg = load_conf("quartznet_tiny")
    with open_dict(cfg):
        cfg.train_ds.manifest_filepath = list(train_paths)
        cfg.train_ds.batch_size = 2
        if mixing is not None:
            cfg.train_ds.mixing = mixing
        cfg.validation_ds.manifest_filepath = list(val_paths) if val_paths else None
        cfg.validation_ds.batch_size = 4
        cfg.validation_ds.update(val or {})
    return cfg


def _trainer(**kw):
    args = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    args.update(kw)
    return Trainer(**args)


class _Recorder(_M):
    """Records the transcripts of every training batch (the utterances it held)."""

    def on_train_batch_start(self, batch, batch_idx):
        self.seen = getattr(self, "seen", [])
        self.seen.append(tuple(batch[2][i, : batch[3][i]].tolist() for i in range(batch[2].shape[0])))


def test_mixin_builds_mixed_or_plain_loader(src, tgt):
    mixed = _M(_model_cfg([src, tgt], {"weights": [0.8, 0.2], "per_batch": True}))
    assert isinstance(mixed.mixed_sampler, MixedBatchSampler)
    assert mixed.mixed_sampler.per_batch and np.allclose(mixed.mixed_sampler.probabilities, [0.8, 0.2])
    plain = _M(_model_cfg([src, tgt]))
    assert plain.mixed_sampler is None and len(plain._train_dl.dataset) == 12


def test_mixin_calls_the_manifest_validator(src, tgt, monkeypatch):
    calls = []

    def check_dataset_config(config, *, labels, languages=None, sample_rate=None, section=None, frames=None,
                             tokenizer=None):
        paths = config.manifest_filepath
        calls.append((paths if isinstance(paths, str) else list(paths), labels, sample_rate, section))
        if config.get("mixing") is not None:
            raise InputError("validator ran first")
        return config

    monkeypatch.setattr(mixins, "check_dataset_config", check_dataset_config)
    with pytest.raises(InputError, match="validator ran first"):
        _M(_model_cfg([src, tgt], {"weights": [1, 1]}))
    assert calls[-1] == ([src, tgt], EN_LABELS, 16000, "train_ds")
    _M(_model_cfg([src], val_paths=[tgt]))
    assert calls[-1][0] == tgt and calls[-1][3] == "validation_ds"


def test_mixin_bad_input_stops_before_training(src, tgt):
    with pytest.raises(InputError, match=r"train_ds\.mixing\.weights"):
        _M(_model_cfg([src, tgt], {"weights": [1, 2, 3]}))
    with pytest.raises(InputError, match=r"train_ds\.mixing\.temperature"):
        _M(_model_cfg([src, tgt], {"temperature": 0.0}))
    with pytest.raises(InputError, match=r"train_ds\.use_lhotse"):
        cfg = _model_cfg([src, tgt], {"weights": "count"})
        with open_dict(cfg):
            cfg.train_ds.use_lhotse = True
        _M(cfg)
    with pytest.raises(InputError, match=r"validation_ds\.mixing"):
        _M(_model_cfg([src], val_paths=[src, tgt], val={"mixing": {"weights": "count"}}))


def test_loader_built_before_the_ddp_trainer_is_rebuilt_for_its_rank(src, tgt):
    model = _M(_model_cfg([src, tgt], {"weights": [1, 1]}))
    assert (model.mixed_sampler.rank, model.mixed_sampler.num_replicas) == (0, 1)
    model.trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False)
    model.setup("fit")
    assert (model.mixed_sampler.rank, model.mixed_sampler.num_replicas) == (0, 2)
    assert len(model.mixed_sampler) == 3  # ceil(12 utterances / (2 per batch x 2 ranks))


def test_transcribe_skips_manifest_validation(src, monkeypatch):
    model = _M(_model_cfg([src]))

    def refuse(config, **kw):
        raise AssertionError("validated NeMo's temporary transcription manifest")

    monkeypatch.setattr(mixins, "check_dataset_config", refuse)
    audio = [json.loads(x)["audio_filepath"] for x in open(src)][:2]
    assert len(model.transcribe(audio, batch_size=2, verbose=False)) == 2


def test_two_validation_sets_with_one_name_are_refused(src, tgt, mdir):
    other_dir = os.path.join(mdir, "other")
    os.makedirs(other_dir, exist_ok=True)
    same_stem = make_tone_manifest(other_dir, TGT_TEXTS[:2], name="src_train")
    with pytest.raises(InputError, match=r"validation_ds\.manifest_filepath.*src_train_val_wer"):
        _M(_model_cfg([src], val_paths=[src, same_stem]))
    with pytest.raises(InputError, match=r"validation_ds\.name"):
        _M(_model_cfg([src], val_paths=[src, tgt], val={"name": ["dev", "dev"]}))


def test_wer_is_logged_per_validation_manifest(src, tgt):
    model = _M(_model_cfg([src], val_paths=[tgt, src]))
    assert model._validation_names == ["tgt_train_", "src_train_"]
    metrics = _trainer(limit_val_batches=1.0).validate(model, verbose=False)
    keys = set(metrics[0]) | set(metrics[1])
    # NeMo: the first set logs val_wer and {name}val_wer, the others {name}val_wer
    assert {"val_wer", "tgt_train_val_wer", "src_train_val_wer"} <= keys
    named = _M(_model_cfg([src], val_paths=[tgt, src], val={"name": ["target", "source"]}))
    assert named._validation_names == ["target_", "source_"]


def test_lightning_sets_the_epoch_and_resumes_mid_epoch(src, tgt, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    mixing = {"weights": [0.5, 0.5], "num_batches": 4, "seed": 11}
    every_6 = ModelCheckpoint(dirpath=str(tmp_path), every_n_train_steps=6, save_top_k=-1)
    ref = _Recorder(_model_cfg([src, tgt], mixing))
    _trainer(max_epochs=2, enable_checkpointing=True, callbacks=[every_6]).fit(ref)
    assert ref.mixed_sampler.epoch == 1  # Lightning called set_epoch on the sampler
    assert len(ref.seen) == 8 and ref.seen[:4] != ref.seen[4:]

    ckpt = str(tmp_path / "epoch=1-step=6.ckpt")  # saved mid-epoch, after the 2nd batch of epoch 1
    state = torch.load(ckpt, weights_only=False)[CHECKPOINT_KEY]
    assert (state["epoch"], state["position"]) == (1, 2)
    resumed = _Recorder(_model_cfg([src, tgt], mixing))
    _trainer(max_epochs=2).fit(resumed, ckpt_path=ckpt)
    assert resumed.seen == ref.seen[6:]  # the epoch continues where it stopped, it does not restart


def test_transfer_ctc_model_trains_on_mixed_data(src, tgt, base_nemo):
    from nemo_tl.models import transfer_ctc
    cfg = OmegaConf.create(
        {
            "train_ds": {
                "manifest_filepath": [tgt, src],
                "batch_size": 2,
                "sample_rate": 16000,
                "labels": EN_LABELS,
                "shuffle": True,
                "mixing": {"weights": [0.7, 0.3], "per_batch": True, "num_batches": 3},
            }
        }
    )
    model = transfer_ctc.TransferCTCModel.from_base(base_nemo, labels=EN_LABELS, cfg=cfg)
    assert isinstance(model.mixed_sampler, MixedBatchSampler)
    before = [p.detach().clone() for p in model.decoder.parameters()]
    _trainer(max_epochs=1).fit(model)
    assert model.mixed_sampler.epoch == 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.decoder.parameters()))
    assert Counter(model.mixed_sampler.manifest_of_batch(j) for j in range(3)) == Counter({0: 2, 1: 1})
