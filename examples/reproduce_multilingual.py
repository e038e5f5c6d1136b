"""Joshi et al. 2021 Tables 2, 4, 5, 7 on synthesized speech, in one run.

    python examples/reproduce_multilingual.py --out runs/ms --langs en,de,ru,hi --hours 0.3 \
        --steps 1500 --text digits --encoder quartznet --freeze-bn-after 300

(the defaults; docs/RESULTS.md, setting C, third session, gives its results on one H200).

1. Synthesizes one corpus per language (``nemo_tl.data.synth_corpus``; ``lang`` on every line).
2. Trains ``conf/multisoftmax_rnnt.yaml`` three times on the same manifests with the same sampler
   (one language per batch, drawn ∝ hours): ``multisoftmax`` (with the LID head), and the paper's
   baselines ``vanilla`` (one union softmax) and ``onehot`` (union softmax, language one-hot at the
   encoder input).
3. Scores them on the test sets: multi-softmax known-language, LID-free and oracle; vanilla
   (LID-free by construction); onehot (known language). Per-language WER, word-weighted
   average, WERR against vanilla, utterance LID accuracy, T_avg; then the (τ, s_th) sweep of the
   multi-softmax model. Writes ``results.md``, ``results.json`` and ``sweep.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

# ``--encoder quartznet``: a QuartzNet-style BatchNorm encoder (2x subsampling), 256 channels.
QUARTZNET_BLOCKS = [
    (1, 33, 1, 0.0, False),
    (3, 33, 1, 0.1, True),
    (3, 39, 1, 0.1, True),
    (3, 51, 1, 0.1, True),
    (3, 63, 1, 0.1, True),
    (1, 87, 2, 0.1, False),
]  # repeat, kernel, dilation, dropout, residual


def quartznet_encoder(features: int, hidden: int) -> dict:
    blocks = [
        {
            "filters": 256,
            "repeat": r,
            "kernel": [k],
            "stride": [2 if i == 0 else 1],
            "dilation": [d],
            "dropout": p,
            "residual": res,
            "separable": True,
        }
        for i, (r, k, d, p, res) in enumerate(QUARTZNET_BLOCKS)
    ]
    blocks.append(
        {
            "filters": hidden,
            "repeat": 1,
            "kernel": [1],
            "stride": [1],
            "dilation": [1],
            "dropout": 0.0,
            "residual": False,
            "separable": False,
        }
    )
    return {
        "_target_": "nemo.collections.asr.modules.ConvASREncoder",
        "feat_in": features,
        "activation": "relu",
        "conv_mask": True,
        "jasper": blocks,
    }


def train(cfg, steps: int):
    from nemo_tl.models import MultiSoftmaxRNNTModel
    from nemo_tl.utils.training import TrainingTimer, quick_trainer

    timer = TrainingTimer()
    trainer = quick_trainer(steps, callbacks=[timer])
    model = MultiSoftmaxRNNTModel(cfg=cfg, trainer=trainer)
    trainer.fit(model)
    model.eval()
    return model, timer.seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--langs", default="en,de,ru,hi")
    p.add_argument("--hours", type=float, default=0.3)
    p.add_argument("--text", default="digits")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=None, help="default: conf/multisoftmax_rnnt.yaml optim.lr")
    p.add_argument("--layers", type=int, default=None, help="encoder layers (default: the config's)")
    p.add_argument(
        "--encoder",
        choices=("conf", "quartznet"),
        default="quartznet",
        help="quartznet: a QuartzNet-style BatchNorm encoder; conf: conf/multisoftmax_rnnt.yaml's Conformer",
    )
    p.add_argument(
        "--freeze-bn-after",
        type=int,
        default=300,
        help="model.freeze_batch_norm_after (steps; -1: never; ignored by --encoder conf, which has no BatchNorm)",
    )
    p.add_argument("--architectures", default="multisoftmax,vanilla,onehot")
    p.add_argument("--eval-batch", type=int, default=64, help="utterances per decoding batch in evaluation")
    p.add_argument("--per-batch", type=int, default=1, help="1: one language per batch (the paper), 0: mixed")
    p.add_argument("--save", action="store_true", help="also write the multi-softmax model to OUT/multisoftmax.nemo")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from nemo_tl.utils.training import quiet_logs

    quiet_logs()
    from omegaconf import OmegaConf

    from nemo_tl.data.synth_corpus import synthesize_corpus
    from nemo_tl.data.texts import labels_for
    from nemo_tl.decoding.multilingual_eval import evaluate, format_table, plot_sweep, sweep

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    langs = args.langs.split(",")
    corpus = synthesize_corpus(str(out / "corpus"), langs, hours=args.hours, seed=args.seed, text_source=args.text)
    print(f"corpus in {time.time() - t0:.0f} s", flush=True)
    test = [corpus[lang]["test"] for lang in langs]

    base = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "multisoftmax_rnnt.yaml"), resolve=True)["model"]
    results: dict = {"args": vars(args), "train_seconds": {}, "rows": {}}
    rows = {}
    models = {}
    for architecture in args.architectures.split(","):
        cfg = OmegaConf.create(base)
        cfg.languages = {lang: {"labels": labels_for(lang)} for lang in langs}
        cfg.architecture = architecture
        cfg.lid.enabled = architecture == "multisoftmax"
        cfg.train_ds.manifest_filepath = [corpus[lang]["train"] for lang in langs]
        cfg.train_ds.batch_size = args.batch
        cfg.train_ds.mixing = {"per_batch": bool(args.per_batch), "weights": "hours", "seed": args.seed}
        cfg.validation_ds.manifest_filepath = None
        if args.lr is not None:
            cfg.optim.lr = args.lr
        if args.layers is not None:
            cfg.encoder.n_layers = args.layers
        if args.encoder == "quartznet":
            cfg.encoder = quartznet_encoder(cfg.preprocessor.features, cfg.model_defaults.enc_hidden)
            cfg.optim = {
                "name": "novograd",
                "lr": 0.01,
                "betas": [0.8, 0.25],
                "weight_decay": 0.001,
                "sched": {"name": "CosineAnnealing", "warmup_ratio": 0.12, "min_lr": 1e-5},
            }
        if args.encoder == "quartznet" and args.freeze_bn_after >= 0:
            cfg.freeze_batch_norm_after = args.freeze_bn_after
        torch.manual_seed(args.seed)
        models[architecture], seconds = train(cfg, args.steps)
        results["train_seconds"][architecture] = seconds
        print(f"{architecture}: trained {args.steps} steps in {seconds:.0f} s", flush=True)

    ms = models["multisoftmax"]
    if args.save:
        from nemo_tl.utils.atomic import atomic_save_to

        atomic_save_to(ms, str(out / "multisoftmax.nemo"))
    if "vanilla" in models:
        rows["vanilla (LID-free)"] = evaluate(models["vanilla"], test, "lid_free", args.eval_batch)
    if "onehot" in models:
        rows["onehot (known language)"] = evaluate(models["onehot"], test, "known", args.eval_batch)
    for mode in ("known", "lid_free", "oracle"):
        rows[f"multisoftmax ({mode})"] = evaluate(ms, test, mode, args.eval_batch)
    table = format_table(rows, langs, rows.get("vanilla (LID-free)"))
    (out / "results.md").write_text(table + "\n", encoding="utf-8")  # kept if the sweep does not finish
    print(table, f"\nevaluated in {time.time() - t0:.0f} s", flush=True)
    points = sweep(
        ms,
        test,
        [(float("inf"), float("inf")), (100, 0.5), (30, 1.0), (30, 0.5), (10, 0.5), (10, 0.2)],
        batch_size=args.eval_batch,
    )
    plot_sweep(points, str(out / "sweep.png"))
    sweep_md = ["| τ (frames) | s_th | WER % | T_avg | LID acc % |", "|---:|---:|---:|---:|---:|"]
    sweep_md += [
        f"| {q['tau']:g} | {q['s_th']:g} | {q['wer']:.2f} | {q['t_avg']:.2f} | {q['lid_accuracy']:.1f} |"
        for q in points
    ]
    md = table + "\n\n" + "\n".join(sweep_md)
    results["rows"] = {
        name: {"mode": r.mode, "wers": r.wers, "lid_accuracy": r.lid_accuracy, "t_avg": r.t_avg}
        for name, r in rows.items()
    }
    results["sweep"] = points
    (out / "results.md").write_text(md + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float), encoding="utf-8")
    print(md)
    print(f"total {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
