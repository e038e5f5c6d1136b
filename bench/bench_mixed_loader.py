"""Mixed-manifest loader vs NeMo's plain loader on the same manifests, and index generation speed.

    python bench/bench_mixed_loader.py [--num-workers 8] [--batch-size 32] [--out result.json]

Builds two tone-audio manifests (``make_tone_manifest``), then the training loader of a tiny
QuartzNet twice through the real code paths: plain NeMo (``EncDecCTCModel``, the manifests
concatenated) and nemo_tl (``ManifestDataMixin`` with ``train_ds.mixing``, per sample and per
batch). Prints batches/s of each and the ratio mixed / plain (goal >= 0.95), and the index
generation speed of :class:`~nemo_tl.data.mixing.MixedBatchSampler` (goal >= 100k samples/s).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from nemo.collections.asr.models import EncDecCTCModel
from omegaconf import OmegaConf, open_dict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nemo_tl.data.mixing import MixedBatchSampler  # noqa: E402
from nemo_tl.data.synthetic import make_tone_manifest  # noqa: E402
from nemo_tl.models.mixins import ManifestDataMixin  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = "the quick brown fox jumps over lazy dog and then runs far away from home".split()


class MixedCTC(ManifestDataMixin, EncDecCTCModel):
    """Plain EncDecCTCModel with nemo_tl's data set-up."""


def _texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 6)))) for _ in range(n)]


def _model_cfg(manifests: list[str], args: argparse.Namespace, mixing: dict | None):
    cfg = OmegaConf.load(os.path.join(ROOT, "conf", "quartznet_tiny.yaml"))
    cfg = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))
    with open_dict(cfg):
        cfg.train_ds.manifest_filepath = manifests
        cfg.train_ds.batch_size = args.batch_size
        cfg.train_ds.num_workers = args.num_workers
        cfg.train_ds.pin_memory = torch.cuda.is_available()
        cfg.train_ds.shuffle = True
        if mixing is not None:
            cfg.train_ds.mixing = mixing
    return cfg


def _endless(loader):
    epoch = 0
    while True:
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def batches_per_second(loader, batches: int, warmup: int) -> float:
    """Steady-state batches/s (the iterator and its workers are started before timing)."""
    it = _endless(loader)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
        if torch.cuda.is_available():
            [t.cuda(non_blocking=True) for t in batch if isinstance(t, torch.Tensor)]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return batches / (time.perf_counter() - start)


def index_speed(samples: int, batch_size: int, world: int, per_batch: bool) -> dict[str, float]:
    """Samples/s of one epoch's plan (all ranks) and of iterating one rank's batches as lists."""
    sizes = [1_000_000, 300_000, 5_000]
    num_batches = max(1, samples // (batch_size * world))
    s = MixedBatchSampler(
        sizes, [0.6, 0.3, 0.1], batch_size, per_batch=per_batch, num_batches=num_batches, num_replicas=world
    )
    t = time.perf_counter()
    s.global_plan(1)
    plan = s.samples_per_epoch / (time.perf_counter() - t)
    s.set_epoch(2)
    t = time.perf_counter()
    n = sum(len(b) for b in s)
    rank = n / (time.perf_counter() - t)
    return {"epoch_plan_samples_per_s": plan, "rank_iteration_samples_per_s": rank}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--utterances", type=int, nargs=2, default=[256, 768], help="target and source sizes")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--batches", type=int, default=60, help="batches timed per run")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3, help="alternating runs per loader; the median is kept")
    p.add_argument("--index-samples", type=int, default=2_000_000)
    p.add_argument("--dir", default=None, help="where to write the manifests (default: a temporary directory)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)

    workdir = args.dir or tempfile.mkdtemp(prefix="bench_mixing_")
    target = make_tone_manifest(workdir, _texts(args.utterances[0], 1), name="target", lang="de")
    source = make_tone_manifest(workdir, _texts(args.utterances[1], 2), name="source", lang="en", seed=10_000)
    manifests = [target, source]

    loaders = {
        "plain NeMo (concatenated)": EncDecCTCModel(_model_cfg(manifests, args, None)).train_dataloader(),
        "mixed, per sample": MixedCTC(_model_cfg(manifests, args, {"weights": [0.8, 0.2]})).train_dataloader(),
        "mixed, per batch": MixedCTC(_model_cfg(manifests, args, {"weights": "hours", "per_batch": True})).train_dataloader(),
    }
    runs: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(args.repeats):
        for name, loader in loaders.items():
            runs[name].append(batches_per_second(loader, args.batches, args.warmup))
    rates = {name: statistics.median(v) for name, v in runs.items()}
    plain = rates["plain NeMo (concatenated)"]

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or 'cpu'})"
    print(
        f"device: {device}; batch {args.batch_size}, {args.num_workers} workers, {args.batches} batches x {args.repeats}"
    )
    print(f"{'loader':<28}{'batches/s':>12}{'vs plain':>10}")
    for name, rate in rates.items():
        print(f"{name:<28}{rate:>12.1f}{rate / plain:>9.2f}x")

    index = {
        "per_sample": index_speed(args.index_samples, args.batch_size, 8, False),
        "per_batch": index_speed(args.index_samples, args.batch_size, 8, True),
    }
    print(f"\n{'index generation (8 ranks)':<28}{'epoch plan':>16}{'one rank':>16}")
    for mode, r in index.items():
        print(f"{mode:<28}{r['epoch_plan_samples_per_s']:>12.3g} s/s{r['rank_iteration_samples_per_s']:>12.3g} s/s")

    result = {
        "device": device,
        "args": vars(args),
        "batches_per_s": rates,
        "batches_per_s_runs": runs,
        "ratio_vs_plain": {name: rate / plain for name, rate in rates.items()},
        "index_samples_per_s": index,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
