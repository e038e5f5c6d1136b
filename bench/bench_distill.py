"""DistillCTCModel training step (15x5 teachers → 5x3 student) vs the student trained alone.

    python bench/bench_distill.py [--device cuda] [--out distill.json] [--smoke]

Teachers: QuartzNet 15x5 (conf/quartznet_15x5.yaml) with nemo_tl's UncertaintyConvASRDecoder,
random weights, saved as ``.nemo`` and loaded by the student as a user's would be. Student:
QuartzNet 5x3 (conf/quartznet_5x3.yaml) with the uncertainty decoder, ``model.distillation`` of
conf/distill_ctc.yaml (token KD + uncertainty KD, α 2.5, β 1). Data: a manifest of batch-size
utterances of 10 s random audio (wav files) with 150-character transcripts; every variant trains
on the same batch, taken from the distilling model's own training loader (it carries sample ids).

Compared, fp32 and bf16-mixed, interleaved, each driven through its ``training_step``
(forward, losses, backward, NovoGrad step; no Trainer):

- NeMo EncDecCTCModel 5x3, plain decoder: "the student trained alone", the baseline;
- the same with the uncertainty decoder (what the σ head alone costs);
- DistillCTCModel, online, 1 teacher and 2 teachers (teachers run forward in the step);
- DistillCTCModel from the offline cache (``distillation.cache``), 1 and 2 teachers, the cached
  outputs in page-locked memory (as a loader with ``pin_memory: true`` delivers them) and copied to
  the device within the step; and, to split that copy from the loss, 2 teachers with the outputs
  already on the device;
- a teacher's forward alone (``teacher_outputs``), for the online goal.

Each variant's host syncs (one step under ``torch.cuda.set_sync_debug_mode("warn")``: the lines
where the host waits for the GPU) are counted and listed.

Goals: cache ≤ 1.10x; online with K teachers ≤ 1 + K · teacher_fwd / student_step + 0.05.
The cache build (teacher forwards + writes) is timed once and reported per hour of audio.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    NOVOGRAD,
    ROOT,
    Results,
    Variant,
    attach_step_trainer,
    autocast,
    base_parser,
    finish_args,
    fmt,
    host_syncs,
    markdown_table,
    measure,
    profile_call,
    resident_tensors,
    run_section,
    setup_optimizer,
    sync,
    tensor_bytes,
    training_step_variant,
    verdict,
    working,
)

GOAL_CACHE, GOAL_MARGIN = 1.10, 0.05
ON_DEVICE = "cache, 2 teachers, outputs already on the device"
PROFILED = ("student alone + σ head", "cache, 1 teacher", "cache, 2 teachers")
UNCERTAINTY_DECODER = "nemo_tl.modules.UncertaintyConvASRDecoder"


def quartznet_cfg(path: str, decoder_target: str | None = None):
    """The resolved ``model`` section of a QuartzNet config, without data sections, optionally another decoder."""
    from omegaconf import OmegaConf, open_dict

    cfg = OmegaConf.load(os.path.join(ROOT, path))
    cfg = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))
    with open_dict(cfg):
        for key in ("train_ds", "validation_ds", "test_ds"):
            cfg.pop(key, None)
        if decoder_target:
            cfg.decoder._target_ = decoder_target
    return cfg


def write_manifest(directory: str, n: int, seconds: float, chars: int, labels: list[str], seed: int) -> str:
    """``n`` wav files of random audio and a manifest whose transcripts are ``chars`` random letters and spaces."""
    import numpy as np
    import soundfile as sf

    from nemo_tl.data.synthetic import write_manifest as write_lines

    rng = np.random.default_rng(seed)
    letters = [c for c in labels if c.isalpha()]
    entries = []
    for i in range(n):
        audio = (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
        path = os.path.join(directory, f"utt{i:04d}.wav")
        sf.write(path, audio, 16000)
        text = "".join(rng.choice(letters) if (j % 6) else "x" for j in range(chars))
        words = [text[j : j + 5] for j in range(0, chars, 6)]
        entries.append({"audio_filepath": path, "duration": seconds, "text": " ".join(words)[:chars].strip()})
    return write_lines(os.path.join(directory, "train.json"), entries)


def distill_cfg(args, manifest: str, teachers: list[str], cache: str | None):
    """The student config with conf/distill_ctc.yaml's ``distillation`` section, these teachers and cache."""
    from omegaconf import OmegaConf, open_dict

    cfg = quartznet_cfg(args.student_config, UNCERTAINTY_DECODER)
    dist = OmegaConf.load(os.path.join(ROOT, "conf", "distill_ctc.yaml")).model.distillation
    with open_dict(cfg):
        cfg.distillation = OmegaConf.to_container(dist, resolve=True)
        cfg.distillation.teachers = [{"model": t, "weight": 1.0} for t in teachers]
        cfg.distillation.cache = cache
        cfg.train_ds = {
            "manifest_filepath": manifest,
            "sample_rate": cfg.sample_rate,
            "labels": list(cfg.labels),
            "batch_size": args.batch_size,
            "shuffle": False,
            "num_workers": 0,
            "trim_silence": False,
            "max_duration": 3 * args.seconds,
        }
    return cfg


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--teacher-config", default=None, help="default conf/quartznet_15x5.yaml (smoke: tiny)")
    p.add_argument("--student-config", default=None, help="default conf/quartznet_5x3.yaml (smoke: tiny)")
    p.add_argument("--batch-size", type=int, default=None, help="default 32 (smoke: 2)")
    p.add_argument("--seconds", type=float, default=None, help="default 10 (smoke: 1.5)")
    p.add_argument("--chars", type=int, default=None, help="transcript length; default 15 per second")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also torch.profiler one step of: " + ", ".join(PROFILED) + " (CUDA only)",
    )
    p.add_argument("--workdir", default=None, help="for the .nemo teachers, audio and cache (default: a temp dir)")
    args = p.parse_args(argv)
    finish_args(args, precisions=("fp32", "bf16"), warmup=3, steps=10)
    tiny = "conf/quartznet_tiny.yaml"
    args.teacher_config = args.teacher_config or (tiny if args.smoke else "conf/quartznet_15x5.yaml")
    args.student_config = args.student_config or (tiny if args.smoke else "conf/quartznet_5x3.yaml")
    args.batch_size = args.batch_size or (2 if args.smoke else 32)
    args.seconds = args.seconds or (1.5 if args.smoke else 10.0)
    args.chars = args.chars or int(15 * args.seconds)

    results = Results("bench_distill", args)
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_distill_")
    try:
        run_section(results, "distill", lambda: bench(args, results, workdir))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    results.finish()
    return results.data


def bench(args, results: Results, workdir: str) -> None:
    import torch
    from nemo.collections.asr.models import EncDecCTCModel

    import nemo_tl  # noqa: F401
    from nemo_tl.distill.cache import build_cache
    from nemo_tl.distill.teachers import teacher_outputs
    from nemo_tl.models.distill_ctc import DistillCTCModel
    from nemo_tl.transfer.base import load_base_model

    device = args.device
    teacher_cfg = quartznet_cfg(args.teacher_config, UNCERTAINTY_DECODER)
    labels = list(teacher_cfg.labels)
    manifest = write_manifest(workdir, args.batch_size, args.seconds, args.chars, labels, args.seed)
    teacher_paths = []
    for k in range(2):
        torch.manual_seed(args.seed + 100 + k)
        path = os.path.join(workdir, f"teacher_{k}.nemo")
        EncDecCTCModel(cfg=teacher_cfg).save_to(path)
        teacher_paths.append(path)

    # The offline cache, built on the device beforehand (as `python -m nemo_tl.distill.cache` would).
    cache_dir = os.path.join(workdir, "cache")
    build_s = []
    for k, path in enumerate(teacher_paths):
        teacher = load_base_model(path, what=f"teacher {k}").to(device)
        sync(device)
        t0 = time.perf_counter()
        build_cache(teacher, [manifest], os.path.join(cache_dir, f"teacher_{k}"), batch_size=8, device=device)
        sync(device)
        build_s.append(time.perf_counter() - t0)
        del teacher
    audio_hours = args.batch_size * args.seconds / 3600

    student_plain = EncDecCTCModel(cfg=quartznet_cfg(args.student_config))
    student_sigma = EncDecCTCModel(cfg=quartznet_cfg(args.student_config, UNCERTAINTY_DECODER))
    online1 = DistillCTCModel(cfg=distill_cfg(args, manifest, teacher_paths[:1], None))
    online2 = DistillCTCModel(cfg=distill_cfg(args, manifest, teacher_paths, None))
    cache1 = DistillCTCModel(cfg=distill_cfg(args, manifest, teacher_paths[:1], cache_dir))
    cache2 = DistillCTCModel(cfg=distill_cfg(args, manifest, teacher_paths, cache_dir))
    # An AudioTextBatch: audio, lengths, tokens, lengths, sample ids, and the teachers' cached outputs as
    # the loader's workers deliver them (on the CPU: the timed step includes moving them to the device).
    from nemo_tl.data.batches import AudioTextBatch
    from nemo_tl.distill.cache import CachedTeacherBatch

    loaded = next(iter(cache2.train_dataloader()))
    batch = AudioTextBatch(*(t.to(device) for t in loaded.nemo), sample_ids=loaded.sample_ids.to(device))
    cached = {1: CachedTeacherBatch(loaded.teacher.outputs[:1]), 2: loaded.teacher}
    if device.startswith("cuda"):  # page-locked, as a loader with `pin_memory: true` delivers them
        cached = {k: c.pin_memory() for k, c in cached.items()}
    # Diagnostic: the same step with the outputs already on the device, i.e. without their copy.
    on_device = CachedTeacherBatch(cached[2].on_device(device))

    # What each side trains on: NeMo's 4-tuple, the batch without, or with the teachers' cached outputs.
    models = {
        "NeMo student alone (5x3)": (student_plain, "nemo"),
        "student alone + σ head": (student_sigma, "nemo"),
        "online, 1 teacher": (online1, "online"),
        "online, 2 teachers": (online2, "online"),
        "cache, 1 teacher": (cache1, "cache"),
        "cache, 2 teachers": (cache2, "cache"),
        ON_DEVICE: (cache2, "cache"),
    }
    prepared = {}
    for name, (model, kind) in models.items():
        if name == ON_DEVICE:  # the same model and optimizer as "cache, 2 teachers"
            prepared[name] = prepared["cache, 2 teachers"]
            continue
        model.to(device)
        model.train()
        prepared[name] = (model, setup_optimizer(model, NOVOGRAD), kind)
        attach_step_trainer(model)
    teacher = online1.teachers[0].model.to(device)

    out = {
        "cache_build_s": build_s,
        "cache_build_s_per_audio_hour": [s / audio_hours for s in build_s],
        "precisions": {},
    }
    rows = []
    for precision in args.precisions:
        variants = []
        for name, (model, optimizer, kind) in prepared.items():
            teachers = [t.model for t in getattr(model, "teachers", [])] if kind == "online" else []
            steps_batch = batch.nemo if kind == "nemo" else batch
            if kind == "cache":
                steps_batch = batch._replace(teacher=on_device if name == ON_DEVICE else cached[len(model.teachers)])
            variants.append(
                training_step_variant(name, model, optimizer, steps_batch, device, precision, also_resident=teachers)
            )

        def teacher_fwd(precision=precision):
            with autocast(device, precision):
                teacher_outputs(teacher, batch.audio, batch.audio_lens)

        variants.append(Variant("teacher forward", teacher_fwd, lambda: tensor_bytes(resident_tensors([teacher]))))
        variants, failed = working(variants)
        r = measure(variants, device, warmup=args.warmup, steps=args.steps)
        for v in variants:  # where a step makes the host wait for the GPU
            r[v.name]["host_syncs"] = host_syncs(v, device)
            if args.profile and device.startswith("cuda") and v.name in PROFILED:
                r[v.name]["profile"] = profile_call(v.step, device, top=12)
        base = r["NeMo student alone (5x3)"]["median_ms"]
        tf = r.get("teacher forward", {}).get("median_ms")
        goals = {
            "cache, 1 teacher": GOAL_CACHE,
            "cache, 2 teachers": GOAL_CACHE,
            "online, 1 teacher": None if tf is None else 1 + tf / base + GOAL_MARGIN,
            "online, 2 teachers": None if tf is None else 1 + 2 * tf / base + GOAL_MARGIN,
        }
        out["precisions"][precision] = {"by_variant": r, "failed": failed, "goals": goals}
        results.add("distill", out)
        base_peak = r["NeMo student alone (5x3)"].get("peak_gib")
        for name, x in r.items():
            ratio = x["median_ms"] / base
            goal = goals.get(name)
            peak = x.get("peak_gib")
            rows.append(
                [
                    precision,
                    name,
                    fmt(x["median_ms"]),
                    f"{ratio:.2f}",
                    "" if goal is None else f"≤ {goal:.2f}: {verdict(ratio, goal)}",
                    fmt(peak, ".2f"),
                    "n/a" if peak is None or base_peak is None else f"{peak / base_peak:.2f}",
                    x.get("host_syncs", {}).get("count", "n/a"),
                ]
            )
        for name, error in failed.items():
            rows.append([precision, name, "not measured: " + error.replace("\n", " "), "", "", "", "", ""])
    print(f"\n### Distillation step vs the student alone ({args.steps} interleaved steps)\n")
    print(
        markdown_table(
            ["precision", "variant", "ms", "vs student", "goal", "peak GiB", "vs student", "host syncs"], rows
        )
    )
    for precision, p in out["precisions"].items():
        for name, x in p["by_variant"].items():
            where = x.get("host_syncs", {}).get("where")
            if where:
                print(f"host syncs, {precision}, {name}: " + ", ".join(f"{k} x{n}" for k, n in where.items()))
    for precision, p in out["precisions"].items():
        for name, x in p["by_variant"].items():
            prof = x.get("profile")
            if prof:
                print(f"\n#### torch.profiler, {precision}, {name}: wall {prof['wall_ms']:.1f} ms, "
                      f"GPU kernels {prof['kernel_ms']:.1f} ms, {prof['kernels']} launches\n")
                print(markdown_table(["operator", "GPU ms", "calls"], prof["top_ops"]))
    print(
        f"\ncache build: {', '.join(f'{s:.2f} s' for s in build_s)} for {audio_hours * 3600:.0f} s of audio "
        f"({', '.join(f'{s:.0f}' for s in out['cache_build_s_per_audio_hour'])} s per audio hour), incl. writes"
    )


if __name__ == "__main__":
    main()
