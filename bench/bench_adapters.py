"""Training-step time and memory of encoder adapters vs full fine-tuning (issue 19).

    python bench/bench_adapters.py [--device cuda] [--out adapters.json] [--smoke] [--dim 32]

QuartzNet 15x5 (``conf/quartznet_15x5.yaml``, random weights) is the base; both variants are a
TransferCTCModel from it (same labels): ``full`` fine-tunes every parameter, ``adapters`` adds NeMo's
LinearAdapter (``--dim``) after every encoder block and trains only the adapters and the decoder
(``model.transfer.adapters``; the base encoder is frozen, BatchNorm statistics included). Batch 32 of
10 s random audio, 150-character transcripts; one step as in bench/common.py, variants interleaved.
Reported: median step ms, the ratio to full fine-tuning, peak GiB, trainable parameters. No goal:
the issue asks for the numbers (fewer gradients and optimizer state, the same forward plus the
adapters').
"""

from __future__ import annotations

import os
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
)


def build(args):
    """One model per variant on ``args.device``, and their optimizers (the models' own parameter groups)."""
    import torch
    from nemo.collections.asr.models import EncDecCTCModel
    from omegaconf import OmegaConf

    import nemo_tl  # noqa: F401
    from nemo_tl.models import TransferCTCModel

    cfg = OmegaConf.load(os.path.join(ROOT, args.config))
    cfg = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))
    for key in ("train_ds", "validation_ds", "test_ds"):
        cfg.pop(key, None)
    base = EncDecCTCModel(cfg=cfg)
    models, optimizers = {}, {}
    for name, adapters in (("full", None), ("adapters", {"dim": args.dim})):
        torch.manual_seed(args.seed)
        model = TransferCTCModel.from_base(base, labels=list(base.decoder.vocabulary), adapters=adapters)
        model = model.to(args.device).train()
        attach_step_trainer(model)
        optimizers[name] = setup_optimizer(model, NOVOGRAD)
        models[name] = model
    return models, optimizers


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="default conf/quartznet_15x5.yaml (smoke: conf/quartznet_tiny.yaml)")
    p.add_argument("--dim", type=int, default=32, help="adapter width")
    p.add_argument("--batch-size", type=int, default=None, help="default 32 (smoke: 2)")
    p.add_argument("--seconds", type=float, default=None, help="audio length; default 10 (smoke: 1.5)")
    args = p.parse_args(argv)
    finish_args(args, precisions=("fp32", "bf16"), warmup=3, steps=20)
    args.config = args.config or ("conf/quartznet_tiny.yaml" if args.smoke else "conf/quartznet_15x5.yaml")
    args.batch_size = args.batch_size or (2 if args.smoke else 32)
    args.seconds = args.seconds or (1.5 if args.smoke else 10.0)
    chars = int(15 * args.seconds)

    from nemo_tl.transfer.adapters import adapter_parameter_share

    results = Results("bench_adapters", args)
    models, optimizers = build(args)
    share = adapter_parameter_share(models["adapters"])
    trainable = {n: sum(q.numel() for q in m.parameters() if q.requires_grad) for n, m in models.items()}
    results.data["setup"] = {"config": args.config, "dim": args.dim, "batch": args.batch_size,
                             "seconds": args.seconds, "chars": chars, "optimizer": NOVOGRAD,
                             "trainable": trainable, "adapter_share": share}
    batch = random_batch(args.batch_size, args.seconds, chars, len(models["full"].decoder.vocabulary), args.device)

    def table():
        rows, out = [], {}
        for precision in args.precisions:
            variants = [training_step_variant(n, m, optimizers[n], batch, args.device, precision)
                        for n, m in models.items()]
            r = measure(variants, args.device, warmup=args.warmup, steps=args.steps)
            full = r["full"]["median_ms"]
            out[precision] = {"by_variant": r, "ratios": {n: r[n]["median_ms"] / full for n in models}}
            results.add("step_time", out)
            for name in models:
                rows.append([precision, name, f"{trainable[name]:,}", fmt(r[name]["median_ms"]),
                             f"{r[name]['median_ms'] / full:.3f}", fmt(r[name].get("peak_gib"), ".2f")])
        print(f"\n### Adapters (dim {args.dim}) vs full fine-tuning ({args.steps} interleaved steps)\n")
        print(markdown_table(["precision", "variant", "trainable params", "ms", "vs full", "peak GiB"], rows))
        print(f"\nAdapters {share['adapters']:,} + decoder {share['decoder']:,} = {100 * share['share']:.2f}% "
              f"of {share['total']:,} parameters.")

    run_section(results, "step_time", table)
    results.finish()
    return results.data


if __name__ == "__main__":
    main()
