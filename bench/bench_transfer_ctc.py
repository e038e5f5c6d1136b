"""TransferCTCModel training step vs NeMo's EncDecCTCModel, QuartzNet 15x5, and block freezing.

    python bench/bench_transfer_ctc.py [--device cuda] [--out transfer_ctc.json] [--smoke]

Both models are built from ``conf/quartznet_15x5.yaml`` (random weights; the transfer model
takes the NeMo model as its base, same labels), batch 32 of 10 s random audio with 150-character
transcripts. One training step = Lightning's ``on_train_batch_start`` hook, NeMo's ``training_step``
(preprocessor with dither, SpecAugment, encoder, decoder, CTC loss) under autocast for bf16-mixed,
backward through the model's ``backward`` hook (nemo_tl's non-finite step guard is in these two
hooks), NovoGrad step (the optimizer of the configs, from the model's own ``setup_optimization``,
so nemo_tl's parameter groups without frozen parameters are used). Frozen blocks keep nemo_tl's forward
pre-hooks. No Trainer: ``self.log`` is a no-op and the training WER is not computed, on both sides.

1. Head to head, nothing frozen, fp32 and bf16-mixed: goal ratio ≤ 1.02.
2. Freezing the k lowest of the 18 encoder blocks (C1, B1-B15, C2, C3): step time and peak
   memory per k (should fall monotonically), with NeMo's ``model.encoder.freeze()`` as a reference.
"""

from __future__ import annotations

import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    NOVOGRAD,
    ROOT,
    Results,
    attach_step_trainer,
    base_parser,
    finish_args,
    fmt,
    markdown_table,
    measure,
    random_batch,
    run_section,
    setup_optimizer,
    training_step_variant,
    verdict,
)

GOAL_RATIO = 1.02


def quartznet_cfg(path: str):
    """The ``model`` section of a QuartzNet config, resolved, without data sections."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(path)
    cfg = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))
    for key in ("train_ds", "validation_ds", "test_ds"):
        cfg.pop(key, None)
    return cfg


def build_models(args):
    """NeMo baseline, NeMo with the whole encoder frozen, and one TransferCTCModel per k (on ``args.device``)."""
    from nemo.collections.asr.models import EncDecCTCModel

    import nemo_tl  # noqa: F401
    from nemo_tl.models import TransferCTCModel

    cfg = quartznet_cfg(os.path.join(ROOT, args.config))
    nemo = EncDecCTCModel(cfg=cfg)
    labels = list(cfg.labels)
    models = {"nemo": nemo}
    for k in args.ks:
        models[f"k{k}"] = TransferCTCModel.from_base(nemo, labels=labels, freeze_encoder_blocks=k)
    # Controls of the head-to-head: a second NeMo model (what two identical sides measure on this
    # machine) and nemo_tl with Lightning's plain hooks where the non-finite-step guard works.
    models["nemo_control"] = EncDecCTCModel(cfg=cfg)
    models["nemo_control"].load_state_dict(nemo.state_dict())
    models["unguarded"] = TransferCTCModel.from_base(nemo, labels=labels)
    models["unguarded"].on_train_batch_start = lambda batch, batch_idx: None
    models["unguarded"].backward = lambda loss, *a, **k: loss.backward()
    frozen = EncDecCTCModel(cfg=cfg)
    models["nemo_freeze"] = frozen
    optimizers = {}
    for name, model in models.items():
        model.to(args.device)
        model.train()
        if name == "nemo_freeze":
            model.encoder.freeze()  # NeMo's whole-encoder freeze: no grad, eval mode (BatchNorm statistics kept)
        optimizers[name] = setup_optimizer(model, NOVOGRAD)
        attach_step_trainer(model)
    n_blocks = len(models[f"k{args.ks[0]}"].encoder.encoder)
    return models, optimizers, n_blocks


def step_ratio(side: dict, reference: dict) -> float:
    """The median over rounds of ``side``'s step time over ``reference``'s in the same round."""
    return statistics.median(x / y for x, y in zip(side["times_ms"], reference["times_ms"]))


def variant_name(key: str, n_blocks: int) -> str:
    if key == "nemo":
        return "NeMo EncDecCTCModel"
    if key == "nemo_freeze":
        return "NeMo, encoder.freeze()"
    if key == "nemo_control":
        return "NeMo EncDecCTCModel, second copy (control)"
    if key == "unguarded":
        return "nemo_tl, k=0, without the non-finite-step guard"
    return f"nemo_tl, k={key[1:]} of {n_blocks}"


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="default conf/quartznet_15x5.yaml (smoke: conf/quartznet_tiny.yaml)")
    p.add_argument("--batch-size", type=int, default=None, help="default 32 (smoke: 2)")
    p.add_argument("--seconds", type=float, default=None, help="audio length; default 10 (smoke: 1.5)")
    p.add_argument("--chars", type=int, default=None, help="transcript length; default 15 per second")
    p.add_argument("--ks", type=int, nargs="+", default=None, help="frozen block counts (default 0 2 4 8 12 16 18)")
    p.add_argument("--ratio-steps", type=int, default=None, help="timed steps of the head-to-head (default 30)")
    args = p.parse_args(argv)
    finish_args(args, precisions=("fp32", "bf16"), warmup=3, steps=10)
    args.config = args.config or ("conf/quartznet_tiny.yaml" if args.smoke else "conf/quartznet_15x5.yaml")
    args.batch_size = args.batch_size or (2 if args.smoke else 32)
    args.seconds = args.seconds or (1.5 if args.smoke else 10.0)  # > SpecAugment rect_time (1.2 s)
    args.chars = args.chars or int(15 * args.seconds)
    args.ks = args.ks or ([0, 2, 6] if args.smoke else [0, 2, 4, 8, 12, 16, 18])
    if 0 not in args.ks:
        args.ks = [0, *args.ks]
    args.ratio_steps = args.ratio_steps or (2 if args.smoke else 30)

    results = Results("bench_transfer_ctc", args)
    models, optimizers, n_blocks = build_models(args)
    batch = random_batch(
        args.batch_size, args.seconds, args.chars, len(models["nemo"].decoder.vocabulary), args.device
    )
    results.data["setup"] = {
        "config": args.config,
        "parameters_m": round(sum(q.numel() for q in models["nemo"].parameters()) / 1e6, 2),
        "encoder_blocks": n_blocks,
        "batch": args.batch_size,
        "seconds": args.seconds,
        "chars": args.chars,
        "optimizer": NOVOGRAD,
    }

    def variants(keys, precision):
        return [
            training_step_variant(variant_name(k, n_blocks), models[k], optimizers[k], batch, args.device, precision)
            for k in keys
        ]

    def head_to_head():
        rows, out = [], {}
        keys = ["nemo", "k0", "nemo_control", "unguarded"]
        for precision in args.precisions:
            r = measure(variants(keys, precision), args.device, warmup=args.warmup, steps=args.ratio_steps)
            a, b = r[variant_name("nemo", n_blocks)], r[variant_name("k0", n_blocks)]
            ratio = b["median_ms"] / a["median_ms"]
            controls = {k: step_ratio(r[variant_name(k, n_blocks)], a) for k in keys[1:]}
            controls["guard"] = step_ratio(b, r[variant_name("unguarded", n_blocks)])
            out[precision] = {
                "nemo": a, "nemo_tl": b, "ratio": ratio, "goal": GOAL_RATIO, "median_step_ratios": controls,
                "control": r[variant_name("nemo_control", n_blocks)], "unguarded": r[variant_name("unguarded", n_blocks)],
            }
            rows.append(
                [
                    precision,
                    fmt(a["median_ms"]),
                    fmt(b["median_ms"]),
                    f"{ratio:.3f}",
                    verdict(ratio, GOAL_RATIO),
                    f"{controls['k0']:.3f}",
                    f"{controls['nemo_control']:.3f}",
                    f"{controls['unguarded']:.3f}",
                    f"{controls['guard']:.3f}",
                    fmt(a.get("peak_gib"), ".2f"),
                    fmt(b.get("peak_gib"), ".2f"),
                ]
            )
            results.add("head_to_head", out)
        print(f"\n### TransferCTCModel vs EncDecCTCModel, nothing frozen ({args.ratio_steps} interleaved steps)\n")
        print(
            "Median of per-step ratios, each step against the NeMo step of the same round: nemo_tl, a second NeMo\n"
            "model (control), nemo_tl without the guard; and nemo_tl against nemo_tl without the guard.\n"
        )
        print(
            markdown_table(
                ["precision", "NeMo ms", "nemo_tl ms", "ratio", f"≤ {GOAL_RATIO}", "per step: nemo_tl",
                 "control", "unguarded", "guard", "NeMo GiB", "nemo_tl GiB"],
                rows,
            )
        )

    def sweep():
        keys = ["nemo", *[f"k{k}" for k in args.ks], "nemo_freeze"]
        rows, out = [], {}
        for precision in args.precisions:
            r = measure(variants(keys, precision), args.device, warmup=args.warmup, steps=args.steps)
            ref = r[variant_name("nemo", n_blocks)]
            per_k = [r[variant_name(f"k{k}", n_blocks)] for k in args.ks]
            ms = [x["median_ms"] for x in per_k]
            gib = [x.get("peak_gib") for x in per_k]
            out[precision] = {
                "by_variant": r,
                "ks": args.ks,
                "time_monotonic": all(b <= a for a, b in zip(ms, ms[1:])),
                "memory_monotonic": None if None in gib else all(b <= a for a, b in zip(gib, gib[1:])),
            }
            results.add("freeze_sweep", out)
            for k in keys:
                x = r[variant_name(k, n_blocks)]
                frozen = {"nemo": "0", "nemo_freeze": f"{n_blocks} (encoder)"}.get(k, k[1:])
                peak = x.get("peak_gib")
                rows.append(
                    [
                        precision,
                        variant_name(k, n_blocks),
                        frozen,
                        fmt(x["median_ms"]),
                        f"{x['median_ms'] / ref['median_ms']:.2f}",
                        fmt(peak, ".2f"),
                        "n/a" if peak is None else f"{peak / ref['peak_gib']:.2f}",
                    ]
                )
        print(f"\n### Freezing the k lowest encoder blocks ({args.steps} interleaved steps)\n")
        print(markdown_table(["precision", "model", "frozen", "ms", "vs NeMo", "peak GiB", "vs NeMo"], rows))
        for precision, o in out.items():
            print(
                f"{precision}: time falls monotonically with k: {o['time_monotonic']}; memory: {o['memory_monotonic']}"
            )

    run_section(results, "head_to_head", head_to_head)
    run_section(results, "freeze_sweep", sweep)
    results.finish()
    return results.data


if __name__ == "__main__":
    main()
