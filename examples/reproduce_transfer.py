"""Huang et al. 2020 Tables 3, 4, 6 and Kunze et al. 2017 on synthesized speech, in one run.

    python examples/reproduce_transfer.py --out runs/transfer --source en --target de \
        --text cldr --source-hours 1.0 --target-hours 0.25 --base-config quartznet_5x3 \
        --base-steps 2500 --steps 800 --eval-every 100

1. Synthesizes a source and a target corpus (``nemo_tl.data.synth_corpus``).
2. Trains a base model on the source from scratch (its learning curve is recorded).
3. Fine-tunes it to the target, all runs with the same steps, batch and schedule:
   ``keep_shared`` on the target only (forgetting), ``keep_shared`` on target + source mixed
   (replay, the cure), ``reinit`` (Kunze et al.: retained vs re-initialized decoder), ``keep_shared``
   with the lower half of the encoder frozen, and the same architecture trained on the target
   from scratch (Huang et al. Table 6).
4. Writes ``results.json``, ``results.md`` (source and target dev WER/CER per run, in the
   layout of Huang et al. Table 3, plus step time, peak memory and "steps to 90% of final
   accuracy", Huang et al. §6.2) and ``curves.png`` (target dev CER against steps).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from nemo_tl.demo import data_cfg
from nemo_tl.evaluation import evaluate_manifests
from nemo_tl.transfer.recipe import FINETUNE_LR, SCRATCH_LR, finetune_optim
from nemo_tl.utils.training import quick_trainer, quiet_logs

REPO = Path(__file__).resolve().parents[1]


class DevCurve(pl.Callback):
    """Greedy CER/WER on dev manifests every ``every`` steps (and at the end)."""

    def __init__(self, manifests: dict[str, str], every: int):
        self.manifests, self.every, self.points = manifests, every, []

    def _measure(self, model, step: int) -> None:
        was_training = model.training
        model.eval()
        res = evaluate_manifests(model, list(self.manifests.values()), batch_size=64)
        self.points.append({"step": step, **{lang: res[m] for lang, m in self.manifests.items()}})
        model.train(was_training)

    def on_train_batch_end(self, trainer, model, outputs, batch, batch_idx):
        step = trainer.global_step
        if step % self.every == 0:
            self._measure(model, step)

    def on_train_end(self, trainer, model):
        if not self.points or self.points[-1]["step"] != trainer.global_step:
            self._measure(model, trainer.global_step)


class StepTimer(pl.Callback):
    """Median wall time of a training step (synchronized on GPU) and peak GPU memory."""

    def __init__(self):
        self.times, self._t = [], 0.0

    def on_train_batch_start(self, trainer, model, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            if batch_idx == 5:
                torch.cuda.reset_peak_memory_stats()
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, model, outputs, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._t)

    def summary(self) -> dict:
        times = sorted(self.times[5:]) or [float("nan")]
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
        return {"step_ms": 1000 * times[len(times) // 2], "peak_gib": peak}


def steps_to_90(points: list[dict], lang: str) -> int | None:
    """First evaluated step whose accuracy (100 - CER) reaches 90% of the final accuracy."""
    final = 100.0 - points[-1][lang]["cer"]
    for p in points:
        if 100.0 - p[lang]["cer"] >= 0.9 * final:
            return p["step"]
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--source", default="en")
    p.add_argument("--target", default="de")
    p.add_argument("--text", default="cldr", help="digits | cldr | mixed")
    p.add_argument("--source-hours", type=float, default=1.0)
    p.add_argument("--target-hours", type=float, default=0.25)
    p.add_argument("--base-config", default="quartznet_5x3")
    p.add_argument("--base", help="use this source .nemo instead of training one")
    p.add_argument("--base-steps", type=int, default=2500)
    p.add_argument("--base-lr", type=float, default=SCRATCH_LR)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--lr", type=float, default=FINETUNE_LR, help="fine-tuning lr (Huang et al.: ~10x below scratch)")
    p.add_argument("--replay", type=float, default=0.2, help="source share in the replay run")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    quiet_logs()

    from nemo.collections.asr.models import ASRModel, EncDecCTCModel
    from omegaconf import OmegaConf

    from nemo_tl.data.synth_corpus import synthesize_corpus
    from nemo_tl.data.texts import labels_for
    from nemo_tl.models import TransferCTCModel

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    src, tgt = args.source, args.target
    corpus = synthesize_corpus(str(out / "corpus_src"), [src], hours=args.source_hours, seed=args.seed,
                               text_source=args.text)
    corpus.update(synthesize_corpus(str(out / "corpus_tgt"), [tgt], hours=args.target_hours, seed=args.seed + 1,
                                    text_source=args.text))
    print(f"corpus in {time.time() - t0:.0f} s", flush=True)
    dev = {src: corpus[src]["dev"], tgt: corpus[tgt]["dev"]}
    results = {"args": vars(args), "runs": {}}

    torch.manual_seed(args.seed)
    if args.base:
        base_path = Path(args.base)
    else:
        cfg = OmegaConf.load(REPO / "conf" / f"{args.base_config}.yaml").model
        cfg.labels = labels_for(src)
        cfg.train_ds = data_cfg(corpus[src]["train"], labels_for(src), args.batch, True, drop_last=True)
        cfg.validation_ds = data_cfg(None, labels_for(src), 64, False)
        cfg.optim = finetune_optim(args.base_lr, warmup_ratio=0.05)
        curve, timer = DevCurve({src: dev[src]}, args.eval_every * 5), StepTimer()
        tr = quick_trainer(args.base_steps, [curve, timer])
        model = EncDecCTCModel(cfg=OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)), trainer=tr)
        tr.fit(model)
        base_path = out / f"base_{src}.nemo"
        model.save_to(str(base_path))
        results["runs"]["base"] = {"curve": curve.points, **timer.summary()}
        print(f"base: {curve.points[-1]} ({time.time() - t0:.0f} s)", flush=True)

    # Every fine-tuning run writes the target alphabet plus the source letters it lacks, so that the
    # replay run (which trains on source text too) and the others share one vocabulary.
    labels = labels_for(tgt) + [c for c in labels_for(src) if c not in labels_for(tgt)]
    base = ASRModel.restore_from(str(base_path), map_location="cpu")
    n_blocks = len(base.encoder.encoder)
    results["base_dev"] = {lang: r for lang, r in zip(dev, evaluate_manifests(base.eval(), list(dev.values())).values())}
    runs = [
        ("keep_shared, target only", {"vocabulary": "keep_shared"}, False, args.lr),
        (f"keep_shared, target + {int(100 * args.replay)}% source", {"vocabulary": "keep_shared"}, True, args.lr),
        ("reinit decoder, target only", {"vocabulary": "reinit"}, False, args.lr),
        (f"keep_shared, {n_blocks // 2} of {n_blocks} blocks frozen", {"freeze_encoder_blocks": n_blocks // 2}, False,
         args.lr),
        ("from scratch on target", {"vocabulary": "reinit", "reinitialize": True}, False, args.base_lr),
    ]
    for name, transfer, replay, lr in runs:
        torch.manual_seed(args.seed)
        train = data_cfg(corpus[tgt]["train"], labels, args.batch, True, drop_last=True)
        if replay:
            train["manifest_filepath"] = [corpus[tgt]["train"], corpus[src]["train"]]
            train["mixing"] = {"weights": [1 - args.replay, args.replay], "seed": args.seed}
        curve, timer = DevCurve(dev, args.eval_every), StepTimer()
        tr = quick_trainer(args.steps, [curve, timer])
        model = TransferCTCModel.from_base(base, labels=labels, cfg={"train_ds": train, "optim": finetune_optim(lr)},
                                           trainer=tr, **transfer)
        trainable = sum(q.numel() for q in model.parameters() if q.requires_grad)
        tr.fit(model)
        results["runs"][name] = {"curve": curve.points, "trainable": trainable, **timer.summary(),
                                 "steps_to_90": steps_to_90(curve.points, tgt)}
        print(f"{name}: {curve.points[-1]} ({time.time() - t0:.0f} s)", flush=True)
        md = save(results, src, tgt, out)  # after every run, so an interrupted job keeps what it did
    print(md)
    print(f"total {time.time() - t0:.0f} s")
    return 0


def save(results: dict, src: str, tgt: str, out: Path) -> str:
    md = report(results, src, tgt)
    (out / "results.md").write_text(md + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    plot(results, tgt, out / "curves.png")
    return md


def report(results: dict, src: str, tgt: str) -> str:
    bd = results["base_dev"]
    lines = [f"| model | {src} dev WER % | {src} dev CER % | {tgt} dev WER % | {tgt} dev CER % | trainable params "
             "| step ms | peak GiB | steps to 90% |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| base ({src}) | {bd[src]['wer']:.1f} | {bd[src]['cer']:.1f} | {bd[tgt]['wer']:.1f} | "
             f"{bd[tgt]['cer']:.1f} | | | | |"]
    for name, r in results["runs"].items():
        if name == "base":
            continue
        last = r["curve"][-1]
        lines.append(f"| {name} | {last[src]['wer']:.1f} | {last[src]['cer']:.1f} | {last[tgt]['wer']:.1f} | "
                     f"{last[tgt]['cer']:.1f} | {r['trainable']:,} | {r['step_ms']:.1f} | {r['peak_gib']:.2f} | "
                     f"{r['steps_to_90']} |")
    return "\n".join(lines)


def plot(results: dict, tgt: str, path: Path) -> None:
    from nemo_tl.utils.extras import require

    require("matplotlib", "plots").use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results["runs"].items():
        if name == "base":
            continue
        ax.plot([p["step"] for p in r["curve"]], [p[tgt]["cer"] for p in r["curve"]], label=name)
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel(f"{tgt} dev CER %")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
