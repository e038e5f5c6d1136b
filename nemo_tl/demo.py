"""The README's main job: transfer an English QuartzNet to German on synthesized speech.

    python -m nemo_tl.demo [--out demo_out] [--steps 100] [--base PATH | --train-base] [--runs 1,4]

1. Synthesizes English and German digit-word corpora with espeak-ng (train/dev/test with
   disjoint texts) in ``OUT/corpus``.
2. Starts from a small English QuartzNet (``conf/quartznet_demo.yaml``, 0.23 M parameters): the
   embedded pretrained base ``nemo_tl/assets/demo_base_en.nemo`` when it is there, else one
   trained here first (``--train-base``; ``--base PATH`` uses another .nemo).
3. Fine-tunes it to German the ways Huang et al. 2020 and Kunze et al. 2017 compare:
   ``keep_shared``, ``reinit``, ``keep_shared`` with the 3 lowest blocks frozen, ``keep_shared``
   with replay of English data (mixing 70/30), and the same architecture from scratch.
4. Prints CER and WER per run on both dev sets (the layout of Huang et al. Table 3), with notes
   on how to read them, writes them to ``OUT/results.json`` and ``OUT/results.md``, and saves
   each fine-tuned model as ``OUT/models/<run>.nemo`` (for ``nemo_tl.transcribe``,
   ``examples/evaluate_ctc.py``, ``nemo_tl.transfer.introspect``).
   A partial run (``--runs`` a subset, or a run that failed) writes ``OUT/results_partial.json``,
   ``.md`` and ``OUT/models_partial/<run>.nemo`` instead, and leaves the results and models of
   the last full run as they were.

Every run has the same number of steps, batch size, learning-rate schedule and seed. "train s"
counts the optimisation steps only (from Lightning's on_train_start to on_train_end).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
import traceback
from pathlib import Path
from typing import NamedTuple

from nemo_tl.utils.configs import config_file
from nemo_tl.utils.training import TrainingTimer, accelerator, quick_trainer, quiet_logs

DEMO_CONF = config_file("quartznet_demo.yaml")  # conf/ of a checkout, nemo_tl/conf/ of a wheel
EMBEDDED_BASE = Path(__file__).resolve().parent / "assets" / "demo_base_en.nemo"
CORPUS_SEED = 0
CORPUS_UTTERANCES = 600
BATCH_SIZE = 16


def make_corpus(out: Path, jobs: int | None = None, utterances: int = CORPUS_UTTERANCES) -> dict[str, dict[str, str]]:
    """English and German digit corpora of ``utterances`` each (cached in ``out/corpus``)."""
    from nemo_tl.data.synth_corpus import manifest_path, synthesize_corpus

    corpus_dir = out / "corpus"
    summary = corpus_dir / "corpus.json"
    manifests = {lang: {s: manifest_path(str(corpus_dir), lang, s) for s in ("train", "dev", "test")}
                 for lang in ("en", "de")}
    if summary.exists() and all(os.path.exists(p) for m in manifests.values() for p in m.values()):
        languages = json.loads(summary.read_text(encoding="utf-8"))["languages"]
        if all(languages.get(lang, {}).get("utterances") == utterances for lang in manifests):
            return manifests
    return synthesize_corpus(str(corpus_dir), ["en", "de"], utterances=utterances, seed=CORPUS_SEED,
                             text_source="digits", jobs=jobs)


def data_cfg(manifest, labels: list[str], batch_size: int, shuffle: bool, drop_last: bool = False) -> dict:
    """A NeMo character dataset section. ``drop_last``: full batches only, for training on short sentences
    with a ``SpecCutout`` of QuartzNet's ``rect_time`` (a small last batch of short utterances crashes it;
    ``nemo_tl.data.spec_cutout`` refuses such a set before training)."""
    return {"manifest_filepath": manifest, "sample_rate": 16000, "labels": labels, "batch_size": batch_size,
            "shuffle": shuffle, "num_workers": 0, "parser": "base", "max_duration": 20.0, "drop_last": drop_last}


def clear_dataset_paths(model) -> None:
    """Set ``manifest_filepath`` of the model's dataset sections to null: a saved model must not
    carry paths of the machine it was trained on."""
    from omegaconf import open_dict

    cfg = model.cfg
    with open_dict(cfg):
        for section in ("train_ds", "validation_ds", "test_ds"):
            if cfg.get(section) is not None and "manifest_filepath" in cfg[section]:
                cfg[section].manifest_filepath = None
    model.cfg = cfg


def train_base(corpus: dict, out: Path, steps: int, batch_size: int = BATCH_SIZE) -> Path:
    """Train the English base model from scratch on the English train split; returns its .nemo path."""
    from nemo.collections.asr.models import EncDecCTCModel
    from omegaconf import OmegaConf

    from nemo_tl.data.texts import labels_for
    from nemo_tl.utils.atomic import atomic_save_to

    cfg = OmegaConf.load(DEMO_CONF).model
    cfg.labels = labels_for("en")
    cfg.train_ds = data_cfg(corpus["en"]["train"], labels_for("en"), batch_size, True)
    cfg.validation_ds = data_cfg(None, labels_for("en"), 32, False)
    timer = TrainingTimer()
    trainer = quick_trainer(steps, callbacks=[timer])
    model = EncDecCTCModel(cfg=OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)), trainer=trainer)
    trainer.fit(model)
    clear_dataset_paths(model)
    path = out / "base_en.nemo"
    atomic_save_to(model, str(path))
    print(f"trained the English base for {steps} steps in {timer.seconds:.0f} s -> {path}", flush=True)
    return path


class DemoRun(NamedTuple):
    """One fine-tuning run of the table."""

    slug: str  # its model is saved as OUT/models/<slug>.nemo
    name: str  # its row in the table
    transfer: dict  # TransferCTCModel.from_base keys
    replay: bool  # 30% of the batches English?


RUNS = [
    DemoRun("keep_shared", "keep_shared", {"vocabulary": "keep_shared"}, False),
    DemoRun("reinit", "reinit", {"vocabulary": "reinit"}, False),
    DemoRun("keep_shared_frozen3", "keep_shared, 3 blocks frozen",
            {"vocabulary": "keep_shared", "freeze_encoder_blocks": 3}, False),
    DemoRun("keep_shared_replay", "keep_shared + en replay 30%", {"vocabulary": "keep_shared"}, True),
    DemoRun("from_scratch", "from scratch (reinitialize)", {"vocabulary": "reinit", "reinitialize": True}, False),
]


def finetune(base: Path, corpus: dict, transfer: dict, replay: bool, steps: int, lr: float,
             batch_size: int = BATCH_SIZE):
    """One German fine-tuning run; returns (model, seconds of the optimisation steps)."""
    from nemo_tl.data.texts import labels_for
    from nemo_tl.models import TransferCTCModel
    from nemo_tl.transfer.recipe import finetune_optim

    de_labels = labels_for("de")
    train = data_cfg(corpus["de"]["train"], de_labels, batch_size, True)
    if replay:
        train["manifest_filepath"] = [corpus["de"]["train"], corpus["en"]["train"]]
        train["mixing"] = {"weights": [0.7, 0.3], "seed": 0}
    timer = TrainingTimer()
    trainer = quick_trainer(steps, callbacks=[timer])
    model = TransferCTCModel.from_base(str(base), labels=de_labels, cfg={"train_ds": train, "optim": finetune_optim(lr)},
                                       trainer=trainer, **transfer)
    trainer.fit(model)
    return model, timer.seconds


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
        trainable = f"{r['trainable']:,}" if r["trainable"] else "-"
        seconds = f"{r['seconds']:.0f}" if r["seconds"] is not None else "-"
        lines.append(f"| {r['run']} | {trainable} | {seconds} | {en['cer']:.1f} | {en['wer']:.1f} "
                     f"| {de['cer']:.1f} | {de['wer']:.1f} |")
    return "\n".join(lines)


def dev_words(corpus: dict) -> dict[str, int]:
    """Reference words per language in the dev sets."""
    from nemo_tl.evaluation import read_references

    return {lang: sum(len(t.split()) for t in read_references(corpus[lang]["dev"])[1]) for lang in ("en", "de")}


def notes(rows: list[dict], words: dict[str, int], steps: int) -> str:
    """How to read :func:`table`: what each comparison shows, what the figures rest on, why WER can pass 100%."""
    by_name = {r["run"]: r["dev"] for r in rows}
    base = rows[0]["dev"]

    def en_cer(name: str) -> str:
        return f"{by_name[name]['en']['cer']:.1f}%" if name in by_name else "(not run)"

    utts = {lang: base[lang]["utterances"] for lang in ("en", "de")}
    items = [
        f"- Forgetting: the en columns. Fine-tuned on German alone the model loses English (English CER "
        f"{base['en']['cer']:.1f}% for the base, {en_cer('keep_shared')} after keep_shared).",
        "- The cure is replay: with 30% of the batches in English the model keeps its English "
        f"({en_cer('keep_shared + en replay 30%')} English CER) while it learns German.",
        "- keep_shared vs reinit vs from scratch (de columns): keep the decoder rows of the letters both "
        "alphabets share, start a fresh decoder on the English encoder, or start from random weights; the "
        "gaps are what the English model is worth as a start.",
        "- 3 blocks frozen: the 3 lowest encoder blocks keep their English weights; compare its columns "
        "with keep_shared's.",
        f"- Each figure rests on the dev sets: {utts['en']} English utterances ({words['en']} words) and "
        f"{utts['de']} German ({words['de']} words); one word is {100 / max(words['de'], 1):.1f} German WER points, "
        "so gaps of a few points are noise.",
        "- WER = (substituted + deleted + inserted words) / reference words: a model that outputs more words "
        "than were spoken (insertions) scores above 100%.",
        "- train s: seconds of the optimisation steps only (corpus, loading, evaluation not counted).",
    ]
    head = (f"How to read it (greedy decoding; every run: {steps} steps, batch {BATCH_SIZE}, the same "
            "learning-rate schedule and seed):")
    return "\n".join([head, *(textwrap.fill(item, width=100, subsequent_indent="  ") for item in items)])


def _parse_runs(spec: str, parser: argparse.ArgumentParser) -> list[int]:
    if spec == "all":
        return list(range(1, len(RUNS) + 1))
    try:
        selected = [int(x) for x in spec.split(",")]
    except ValueError:
        selected = []
    if not selected or any(not 1 <= i <= len(RUNS) for i in selected):
        parser.error(f"--runs takes run numbers 1-{len(RUNS)}, comma-separated, or 'all' (got {spec!r})")
    return selected


def main(argv: list[str] | None = None) -> int:
    runs_help = "; ".join(f"{i} {r.name}" for i, r in enumerate(RUNS, 1)).replace("%", "%%")  # argparse formats help
    parser = argparse.ArgumentParser(prog="python -m nemo_tl.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out", help="working directory (corpus, models, results)")
    parser.add_argument("--steps", type=int, default=100, help="fine-tuning steps per run")
    parser.add_argument("--lr", type=float, default=0.005, help="fine-tuning peak learning rate")
    parser.add_argument("--base", help="an English base .nemo to start from (default: the embedded one)")
    parser.add_argument("--train-base", action="store_true", help="train the English base here first")
    parser.add_argument("--base-steps", type=int, default=1500, help="steps for --train-base")
    parser.add_argument("--base-only", action="store_true", help="stop after making the base (rebuilds the asset)")
    parser.add_argument("--runs", default="all",
                        help=f"comma-separated run numbers or 'all' ({runs_help}); a subset writes "
                             "results_partial.json/.md and models_partial/, never results.json/.md or models/")
    parser.add_argument("--utterances", type=int, default=CORPUS_UTTERANCES,
                        help="utterances per language in the corpus (train/dev/test 80/10/10)")
    parser.add_argument("--jobs", type=int, default=None, help="synthesis worker processes")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (default 1: the tiny model gains little from more, and on a "
                             "busy machine threads that wait for each other make every step several times slower)")
    args = parser.parse_args(argv)
    selected = _parse_runs(args.runs, parser)

    quiet_logs()
    import torch
    from nemo.collections.asr.models import ASRModel

    import nemo_tl  # noqa: F401
    from nemo_tl.utils.atomic import atomic_save_to, atomic_write

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    corpus = make_corpus(out, jobs=args.jobs, utterances=args.utterances)
    print(f"corpus ready in {time.time() - t0:.0f} s: {out / 'corpus'}", flush=True)

    if args.base:
        base = Path(args.base)
    elif args.train_base or args.base_only or not EMBEDDED_BASE.exists():
        base = train_base(corpus, out, args.base_steps)
    else:
        base = EMBEDDED_BASE
    if args.base_only:
        return 0

    base_model = ASRModel.restore_from(str(base), map_location="cpu")
    rows = [{"run": f"English base ({base.name})", "trainable": 0, "seconds": None, "model": str(base),
             "dev": evaluate(base_model, corpus)}]
    print(table(rows), flush=True)

    failed = []
    for i in selected:
        run = RUNS[i - 1]
        torch.manual_seed(0)
        try:
            model, seconds = finetune(base, corpus, run.transfer, run.replay, args.steps, args.lr)
        except Exception:  # a failed run is reported; the others still run
            traceback.print_exc()
            failed.append(run.name)
            print(f"\n[{i}/{len(RUNS)}] {run.name}: FAILED (traceback above)", flush=True)
            continue
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        # Saved apart until every run has succeeded: a partial run never replaces a full run's models.
        path = atomic_save_to(model, out / "models_partial" / f"{run.slug}.nemo")
        rows.append({"run": run.name, "trainable": trainable, "seconds": seconds, "model": path,
                     "dev": evaluate(model, corpus)})
        print(f"\n[{i}/{len(RUNS)}] {run.name}: trained in {seconds:.0f} s", flush=True)
        print(table(rows[-1:]).splitlines()[-1], flush=True)

    complete = not failed and len(selected) == len(RUNS)
    models = out / ("models" if complete else "models_partial")
    if complete:
        models.mkdir(exist_ok=True)
        for row in rows[1:]:
            os.replace(row["model"], models / Path(row["model"]).name)
            row["model"] = str(models / Path(row["model"]).name)
    md = table(rows) + "\n\n" + notes(rows, dev_words(corpus), args.steps)
    print(f"\nEnglish QuartzNet -> German, CER and WER on the dev sets ({accelerator()}):\n")
    print(md)
    stem = "results" if complete else "results_partial"
    result = {"complete": complete, "runs": [RUNS[i - 1].slug for i in selected], "failed": failed,
              "steps": args.steps, "lr": args.lr, "base": str(base), "rows": rows}
    with atomic_write(out / f"{stem}.json", "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    with atomic_write(out / f"{stem}.md", "w", encoding="utf-8") as f:
        f.write(md + "\n")
    saved = ", ".join(Path(r["model"]).name for r in rows[1:]) or "none"
    print(f"\nwritten: {out / stem}.md, {out / stem}.json; models in {models}: {saved} "
          f"(total {time.time() - t0:.0f} s)")
    if not complete:
        why = f"failed: {', '.join(failed)}" if failed else f"runs {args.runs} of 1-{len(RUNS)}"
        full = (out / "results.md").exists()
        kept = f"; {out / 'results.md'} and {out / 'models'} (a full run's) are left as they were" if full else ""
        print(f"partial results ({why}){kept}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
