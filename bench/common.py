"""Timing helpers shared by the GPU benchmarks under ``bench/``.

Rules (issue 6): every ratio is against plain NeMo measured in the same process on the same
device; warm-up first; synchronize around each step; the median of at least 10 steps; the
variants of one comparison are interleaved step by step (in a rotating order) so that clock
and thermal drift cancel; peak memory from ``torch.cuda.max_memory_allocated`` after
``torch.cuda.reset_peak_memory_stats``.

Several models are resident on the GPU at once (that is what interleaving needs), so the peak of
one variant is computed as what it would be alone: the bytes it keeps resident (parameters,
buffers, optimizer state, frozen teachers, its input batch) plus the step's peak above what was
allocated when the step started (gradients are freed between steps, ``zero_grad(set_to_none=True)``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import time
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

GIB = 1024**3

from nemo_tl.utils.environment import environment  # noqa: E402, F401  (every bench's header)

PRECISIONS = ("fp32", "bf16")


# ------------------------------------------------------------------------------ arguments, environment
def base_parser(description: str) -> argparse.ArgumentParser:
    """Arguments every benchmark takes: --device, --smoke, --out, --precisions, --warmup, --steps."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    p.add_argument("--smoke", action="store_true", help="tiny shapes and 2 timed steps: checks the script runs")
    p.add_argument("--out", default=None, help="write the results as JSON here (rewritten after every section)")
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=None, help="fp32 and/or bf16-mixed")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per variant first")
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant (median kept)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true", help="keep NeMo's info and warning logs")
    return p


def finish_args(args: argparse.Namespace, *, precisions: Sequence[str], warmup: int, steps: int) -> None:
    """Fill defaults; ``--smoke`` means 1 warm-up and 2 timed steps."""
    if args.precisions is None:
        args.precisions = list(precisions)
    if args.warmup is None:
        args.warmup = 1 if args.smoke else warmup
    if args.steps is None:
        args.steps = 2 if args.smoke else steps
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA device (use --device cpu for a smoke run)")
    torch.manual_seed(args.seed)
    if not args.verbose:
        from nemo.utils import logging as nemo_logging

        nemo_logging.setLevel(nemo_logging.ERROR)


def print_environment(env: dict[str, Any], title: str) -> None:
    where = env["gpu"] or f"CPU ({env.get('cpu')}), NOT A RESULT"
    print(f"## {title}\n{where}; {env['date_utc']}; torch {env['torch']} (CUDA {env['cuda']}), NeMo {env['nemo']}")


class Results:
    """The JSON result of one benchmark, written again after every section (a timeout keeps what was done)."""

    def __init__(self, name: str, args: argparse.Namespace):
        self.start = time.perf_counter()
        self.data: dict[str, Any] = {
            "benchmark": name,
            "smoke": bool(args.smoke),
            "env": environment(args.device),
            "args": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, list, bool, type(None)))},
            "sections": {},
            "errors": {},
        }
        self.out = args.out
        print_environment(self.data["env"], name)

    def add(self, section: str, value: Any) -> None:
        self.data["sections"][section] = value
        self.save()

    def error(self, section: str, message: str) -> None:
        print(f"[{section}] NOT MEASURED: {message}", flush=True)
        self.data["errors"][section] = message
        self.save()

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.perf_counter() - self.start, 1)
        if self.out:
            os.makedirs(os.path.dirname(os.path.abspath(self.out)), exist_ok=True)
            tmp = f"{self.out}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(self.data, f, indent=1, default=str)
            os.replace(tmp, self.out)

    def finish(self) -> None:
        self.save()
        print(f"\nelapsed: {self.data['elapsed_s']:.1f} s", flush=True)


# ------------------------------------------------------------------------------ device helpers
def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def autocast(device: str, precision: str):
    """bf16-mixed as Lightning does it (autocast around the forward and loss, backward outside); fp32: nothing."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of distinct storages among ``tensors`` (shared storages counted once)."""
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            continue
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in seen or key == 0:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


def resident_tensors(
    modules: Sequence[torch.nn.Module] = (),
    optimizer: torch.optim.Optimizer | None = None,
    batch: Sequence[Any] = (),
) -> list[torch.Tensor]:
    """Parameters and buffers of ``modules``, the optimizer's state and the batch's tensors."""
    out: list[torch.Tensor] = []
    for m in modules:
        out.extend(m.parameters())
        out.extend(m.buffers())
    if optimizer is not None:
        for state in optimizer.state.values():
            out.extend(v for v in state.values() if isinstance(v, torch.Tensor))
    out.extend(t for t in batch if isinstance(t, torch.Tensor))
    return out


# ------------------------------------------------------------------------------ driving NeMo models
def attach_step_trainer(model: Any, log_every_n_steps: int = 10**9) -> None:
    """Let ``model.training_step`` run without a Lightning Trainer.

    NeMo's steps read ``trainer.global_step`` and ``trainer.log_every_n_steps`` (the training WER is
    computed every ``log_every_n_steps``; here never, on every side alike); ``self.log`` becomes a
    no-op on every side alike.
    """
    model.trainer = types.SimpleNamespace(global_step=0, log_every_n_steps=log_every_n_steps, world_size=1, global_rank=0)
    model.log = lambda *a, **k: None
    model.log_dict = lambda *a, **k: None


def setup_optimizer(model: Any, optim: dict) -> torch.optim.Optimizer:
    """The model's own optimizer set-up (NeMo's ``setup_optimization``: its parameter groups, NovoGrad)."""
    from omegaconf import OmegaConf

    cfg = {k: v for k, v in optim.items() if k != "sched"}
    optimizer, _ = model.setup_optimization(optim_config=OmegaConf.create(cfg))
    return optimizer


NOVOGRAD = {"name": "novograd", "lr": 0.01, "betas": [0.8, 0.5], "weight_decay": 0.001}


@dataclass
class Variant:
    """One side of a comparison: ``step()`` runs one full training (or decoding) step."""

    name: str
    step: Callable[[], Any]
    resident: Callable[[], int] = lambda: 0
    extra: dict[str, Any] = field(default_factory=dict)


def training_step_variant(
    name: str,
    model: Any,
    optimizer: torch.optim.Optimizer,
    batch: Sequence[Any],
    device: str,
    precision: str,
    *,
    step_fn: Callable[[Any, Sequence[Any], int], torch.Tensor] | None = None,
    also_resident: Sequence[torch.nn.Module] = (),
) -> Variant:
    """A Variant whose step is one Lightning training step without the Trainer, the same for every model.

    zero_grad; the model's ``on_train_batch_start`` hook; forward + loss (``model.training_step``)
    under autocast; backward through the model's ``backward`` hook; the model's
    ``on_before_optimizer_step`` hook; optimizer step. The hooks are where nemo_tl's non-finite step
    guard and the L2-SP/EWC gradients work (NeMo's models inherit Lightning's plain ones, no-ops).
    """
    counter = {"n": 0}

    def loss_of(m, b, i):
        return m.training_step(b, i)["loss"]

    fn = step_fn or loss_of

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model.on_train_batch_start(batch, counter["n"])
        with autocast(device, precision):
            loss = fn(model, batch, counter["n"])
        model.backward(loss)
        model.on_before_optimizer_step(optimizer)
        optimizer.step()
        counter["n"] += 1

    def resident() -> int:
        return tensor_bytes(resident_tensors([model, *also_resident], optimizer, batch))

    return Variant(name, step, resident)


# ------------------------------------------------------------------------------ measuring
def measure(
    variants: Sequence[Variant],
    device: str,
    *,
    warmup: int,
    steps: int,
    memory: bool = True,
) -> dict[str, dict[str, Any]]:
    """Interleaved timing of ``variants``; returns ``{name: {median_ms, times_ms, peak_gib, ...}}``.

    Each round runs one step of every variant, in an order rotated every round. Peak memory is
    taken afterwards, one extra step per variant (see the module docstring).
    """
    for v in variants:
        for _ in range(warmup):
            v.step()
    sync(device)
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    n = len(variants)
    for r in range(steps):
        for j in range(n):
            v = variants[(r + j) % n]
            sync(device)
            t0 = time.perf_counter()
            v.step()
            sync(device)
            times[v.name].append((time.perf_counter() - t0) * 1000.0)
    out: dict[str, dict[str, Any]] = {}
    for v in variants:
        ts = times[v.name]
        q = statistics.quantiles(ts, n=4) if len(ts) >= 2 else [ts[0], ts[0], ts[0]]
        out[v.name] = {
            "median_ms": statistics.median(ts),
            "q1_ms": q[0],
            "q3_ms": q[2],
            "times_ms": [round(t, 3) for t in ts],
            **v.extra,
        }
    if memory and device.startswith("cuda"):
        for v in variants:
            out[v.name].update(peak_memory(v, device))
    return out


def working(variants: Sequence[Variant]) -> tuple[list[Variant], dict[str, str]]:
    """The variants whose first step runs (it counts as a warm-up step), and the error of each other one."""
    import traceback

    ok, failed = [], {}
    for v in variants:
        try:
            v.step()
            ok.append(v)
        except Exception as e:
            traceback.print_exc()
            failed[v.name] = f"{type(e).__name__}: {e}"
            print(f"[{v.name}] NOT MEASURED: {failed[v.name]}", flush=True)
    return ok, failed


def peak_memory(variant: Variant, device: str) -> dict[str, float]:
    """Peak GiB of one step of ``variant`` as if it were alone on the device."""
    gc.collect()
    sync(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    variant.step()
    sync(device)
    step_peak = torch.cuda.max_memory_allocated(device) - before
    resident = variant.resident()
    return {
        "peak_gib": (resident + step_peak) / GIB,
        "resident_gib": resident / GIB,
        "step_peak_gib": step_peak / GIB,
    }


def host_syncs(variant: Variant, device: str) -> dict[str, Any]:
    """The operations of one step of ``variant`` that make the host wait for the GPU.

    One step under ``torch.cuda.set_sync_debug_mode("warn")``: every synchronizing CUDA call
    (``.item()``, a blocking host-to-device copy, ``nonzero`` ...) warns, from the Python line
    that made it. Returns ``{"count": n, "where": {"file:line": n, ...}}``.
    """
    import warnings

    if not device.startswith("cuda"):
        return {}
    sync(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            variant.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sync(device)
    where: dict[str, int] = {}
    for w in caught:
        if "synchroniz" in str(w.message):
            key = f"{os.path.relpath(w.filename, ROOT) if w.filename.startswith(ROOT) else w.filename}:{w.lineno}"
            where[key] = where.get(key, 0) + 1
    return {"count": sum(where.values()), "where": where}


def profile_call(fn: Callable[[], Any], device: str, top: int = 0) -> dict[str, Any]:
    """torch.profiler over one call of ``fn`` (after one untimed call): where its wall time goes.

    ``wall_ms``; ``kernel_ms`` (the GPU kernels' own time, summed, as torch.profiler's table totals
    it: device events only, not the operators and launches they are also attributed to, nor
    user-annotated ranges; the GPU is idle for the rest of the wall time); ``graph_replays`` (``cudaGraphLaunch``: with NeMo's no_while_loops graphs, one
    per step of its decoding loop); ``host_syncs`` (``aten::item`` + ``aten::_local_scalar_dense``,
    so each ``.item()`` twice: flag reads from the GPU, and reads of CPU tensors); ``kernels``
    (launches outside graphs); with ``top``, ``top_ops``: the ``top`` operators with the most GPU
    time of their own, as ``[name, GPU ms, calls]``.
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        wall = time.perf_counter() - start
    events = prof.key_averages()

    def count(*names):
        return sum(e.count for e in events if e.key in names)

    def own_us(e):
        return getattr(e, "self_device_time_total", 0) or 0

    kernels = [e for e in events if e.device_type != DeviceType.CPU and not e.is_user_annotation]
    out = {
        "wall_ms": wall * 1e3,
        "kernel_ms": sum(own_us(e) for e in kernels) / 1e3,
        "graph_replays": count("cudaGraphLaunch"),
        "host_syncs": count("aten::item", "aten::_local_scalar_dense"),
        "kernels": count("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx"),
    }
    if top:
        ranked = sorted((e for e in events if own_us(e) > 0), key=own_us, reverse=True)[:top]
        out["top_ops"] = [[e.key[:80], round(own_us(e) / 1e3, 3), e.count] for e in ranked]
    return out


def free() -> None:
    """Collect garbage and return cached GPU memory (between sections)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------ output
def fmt(x: float | None, spec: str = ".1f") -> str:
    return "n/a" if x is None else format(x, spec)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table (numbers already formatted by the caller)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(value: float | None, goal: float) -> str:
    """'yes' / 'NO' for value ≤ goal."""
    if value is None:
        return "n/a"
    return "yes" if value <= goal else "NO"


def run_section(results: Results, section: str, fn: Callable[[], Any]) -> Any:
    """Run one section; an exception is recorded (and printed) instead of stopping the script."""
    import traceback

    t0 = time.perf_counter()
    try:
        value = fn()
    except Exception as e:  # one failing section must not lose the others
        traceback.print_exc()
        results.error(section, f"{type(e).__name__}: {e}")
        return None
    print(f"[{section}] {time.perf_counter() - t0:.1f} s", flush=True)
    return value


def random_batch(
    batch: int, seconds: float, chars: int, vocab: int, device: str, *, sample_rate: int = 16000, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random audio (B, S) at speech level, full lengths, and random label ids (B, U) in [0, vocab)."""
    g = torch.Generator().manual_seed(seed)
    samples = int(seconds * sample_rate)
    audio = 0.1 * torch.randn(batch, samples, generator=g)
    audio_len = torch.full((batch,), samples, dtype=torch.long)
    tokens = torch.randint(0, vocab, (batch, chars), generator=g)
    tokens_len = torch.full((batch,), chars, dtype=torch.long)
    return tuple(t.to(device) for t in (audio, audio_len, tokens, tokens_len))
