"""Kill a run mid-epoch, resume it, get the uninterrupted run; saves that die half-way lose nothing."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import pytest
import torch
from nemo.collections.asr.models import ASRModel, EncDecCTCModel
from omegaconf import OmegaConf

from nemo_tl.models import TransferCTCModel
from nemo_tl.models.mixins import CHECKPOINT_KEY
from nemo_tl.training import RNG_CHECKPOINT_KEY
from nemo_tl.utils import AtomicCheckpointIO
from tests.conftest import DE_LABELS, load_conf
from tests.helpers import cpu_trainer, snapshot

STEPS, KILL_AT = 5, 3  # epochs of 2 mixed batches; killed before the 4th step (2nd batch of epoch 1)
SPEC_AUGMENT = {"_target_": "nemo.collections.asr.modules.SpectrogramAugmentation", "freq_masks": 1,
                "time_masks": 2, "freq_width": 8, "time_width": 0.1}


class Killed(Exception):
    """Stands in for the job being killed."""


class KillAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Killed(f"killed at step {self.step}")


class SaveAndKill(KillAt):
    """Save a checkpoint to ``path`` at ``step``, then kill the run there."""

    def __init__(self, step: int, path: str) -> None:
        super().__init__(step)
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)


class Batches(pl.Callback):
    """The transcripts of every training batch (which utterances it held)."""

    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append(tuple(tuple(batch[2][i, : batch[3][i]].tolist()) for i in range(batch[2].shape[0])))


def _model(base_nemo, manifests, seed: int) -> TransferCTCModel:
    torch.manual_seed(seed)
    train_ds = {"manifest_filepath": manifests, "sample_rate": 16000, "labels": DE_LABELS, "batch_size": 3,
                "shuffle": True, "num_workers": 0,
                "mixing": {"weights": [0.7, 0.3], "num_batches": 2, "seed": 5}}
    return TransferCTCModel.from_base(base_nemo, labels=DE_LABELS, freeze_encoder_blocks=2,
                                      cfg={"train_ds": train_ds, "spec_augment": SPEC_AUGMENT})


def _exp_manager(trainer: pl.Trainer, exp_dir: str) -> None:
    from nemo.utils.exp_manager import exp_manager

    exp_manager(trainer, {
        "exp_dir": exp_dir, "name": "resume", "use_datetime_version": False, "resume_if_exists": True,
        "resume_ignore_no_checkpoint": True, "create_tensorboard_logger": False, "create_preemption_callback": False,
        "checkpoint_callback_params": {"monitor": "train_loss", "every_n_train_steps": 1, "every_n_epochs": None, "save_top_k": 1,
                                       "save_last": True, "always_save_nemo": False, "filename": "{step}"},
    })


@pytest.fixture(scope="module")
def reference(base_nemo, de_manifest, en_manifest):
    """The uninterrupted run: its batches and final weights."""
    model, batches = _model(base_nemo, [de_manifest, en_manifest], seed=0), Batches()
    torch.manual_seed(7)
    cpu_trainer(STEPS, callbacks=[batches]).fit(model)
    return batches.seen, snapshot(model)


def test_killed_mid_epoch_and_resumed_through_exp_manager_equals_uninterrupted_run(
    tmp_path, base_nemo, de_manifest, en_manifest, reference
):
    ref_batches, ref_state = reference
    base_blocks = [snapshot(b) for b in ASRModel.restore_from(base_nemo, map_location="cpu").encoder.encoder[:2]]

    killed, batches = _model(base_nemo, [de_manifest, en_manifest], seed=0), Batches()
    torch.manual_seed(7)
    trainer = cpu_trainer(STEPS, enable_checkpointing=False, callbacks=[KillAt(KILL_AT), batches])
    _exp_manager(trainer, str(tmp_path))
    with pytest.raises(Killed):
        trainer.fit(killed)
    assert batches.seen == ref_batches[:KILL_AT]
    (last,) = (tmp_path / "resume" / "checkpoints").glob("*-last.ckpt")
    saved = torch.load(last, weights_only=False, map_location="cpu")
    assert saved["global_step"] == KILL_AT and (saved[CHECKPOINT_KEY]["epoch"], saved[CHECKPOINT_KEY]["position"]) == (1, 1)
    assert RNG_CHECKPOINT_KEY in saved

    resumed, batches = _model(base_nemo, [de_manifest, en_manifest], seed=123), Batches()
    torch.manual_seed(999)  # the resumed run's own randomness must not matter
    trainer = cpu_trainer(STEPS, enable_checkpointing=False, callbacks=[batches])
    _exp_manager(trainer, str(tmp_path))  # finds step=3-last.ckpt
    assert trainer.ckpt_path is not None and os.path.samefile(trainer.ckpt_path, last)
    trainer.fit(resumed)
    assert trainer.global_step == STEPS
    assert batches.seen == ref_batches[KILL_AT:]  # the sampler went on from the 2nd batch of epoch 1, then epoch 2
    final = snapshot(resumed)
    for name, value in ref_state.items():
        if value.is_floating_point():
            torch.testing.assert_close(final[name], value, rtol=0, atol=1e-6, msg=name)
        else:
            assert torch.equal(final[name], value), name
    for block, before in zip(resumed.encoder.encoder[:2], base_blocks):  # frozen blocks never moved
        assert all(torch.equal(before[k], v) for k, v in snapshot(block).items())
        assert not any(p.requires_grad for p in block.parameters())


def test_without_the_rng_states_the_resumed_run_differs(tmp_path, base_nemo, de_manifest, en_manifest, reference):
    """The control: spec_augment and dither draw from torch's RNG, so the RNG states are needed."""
    ref_batches, ref_state = reference
    ckpt = str(tmp_path / "mid.ckpt")

    killed = _model(base_nemo, [de_manifest, en_manifest], seed=0)
    torch.manual_seed(7)
    with pytest.raises(Killed):
        cpu_trainer(STEPS, callbacks=[SaveAndKill(KILL_AT, ckpt)]).fit(killed)
    state = torch.load(ckpt, weights_only=False)
    del state[RNG_CHECKPOINT_KEY]
    torch.save(state, ckpt)
    resumed = _model(base_nemo, [de_manifest, en_manifest], seed=123)
    torch.manual_seed(999)
    cpu_trainer(STEPS).fit(resumed, ckpt_path=ckpt)
    final = snapshot(resumed)
    assert max((final[k] - v).abs().max().item() for k, v in ref_state.items() if v.is_floating_point()) > 1e-6


def _student(base_nemo, manifests, cache: str, seed: int):
    from nemo_tl.models.distill_ctc import DistillCTCModel

    torch.manual_seed(seed)
    cfg = load_conf("quartznet_tiny")
    cfg.distillation = {"teachers": [{"model": base_nemo}], "uncertainty": False, "cache": cache}
    cfg.train_ds = OmegaConf.merge(cfg.train_ds, {
        "manifest_filepath": manifests, "batch_size": 2, "mixing": {"weights": [0.5, 0.5], "num_batches": 2},
    })
    return DistillCTCModel(cfg=cfg)


def _files(directory) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted(directory.rglob("*")) if p.is_file()}


def test_distillation_resumes_from_its_teacher_cache(tmp_path, base_nemo, en_manifest):
    from nemo_tl.data.synthetic import make_tone_manifest

    manifests = [en_manifest, make_tone_manifest(str(tmp_path), ["nine", "ten", "zero", "one"], name="more", seed=3)]
    reference = _student(base_nemo, manifests, str(tmp_path / "ref_cache"), seed=0)
    torch.manual_seed(7)
    cpu_trainer(STEPS).fit(reference)

    cache = tmp_path / "cache"
    killed = _student(base_nemo, manifests, str(cache), seed=0)  # builds the cache
    built = _files(cache)
    assert built
    ckpt = str(tmp_path / "killed.ckpt")

    torch.manual_seed(7)
    with pytest.raises(Killed):
        cpu_trainer(STEPS, callbacks=[SaveAndKill(KILL_AT, ckpt)]).fit(killed)

    resumed = _student(base_nemo, manifests, str(cache), seed=1)
    teacher_calls = []
    teacher = resumed.teachers[0].model
    teacher.register_forward_pre_hook(lambda *a: teacher_calls.append(1))
    torch.manual_seed(999)
    cpu_trainer(STEPS).fit(resumed, ckpt_path=ckpt)
    assert _files(cache) == built  # the cache was reused as it was: nothing rebuilt or rewritten
    assert teacher_calls == []  # the teacher never ran: its outputs came from the cache
    final, expected = snapshot(resumed), snapshot(reference)
    for name, value in expected.items():
        if value.is_floating_point():
            torch.testing.assert_close(final[name], value, rtol=0, atol=1e-6, msg=name)


# ---------------------------------------------------------------- saves killed half-way
class Interrupted(BaseException):
    """A kill while writing (not an Exception, like KeyboardInterrupt)."""


def test_save_to_killed_half_way_keeps_the_previous_nemo(tmp_path, base_nemo, monkeypatch):
    from nemo.core.connectors.save_restore_connector import SaveRestoreConnector

    model = TransferCTCModel.from_base(base_nemo, labels=DE_LABELS)
    path = tmp_path / "model.nemo"
    model.save_to(str(path))
    before = path.read_bytes()

    def half(filename, source_dir):
        with open(filename, "wb") as f:
            f.write(before[: len(before) // 2])
        raise Interrupted()

    monkeypatch.setattr(SaveRestoreConnector, "_make_nemo_file_from_folder", staticmethod(half))
    with torch.no_grad():
        model.decoder.decoder_layers[0].weight.add_(1.0)
    with pytest.raises(Interrupted):
        model.save_to(str(path))
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["model.nemo"]
    monkeypatch.undo()
    assert isinstance(EncDecCTCModel.restore_from(str(path), map_location="cpu"), TransferCTCModel)


def test_checkpoint_killed_half_way_keeps_the_previous_checkpoint(tmp_path, base_nemo, en_manifest, monkeypatch):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from tests.helpers import fit

    model = TransferCTCModel.from_base(base_nemo, labels=DE_LABELS)
    checkpoints = ModelCheckpoint(dirpath=str(tmp_path), save_last=True, every_n_train_steps=1)
    trainer = fit(model, en_manifest, steps=1, enable_checkpointing=True, callbacks=[checkpoints])
    assert type(trainer.strategy.checkpoint_io) is AtomicCheckpointIO  # Lightning's default was swapped
    last = tmp_path / "last.ckpt"
    before = last.read_bytes()

    def half(obj, f, *args, **kwargs):
        with open(f, "wb") as out:
            out.write(before[:100])
        raise Interrupted()

    monkeypatch.setattr(torch, "save", half)
    with pytest.raises(Interrupted):
        trainer.save_checkpoint(str(last))
    monkeypatch.undo()
    assert last.read_bytes() == before
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert torch.load(last, weights_only=False)["global_step"] == 1


def test_rng_states_go_back_per_rank_or_from_rank_0_when_the_world_size_changed():
    from types import SimpleNamespace

    from nemo_tl.training import ResumeRNGState
    from nemo_tl.training.rng_state import rng_states

    saved = []
    for seed in (1, 2):  # what ranks 0 and 1 of a 2-process run saved
        torch.manual_seed(seed)
        saved.append(rng_states())
    for world, rank, expected in ((2, 1, 1), (3, 2, 0), (1, 0, 0)):
        callback = ResumeRNGState()
        trainer = SimpleNamespace(world_size=world, global_rank=rank)
        callback.on_load_checkpoint(trainer, None, {RNG_CHECKPOINT_KEY: saved})
        torch.manual_seed(999)
        callback.on_train_batch_start(trainer, None, None, 0)
        assert torch.equal(torch.get_rng_state(), saved[expected]["torch"]), (world, rank)
        torch.manual_seed(999)
        callback.on_train_batch_start(trainer, None, None, 1)  # only the first batch after the resume
        assert not torch.equal(torch.get_rng_state(), saved[expected]["torch"])
