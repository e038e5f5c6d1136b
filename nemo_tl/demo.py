"""The README's main job: transfer an English QuartzNet to German on synthesized speech.

    python -m nemo_tl.demo [--out demo_out] [--steps 100] [--base PATH | --train-base]

1. Synthesizes English and German digit-word corpora with espeak-ng (train/dev/test with
   disjoint texts).
2. Starts from a small English QuartzNet (``conf/quartznet_demo.yaml``, 0.23 M parameters): the
   embedded pretrained base ``nemo_tl/assets/demo_base_en.nemo`` when it is there, else one
   trained here first (``--train-base``; ``--base PATH`` uses another .nemo).
3. Fine-tunes it to German the ways Huang et al. 2020 and Kunze et al. 2017 compare:
   ``keep_shared``, ``reinit``, ``keep_shared`` with the 3 lowest blocks frozen, ``keep_shared``
   with replay of English data (mixing 70/30), and the same architecture from scratch.
4. Prints CER and WER per run on both dev sets (the layout of Huang et al. Table 3) and writes
   them to ``OUT/results.json`` and ``OUT/results.md``.

Every run has the same number of steps, batch size and learning-rate schedule.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from nemo_tl.utils.training import accelerator, quick_trainer, quiet_logs

REPO = Path(__file__).resolve().parents[1]
DEMO_CONF = REPO / "conf" / "quartznet_demo.yaml"
EMBEDDED_BASE = Path(__file__).resolve().parent / "assets" / "demo_base_en.nemo"
CORPUS_SEED = 0
CORPUS_UTTERANCES = 600


def make_corpus(out: Path, jobs: int | None = None) -> dict[str, dict[str, str]]:
    """English and German digit corpora (cached in ``out/corpus``)."""
    from nemo_tl.data.synth_corpus import synthesize_corpus

    corpus_dir = out / "corpus"
    summary = corpus_dir / "corpus.json"
    manifests = {lang: {s: str(corpus_dir / lang / f"{s}.json") for s in ("train", "dev", "test")}
                 for lang in ("en", "de")}
    if summary.exists() and all(os.path.exists(p) for m in manifests.values() for p in m.values()):
        return manifests
    return synthesize_corpus(str(corpus_dir), ["en", "de"], utterances=CORPUS_UTTERANCES, seed=CORPUS_SEED,
                             text_source="digits", jobs=jobs)


def data_cfg(manifest, labels: list[str], batch_size: int, shuffle: bool) -> dict:
    return {"manifest_filepath": manifest, "sample_rate": 16000, "labels": labels, "batch_size": batch_size,
            "shuffle": shuffle, "num_workers": 0, "parser": "base", "max_duration": 20.0}


def train_base(corpus: dict, out: Path, steps: int, batch_size: int = 16) -> Path:
    """Train the English base model from scratch on the English train split; returns its .nemo path."""
    from nemo.collections.asr.models import EncDecCTCModel
    from omegaconf import OmegaConf

    from nemo_tl.data.texts import labels_for
    from nemo_tl.utils.atomic import atomic_save_to

    cfg = OmegaConf.load(DEMO_CONF).model
    cfg.labels = labels_for("en")
    cfg.train_ds = data_cfg(corpus["en"]["train"], labels_for("en"), batch_size, True)
    cfg.validation_ds = data_cfg(None, labels_for("en"), 32, False)
    trainer = quick_trainer(steps)
    model = EncDecCTCModel(cfg=OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)), trainer=trainer)
    start = time.time()
    trainer.fit(model)
    path = out / "base_en.nemo"
    atomic_save_to(model, str(path))
    print(f"trained the English base for {steps} steps in {time.time() - start:.0f} s -> {path}", flush=True)
    return path


RUNS = [
    # name, transfer keys, replay English?
    ("keep_shared", {"vocabulary": "keep_shared"}, False),
    ("reinit", {"vocabulary": "reinit"}, False),
    ("keep_shared, 3 blocks frozen", {"vocabulary": "keep_shared", "freeze_encoder_blocks": 3}, False),
    ("keep_shared + en replay 30%", {"vocabulary": "keep_shared"}, True),
    ("from scratch (reinitialize)", {"vocabulary": "reinit", "reinitialize": True}, False),
]


def finetune(base: Path, corpus: dict, transfer: dict, replay: bool, steps: int, lr: float,
             batch_size: int = 16):
    """One German fine-tuning run; returns (model, seconds)."""
    from nemo_tl.data.texts import labels_for
    from nemo_tl.models import TransferCTCModel

    de_labels = labels_for("de")
    train = data_cfg(corpus["de"]["train"], de_labels, batch_size, True)
    if replay:
        train["manifest_filepath"] = [corpus["de"]["train"], corpus["en"]["train"]]
        train["mixing"] = {"weights": [0.7, 0.3], "seed": 0}
    optim = {"name": "novograd", "lr": lr, "betas": [0.95, 0.25], "weight_decay": 0.001,
             "sched": {"name": "CosineAnnealing", "warmup_ratio": 0.12, "min_lr": lr / 100}}
    trainer = quick_trainer(steps)
    model = TransferCTCModel.from_base(str(base), labels=de_labels, cfg={"train_ds": train, "optim": optim},
                                       trainer=trainer, **transfer)
    start = time.time()
    trainer.fit(model)
    return model, time.time() - start


def evaluate(model, corpus: dict, split: str = "dev") -> dict:
    from nemo_tl.evaluation import evaluate_manifests

    model.eval()
    paths = {lang: corpus[lang][split] for lang in ("en", "de")}
    results = evaluate_manifests(model, list(paths.values()), batch_size=32)
    return {lang: results[path] for lang, path in paths.items()}


def table(rows: list[dict]) -> str:
    lines = [
        "| run | trainable params | train s | en dev CER % | en dev WER % | de dev CER % | de dev WER % |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        en, de = r["dev"]["en"], r["dev"]["de"]
        lines.append(f"| {r['run']} | {r['trainable']:,} | {r['seconds']:.0f} | {en['cer']:.1f} | {en['wer']:.1f} "
                     f"| {de['cer']:.1f} | {de['wer']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out", help="working directory (corpus, models, results)")
    parser.add_argument("--steps", type=int, default=100, help="fine-tuning steps per run")
    parser.add_argument("--lr", type=float, default=0.005, help="fine-tuning peak learning rate")
    parser.add_argument("--base", help="an English base .nemo to start from (default: the embedded one)")
    parser.add_argument("--train-base", action="store_true", help="train the English base here first")
    parser.add_argument("--base-steps", type=int, default=1500, help="steps for --train-base")
    parser.add_argument("--base-only", action="store_true", help="stop after making the base (rebuilds the asset)")
    parser.add_argument("--runs", default="all", help="comma-separated run numbers (1-5) or 'all'")
    parser.add_argument("--jobs", type=int, default=None, help="synthesis worker processes")
    args = parser.parse_args(argv)

    quiet_logs()
    import torch
    from nemo.collections.asr.models import ASRModel

    import nemo_tl  # noqa: F401

    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    corpus = make_corpus(out, jobs=args.jobs)
    print(f"corpus ready in {time.time() - t0:.0f} s: {out / 'corpus'}", flush=True)

    if args.base:
        base = Path(args.base)
    elif args.train_base or args.base_only or not EMBEDDED_BASE.exists():
        base = train_base(corpus, out, args.base_steps)
    else:
        base = EMBEDDED_BASE
    if args.base_only:
        return 0

    rows = []
    base_model = ASRModel.restore_from(str(base), map_location="cpu")
    rows.append({"run": f"English base ({base.name})", "trainable": 0, "seconds": 0.0,
                 "dev": evaluate(base_model, corpus)})
    print(table(rows), flush=True)

    selected = range(1, len(RUNS) + 1) if args.runs == "all" else [int(x) for x in args.runs.split(",")]
    for i in selected:
        name, transfer, replay = RUNS[i - 1]
        torch.manual_seed(0)
        model, seconds = finetune(base, corpus, transfer, replay, args.steps, args.lr)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        rows.append({"run": name, "trainable": trainable, "seconds": seconds, "dev": evaluate(model, corpus)})
        print(f"\n[{i}/{len(RUNS)}] {name}: {seconds:.0f} s", flush=True)
        print(table(rows[-1:]).splitlines()[-1], flush=True)

    md = table(rows)
    print("\nEnglish QuartzNet -> German, greedy decoding on the dev sets "
          f"({args.steps} fine-tuning steps per run, batch 16, {accelerator()}):\n")
    print(md)
    with open(out / "results.json", "w", encoding="utf-8") as f:
        json.dump({"steps": args.steps, "lr": args.lr, "base": str(base), "rows": rows}, f, indent=1)
    (out / "results.md").write_text(md + "\n", encoding="utf-8")
    print(f"\nwritten: {out / 'results.md'}, {out / 'results.json'} (total {time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
