"""Lightning DDP on 2 CPU processes (gloo, forked from the test process): every nemo_tl model type.

Each run writes what every rank saw and ended with to ``rank{r}.pt``; the tests compare ranks.
"""

from __future__ import annotations

import math
import os
from datetime import timedelta

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import OmegaConf

from nemo_tl.models import TransferCTCModel
from tests.conftest import DE_LABELS, load_conf
from tests.helpers import snapshot

pytestmark = pytest.mark.usefixtures("single_thread")


class RankReport(pl.Callback):
    """Saves, per rank: batches seen (transcripts and language ids), final state, DDP facts."""

    def __init__(self, out: str) -> None:
        self.out, self.batches = out, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        texts = tuple(tuple(batch[2][i, : batch[3][i]].tolist()) for i in range(batch[2].shape[0]))
        lang_ids = getattr(batch, "lang_ids", None)  # multilingual batches (LanguageBatch)
        self.batches.append((texts, None if lang_ids is None else lang_ids.tolist()))

    def on_train_end(self, trainer, pl_module):
        wrapped = trainer.strategy.model
        teachers = {id(p) for t in getattr(pl_module, "teachers", []) for p in t.model.parameters()}
        report = {
            "batches": self.batches,
            "state": snapshot(pl_module),
            "parameters": [name for name, _ in pl_module.named_parameters()],
            "skipped": pl_module.skipped_nonfinite_steps,
            "wrapper": type(wrapped).__name__,
            "teacher_params_in_ddp": bool(teachers & {id(p) for p in wrapped.parameters()}),
            "steps": trainer.global_step,
        }
        torch.save(report, os.path.join(self.out, f"rank{trainer.global_rank}.pt"))


def ddp_fit(model, out: str, steps: int, find_unused_parameters: bool = False) -> list[dict]:
    """Fit ``model`` for ``steps`` steps with DDP on 2 forked CPU processes; return each rank's report."""
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        strategy=DDPStrategy(
            start_method="fork", timeout=timedelta(seconds=120), find_unused_parameters=find_unused_parameters
        ),
        callbacks=[RankReport(out)],
    )
    trainer.fit(model)
    return [torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False) for r in (0, 1)]


def _assert_ranks_identical(reports: list[dict]) -> None:
    """Same parameters on both ranks (BatchNorm statistics are per rank: DDP broadcasts rank 0's at each forward)."""
    assert reports[0]["parameters"]
    for name in reports[0]["parameters"]:
        assert torch.equal(reports[0]["state"][name], reports[1]["state"][name]), name


def test_transfer_ctc_frozen_blocks_mixed_data_and_a_nan_on_one_rank(tmp_path, base_nemo, de_manifest, en_manifest):
    train_ds = {"manifest_filepath": [de_manifest, en_manifest], "sample_rate": 16000, "labels": DE_LABELS,
                "batch_size": 2, "num_workers": 0, "shuffle": True, "mixing": {"weights": [0.5, 0.5], "num_batches": 3}}
    model = TransferCTCModel.from_base(base_nemo, labels=DE_LABELS, freeze_encoder_blocks=2, cfg={"train_ds": train_ds})
    frozen = [snapshot(b) for b in model.encoder.encoder[:2]]
    real, calls = model.loss.forward, [0]

    def nan_on_rank_1_step_2(*args, **kwargs):
        calls[0] += 1
        loss = real(*args, **kwargs)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        return loss * math.nan if rank == 1 and calls[0] == 2 else loss

    model.loss.forward = nan_on_rank_1_step_2
    reports = ddp_fit(model, str(tmp_path), steps=3)  # a hang here is the bug: rank 0 must skip too
    assert [r["wrapper"] for r in reports] == ["DistributedDataParallel"] * 2
    assert [r["skipped"] for r in reports] == [1, 1]  # the decision was all-reduced
    _assert_ranks_identical(reports)
    for r in reports:
        assert all(torch.isfinite(v).all() for v in r["state"].values() if v.is_floating_point())
        for i, before in enumerate(frozen):  # frozen blocks: weights and BatchNorm statistics unchanged
            prefix = f"encoder.encoder.{i}."
            assert all(torch.equal(v, r["state"][prefix + k]) for k, v in before.items()), i
    texts = [{t for b in r["batches"] for t in b[0]} for r in reports]
    assert len(reports[0]["batches"]) == len(reports[1]["batches"]) == 3
    per_step = [set(reports[0]["batches"][s][0]) & set(reports[1]["batches"][s][0]) for s in range(3)]
    assert all(not shared for shared in per_step) and texts[0] and texts[1]  # disjoint batches every step


def test_distill_ctc_teachers_stay_outside_ddp(tmp_path, base_nemo, en_manifest):
    from nemo_tl.models.distill_ctc import DistillCTCModel

    cfg = load_conf("quartznet_tiny")
    cfg.distillation = {"teachers": [{"model": base_nemo}], "uncertainty": False}
    cfg.train_ds = OmegaConf.merge(cfg.train_ds, {"manifest_filepath": en_manifest, "batch_size": 2})
    model = DistillCTCModel(cfg=cfg)
    teacher_before = snapshot(model.teachers[0].model)
    reports = ddp_fit(model, str(tmp_path), steps=2)
    assert [r["wrapper"] for r in reports] == ["DistributedDataParallel"] * 2
    assert not any(r["teacher_params_in_ddp"] for r in reports)
    assert not any(k.startswith("teacher") or "._teachers" in k for k in reports[0]["state"])
    _assert_ranks_identical(reports)
    assert all(torch.equal(v, snapshot(model.teachers[0].model)[k]) for k, v in teacher_before.items())


def test_multisoftmax_rnnt_one_language_per_step_on_both_ranks(tmp_path):
    from nemo_tl.data.synthetic import make_tone_manifest
    from nemo_tl.models.multisoftmax_rnnt import MultiSoftmaxRNNTModel
    from tests.test_multisoftmax_model import LANGS, TEXTS, ms_cfg, specific_params

    manifests = [make_tone_manifest(str(tmp_path), TEXTS[lang], name=lang, lang=lang, seed=i)
                 for i, lang in enumerate(LANGS)]
    cfg = ms_cfg()
    cfg.train_ds = OmegaConf.merge(cfg.train_ds, {  # hi gets weight 0: its parameters must not move
        "manifest_filepath": manifests, "batch_size": 2, "mixing": {"weights": [1, 1, 0], "per_batch": True},
    })
    model = MultiSoftmaxRNNTModel(cfg)
    hindi = {name: p.detach().clone() for name, p in specific_params(model, "hi").items()}
    # Plain DDP: the model itself tells the strategy that absent languages leave parameters unused.
    reports = ddp_fit(model, str(tmp_path), steps=3)
    assert [r["steps"] for r in reports] == [3, 3]
    hi = list(LANGS).index("hi")
    for s in range(3):
        langs = [set(r["batches"][s][1]) for r in reports]
        assert len(langs[0]) == 1 and langs[0] == langs[1] and hi not in langs[0], (s, langs)
    _assert_ranks_identical(reports)
    for r in reports:  # DDP's reducer left the unused language's gradients undefined: no optimizer update
        assert hindi and all(torch.equal(v, r["state"][name]) for name, v in hindi.items())
