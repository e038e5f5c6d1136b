"""The forgetting frontier: source against target error for every way of learning a new language, in one run.

    python examples/forgetting_frontier.py --out runs/frontier --source en --target de --text cldr \\
        --source-hours 1.0 --target-hours 0.25 --base-config quartznet_5x3 --base-steps 2500 --steps 800

1. Synthesizes a source and a target corpus (``nemo_tl.data.synth_corpus``), or reads the user's
   own (``--manifests en:train.json:dev.json de:train.json:dev.json``).
2. Trains a base on the source from scratch (or takes ``--base``).
3. Fine-tunes it to the target, every run with the same steps, batch and schedule, on one vocabulary
   (the target alphabet plus the source letters it lacks): ``keep_shared`` on the target only, replay
   at each ``--replay`` share (``nemo_tl.data.mixing``), replay added on top of a whole target batch
   at each ``--added-replay`` share (the batch grows to ``--batch`` / (1 − share) utterances, so the
   target sees as many utterances per step as on its own), LwF, L2-SP and EWC at each weight
   (``model.transfer.regularization``), encoder adapters (``model.transfer.adapters``), the
   ``--combine`` settings (e.g. ``replay=0.2+lwf=1.0``: replay and LwF in one run;
   ``replay=0.2+lwf_source=1.0``: LwF on the replayed source utterances only; ``replay=0.4+freeze=2``:
   replay with the first 2 encoder blocks frozen); and, free of
   training, weight averaging of the base with the target-only, the first replay, the first LwF and
   every combined run at each ``--average`` λ (``nemo_tl.transfer.average_models``).
4. Writes ``results.json``, ``results.md`` (source and target dev WER/CER per point, the
   Pareto-optimal points on CER, and the goal of docs/forgetting.md: target CER ≤ 1.05× the target-only run's at
   source CER ≤ 1.20× the base's) and ``frontier.png`` (source CER against target CER). Results are
   written after every point, so an interrupted run keeps what it did.

``--sequence en,de,es`` instead trains a base on the first language and learns the others one after
another (plain fine-tuning, and replay of every language seen), then reports CL-MASR's metrics after
each step: average CER over the languages seen, backward and forward transfer
(:mod:`nemo_tl.transfer.frontier`; forward transfer against the base fine-tuned on that language alone).
It too writes its results after every run and honours ``--time-limit``.

``--smoke`` shrinks everything for a CPU test of the whole pipeline.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch

REPO = Path(__file__).resolve().parents[1]
SMOKE = {"utterances": 24, "base_config": "quartznet_tiny", "base_steps": 3, "steps": 2, "batch": 4,
         "replay": "0.5", "added_replay": "0.5", "average": "1.0", "lwf": "", "l2sp": "1.0", "ewc": "", "ewc_batches": 2, "adapter_dim": 4,
         "combine": "replay=0.5+l2sp=1.0+freeze=1,replay=0.5+lwf_source=1.0"}
SEQUENCE_METHODS = ("fine-tuning", "replay")


def floats(spec: str) -> list[float]:
    return [float(x) for x in spec.split(",") if x.strip()]


COMBINABLE = ("replay", "lwf", "lwf_source", "l2sp", "ewc", "freeze")


def combination(spec: str, lwf_temperature: float, source_manifest: str, ewc_batches: int) -> tuple[float | None, dict]:
    """``"replay=0.2+lwf=1.0+freeze=2"`` → (replay share or None, ``model.transfer`` keys) of one combined run.

    ``lwf``, ``l2sp``, ``ewc`` go to ``regularization``; ``lwf_source=W`` is LwF on the replayed source
    utterances only (``lwf.manifests``: the source's training manifest); ``freeze=K`` is
    ``freeze_encoder_blocks: K``.
    """
    replay, transfer, seen = None, {}, set()
    for part in (x.strip() for x in spec.split("+") if x.strip()):
        key, _, value = part.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = None
        if key not in COMBINABLE or weight is None:
            raise SystemExit(f"--combine {spec!r}: {part!r} is not METHOD=VALUE with METHOD one of "
                             f"{', '.join(COMBINABLE)} (e.g. replay=0.2+lwf=1.0)")
        if key in seen or (key in ("lwf", "lwf_source") and seen & {"lwf", "lwf_source"}):
            raise SystemExit(f"--combine {spec!r}: {key} is given twice (lwf and lwf_source are one LwF); "
                             "give each method once")
        if not (weight >= 0) or math.isinf(weight) or (key == "replay" and not weight < 1):
            raise SystemExit(f"--combine {spec!r}: {part!r} needs a finite weight ≥ 0 (replay: a share in [0, 1))")
        if key == "freeze" and weight != int(weight):
            raise SystemExit(f"--combine {spec!r}: {part!r} needs a whole number of encoder blocks (freeze=2)")
        seen.add(key)
        if key == "replay":
            replay = weight
        elif key == "freeze":
            transfer["freeze_encoder_blocks"] = int(weight)
        elif key == "lwf_source":
            section = regularizer("lwf", weight, lwf_temperature, source_manifest, ewc_batches)
            transfer.setdefault("regularization", {})["lwf"] = {**section, "manifests": [source_manifest]}
        else:
            transfer.setdefault("regularization", {})[key] = regularizer(
                key, weight, lwf_temperature, source_manifest, ewc_batches)
    if "lwf_source" in seen and not replay:
        raise SystemExit(f"--combine {spec!r}: lwf_source distils the replayed source utterances; add replay=SHARE")
    return replay, transfer


class Run(NamedTuple):
    """One fine-tuning run of the frontier."""

    rank: int  # the i-th setting of its method
    name: str
    method: str
    replay: dict[str, float] | None = None  # {source language: share}
    transfer: dict | None = None  # model.transfer keys beside keep_shared
    averaged: bool = False  # also averaged with the base at every --average λ
    batch: int | None = None  # utterances a step (None: --batch)


def added_replay_batch(batch: int, share: float) -> int:
    """The batch that holds ``batch`` target utterances on average with a source ``share``: round(batch / (1 − share))."""
    if not 0 <= share < 1:
        raise SystemExit(f"--added-replay {share:g}: a share in [0, 1)")
    return int(round(batch / (1.0 - share)))


def regularizer(method: str, weight: float, lwf_temperature: float, ewc_manifest: str, ewc_batches: int) -> dict:
    """The ``model.transfer.regularization`` section of one regularizer: ``lwf``, ``l2sp`` or ``ewc``."""
    if method == "lwf":
        return {"weight": weight, "temperature": lwf_temperature}
    if method == "ewc":
        return {"weight": weight, "manifest": ewc_manifest, "batches": ewc_batches}
    return {"weight": weight}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="results.json, results.md, frontier.png")
    p.add_argument("--work", help="corpus, base and run files (default: --out)")
    p.add_argument("--source", default="en")
    p.add_argument("--target", default="de")
    p.add_argument("--sequence", help="languages learnt in turn, the first the base's (e.g. en,de,es)")
    p.add_argument("--methods", default=",".join(SEQUENCE_METHODS),
                   help="--sequence: fine-tuning (each language alone) and/or replay (every language seen)")
    p.add_argument("--manifests", nargs="+", metavar="LANG:TRAIN:DEV", help="the user's own corpus per language")
    p.add_argument("--text", default="cldr", help="digits | cldr | mixed (synthesized corpus)")
    p.add_argument("--source-hours", type=float, default=1.0)
    p.add_argument("--target-hours", type=float, default=0.25)
    p.add_argument("--utterances", type=int, help="utterances per language instead of hours")
    p.add_argument("--base-config", default="quartznet_5x3", help="conf/ name of the base architecture")
    p.add_argument("--base", help="use this source .nemo instead of training one")
    p.add_argument("--base-steps", type=int, default=2500)
    p.add_argument("--steps", type=int, default=800, help="fine-tuning steps of every run")
    p.add_argument("--lr", type=float, default=None, help="fine-tuning lr (default: the recipe's)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--replay", default="0.2,0.5", help="source shares of the replay runs")
    p.add_argument("--added-replay", default="",
                   help="source shares of replay runs whose batches add the source to a whole target batch "
                   "(--batch / (1 - share) utterances a step); '' for none")
    p.add_argument("--average", default="0.25,0.5,0.75", help="averaging weights λ (1: the tuned model)")
    p.add_argument("--lwf", default="0.5,2.0", help="LwF weights (temperature --lwf-temperature)")
    p.add_argument("--lwf-temperature", type=float, default=2.0)
    p.add_argument("--l2sp", default="1.0,10.0", help="L2-SP weights")
    p.add_argument("--ewc", default="100.0,1000.0", help="EWC weights (Fisher over --ewc-batches source batches)")
    p.add_argument("--ewc-batches", type=int, default=50)
    p.add_argument("--adapter-dim", type=int, default=32, help="adapter width (0: no adapter run)")
    p.add_argument("--combine", default="replay=0.2+lwf=0.1",
                   help="combined runs, comma-separated, each METHOD=VALUE joined by + (replay share, lwf, l2sp, "
                   "ewc weights, lwf_source: LwF on the replayed source only, freeze: encoder blocks frozen; "
                   "e.g. replay=0.2+lwf=1.0,replay=0.2+lwf_source=1.0,replay=0.4+freeze=2); "
                   "'' for none")
    p.add_argument("--time-limit", type=float, default=None,
                   help="no fine-tuning run starts after this many seconds (the table lists the runs left out)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny corpus, model and steps (a CPU test)")
    if p.parse_known_args(argv)[0].smoke:
        p.set_defaults(**SMOKE)
    args = p.parse_args(argv)

    from nemo_tl.utils.training import quiet_logs

    quiet_logs()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    langs = [x.strip() for x in args.sequence.split(",")] if args.sequence else [args.source, args.target]
    if args.sequence and len(langs) < 3:
        p.error("--sequence takes three or more languages, e.g. en,de,es")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods or any(m not in SEQUENCE_METHODS for m in methods):
        p.error(f"--methods takes {' and/or '.join(SEQUENCE_METHODS)}, got {args.methods!r}")
    for share in floats(args.added_replay):  # before the corpus and the base
        added_replay_batch(args.batch, share)
    exp = Experiment(args, out, langs)
    if args.sequence:
        exp.run_sequence()
    else:
        exp.run_frontier()
    print(f"total {time.time() - exp.t0:.0f} s")
    return 0


class Experiment:
    """The corpus, the base and the fine-tuning runs of one report."""

    def __init__(self, args: argparse.Namespace, out: Path, langs: list[str]):
        from nemo_tl.data.texts import labels_for
        from nemo_tl.transfer.recipe import FINETUNE_LR

        self.args, self.out, self.langs, self.t0 = args, out, langs, time.time()
        self.work = Path(args.work) if args.work else out
        self.work.mkdir(parents=True, exist_ok=True)
        self.lr = args.lr if args.lr is not None else FINETUNE_LR
        self.corpus = self._corpus()
        # one vocabulary for every fine-tuning run: the languages' alphabets, the first learnt first
        self.labels = []
        for lang in langs[1:] + langs[:1]:
            self.labels += [c for c in labels_for(lang) if c not in self.labels]
        from nemo_tl.utils.environment import environment

        self.results: dict = {"args": vars(args), "device": _device_name(), "languages": langs,
                              "environment": environment(), "skipped": []}  # runs left out, by too_late
        if not args.manifests:  # a synthesized corpus: runs on different machines compare theirs by it
            from nemo_tl.data.synth_corpus import recorded_audio_sha256

            self.results["audio_sha256"] = {
                key: digest for lang in langs for key, digest in recorded_audio_sha256(self._corpus_dir(lang)).items()}
        self.base_path = self._base()

    # ------------------------------------------------------------------ data and base
    def _corpus(self) -> dict[str, dict[str, str]]:
        if self.args.manifests:
            corpus = {}
            for spec in self.args.manifests:
                parts = spec.split(":")
                if len(parts) != 3:
                    raise SystemExit(f"--manifests {spec!r}: write LANG:TRAIN_MANIFEST:DEV_MANIFEST")
                corpus[parts[0]] = {"train": parts[1], "dev": parts[2]}
            missing = [lang for lang in self.langs if lang not in corpus]
            if missing:
                raise SystemExit(f"--manifests gives no manifests for {missing}")
            return corpus
        from nemo_tl.data.synth_corpus import synthesize_corpus

        corpus = {}
        for i, lang in enumerate(self.langs):
            hours = None if self.args.utterances else (self.args.source_hours if i == 0 else self.args.target_hours)
            corpus.update(synthesize_corpus(self._corpus_dir(lang), [lang], hours=hours,
                                            utterances=self.args.utterances, seed=self.args.seed + i,
                                            text_source=self.args.text))
        self.log(f"corpus ({', '.join(self.langs)})")
        return corpus

    def _corpus_dir(self, lang: str) -> str:
        return str(self.work / f"corpus_{lang}")

    def _base(self) -> Path:
        if self.args.base:
            return Path(self.args.base)
        from nemo.collections.asr.models import EncDecCTCModel
        from omegaconf import OmegaConf

        from nemo_tl.data.texts import labels_for
        from nemo_tl.demo import clear_dataset_paths, data_cfg
        from nemo_tl.transfer.recipe import SCRATCH_LR, finetune_optim
        from nemo_tl.utils.atomic import atomic_save_to
        from nemo_tl.utils.training import quick_trainer

        src = self.langs[0]
        cfg = OmegaConf.load(REPO / "conf" / f"{self.args.base_config}.yaml").model
        cfg.labels = labels_for(src)
        cfg.train_ds = data_cfg(self.corpus[src]["train"], labels_for(src), self.args.batch, True, drop_last=True)
        cfg.validation_ds = data_cfg(None, labels_for(src), 64, False)
        cfg.optim = finetune_optim(SCRATCH_LR, warmup_ratio=0.05)
        torch.manual_seed(self.args.seed)
        trainer = quick_trainer(self.args.base_steps, root_dir=str(self.work))
        model = EncDecCTCModel(cfg=OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)), trainer=trainer)
        trainer.fit(model)
        clear_dataset_paths(model)
        path = self.work / f"base_{src}.nemo"
        atomic_save_to(model, str(path))
        self.log(f"base on {src}, {self.args.base_steps} steps")
        return path

    def load_base(self):
        from nemo.collections.asr.models import ASRModel

        device = "cuda" if torch.cuda.is_available() else "cpu"
        return ASRModel.restore_from(str(self.base_path), map_location=device).eval()

    # ------------------------------------------------------------------ one run
    def finetune(self, start, lang: str, *, replay: dict[str, float] | None = None, transfer: dict | None = None,
                 batch: int | None = None):
        """Fine-tune ``start`` (a .nemo path or a model) on ``lang`` (plus ``replay``: {language: share}).

        ``batch``: utterances a step (default ``--batch``).

        A path is kept as ``transfer.base_model`` (what the regularizers reload when training starts).
        """
        from nemo_tl.demo import data_cfg
        from nemo_tl.models import TransferCTCModel
        from nemo_tl.transfer.recipe import finetune_optim
        from nemo_tl.utils.training import quick_trainer

        train = data_cfg(self.corpus[lang]["train"], self.labels, batch or self.args.batch, True, drop_last=True)
        if replay:
            train["manifest_filepath"] = [self.corpus[lang]["train"], *(self.corpus[x]["train"] for x in replay)]
            train["mixing"] = {"weights": [1 - sum(replay.values()), *replay.values()], "seed": self.args.seed}
        torch.manual_seed(self.args.seed)
        trainer = quick_trainer(self.args.steps, root_dir=str(self.work / "runs"))
        cfg = {"labels": self.labels, "train_ds": train, "optim": finetune_optim(self.lr),
               "transfer": {"vocabulary": "keep_shared", **(transfer or {})}}
        if isinstance(start, str):
            cfg["transfer"]["base_model"], start = start, None
        model = TransferCTCModel(cfg=cfg, trainer=trainer, base_model=start)
        trainable = sum(q.numel() for q in model.parameters() if q.requires_grad)
        trainer.fit(model)
        model.trainable = trainable
        return model.eval()

    def evaluate(self, model, langs: list[str]) -> dict[str, dict]:
        from nemo_tl.evaluation import evaluate_manifests

        model.eval()
        res = evaluate_manifests(model, [self.corpus[lang]["dev"] for lang in langs], batch_size=64)
        return {lang: {k: res[self.corpus[lang]["dev"]][k] for k in ("wer", "cer")} for lang in langs}

    def log(self, what: str) -> None:
        print(f"[{time.time() - self.t0:6.0f} s] {what}", flush=True)

    def too_late(self, name: str) -> bool:
        """True (and ``name`` listed as not run) once ``--time-limit`` seconds have passed."""
        limit = self.args.time_limit
        if limit is None or time.time() - self.t0 <= limit:
            return False
        self.results["skipped"].append(f"{name}: not started, --time-limit {limit:g} s had passed")
        return True

    # ------------------------------------------------------------------ mode 1: the frontier
    def run_frontier(self) -> None:
        from nemo_tl.transfer.average import average_models

        a, src, tgt = self.args, self.langs[0], self.langs[1]
        base = self.load_base()
        points: list[dict] = []
        self.results["points"] = points

        def add(name: str, method: str, model, steps: int, trainable: int | None, extra: dict | None = None):
            points.append({"name": name, "method": method, "steps": steps, "trainable": trainable,
                           **self.evaluate(model, [src, tgt]), **(extra or {})})
            self.log(f"{name}: {src} CER {points[-1][src]['cer']:.1f}, {tgt} CER {points[-1][tgt]['cer']:.1f}")
            self.save_frontier()

        def averaged(name: str, tuned) -> None:
            for lam in floats(a.average):
                avg = average_models(base, tuned, lam).to(next(tuned.parameters()).device)
                add(f"average λ={lam:.2f} ({name})", "averaging", avg, a.steps, None)
                del avg

        add(f"base ({src})", "base", base, 0, None)
        target_only = f"keep_shared, {tgt} only"
        # the first setting of every method runs before the second of any (rank), so that a run cut short
        # still has each method on the frontier
        runs = [Run(0, target_only, "fine-tuning", averaged=True)]
        for i, share in enumerate(floats(a.replay)):
            runs.append(Run(i, f"replay {int(round(100 * share))}% {src}", "replay", {src: share}, averaged=i == 0))
        for i, share in enumerate(floats(a.added_replay)):
            batch = added_replay_batch(a.batch, share)
            runs.append(Run(i, f"replay {int(round(100 * share))}% {src} added (batch {batch})", "replay",
                            {src: share}, averaged=i == 0, batch=batch))
        for spec in (x.strip() for x in a.combine.split(",") if x.strip()):
            share, transfer = combination(spec, a.lwf_temperature, self.corpus[src]["train"], a.ewc_batches)
            runs.append(Run(0, spec.replace("+", " + "), "combined", None if share is None else {src: share},
                            transfer or None, averaged=True))
        if a.adapter_dim:
            runs.append(Run(0, f"adapters dim {a.adapter_dim}", "adapters", transfer={"adapters": {"dim": a.adapter_dim}}))
        methods = (("lwf", "LwF", a.lwf, f" T={a.lwf_temperature:g}"), ("l2sp", "L2-SP", a.l2sp, ""),
                   ("ewc", "EWC", a.ewc, ""))
        for key, method, weights, detail in methods:
            for i, w in enumerate(floats(weights)):
                section = regularizer(key, w, a.lwf_temperature, self.corpus[src]["train"], a.ewc_batches)
                runs.append(Run(i, f"{method} w={w:g}{detail}", method, transfer={"regularization": {key: section}},
                                averaged=key == "lwf" and i == 0))
        runs.sort(key=lambda r: r.rank)  # stable: method order within a rank
        for _, name, method, replay, transfer, average, batch in runs:
            if self.too_late(name):
                continue
            if transfer and "regularization" in transfer and not _regularization_available():
                self.results["skipped"].append(f"{name}: model.transfer.regularization is not in this nemo_tl")
                continue
            model = self.finetune(str(self.base_path), tgt, replay=replay, transfer=transfer, batch=batch)
            extra = {"batch": batch or a.batch}
            if method == "adapters":
                from nemo_tl.transfer.adapters import adapter_parameter_share

                extra["adapter_share"] = adapter_parameter_share(model)
            add(name, method, model, a.steps, model.trainable, extra)
            if average:
                averaged(name, model)
            del model
        print(self.save_frontier())

    def save_frontier(self) -> str:
        from nemo_tl.transfer.frontier import meets_goal, pareto_optimal

        src, tgt = self.langs[0], self.langs[1]
        points = self.results["points"]
        for p, front in zip(points, pareto_optimal([(p[src]["cer"], p[tgt]["cer"]) for p in points])):
            p["pareto"] = front
        ref = {p["method"]: p for p in points if p["method"] in ("base", "fine-tuning")}
        if len(ref) == 2:
            base_src, target_only = ref["base"][src]["cer"], ref["fine-tuning"][tgt]["cer"]
            self.results["goal"] = {"source_cer_max": 1.20 * base_src, "target_cer_max": 1.05 * target_only}
            for p in points:
                p["goal"] = p["steps"] <= ref["fine-tuning"]["steps"] and meets_goal(
                    p[src]["cer"], p[tgt]["cer"], base_src, target_only)
        md = frontier_table(self.results, src, tgt)
        (self.out / "results.md").write_text(md + "\n", encoding="utf-8")
        (self.out / "results.json").write_text(json.dumps(self.results, indent=1), encoding="utf-8")
        plot_frontier(points, src, tgt, self.out / "frontier.png")
        return md

    # ------------------------------------------------------------------ mode 2: a sequence of languages
    def run_sequence(self) -> None:
        langs, share = self.langs, floats(self.args.replay)[0]
        base = self.load_base()
        row0 = self.evaluate(base, langs[:1])
        sequences: dict[str, list[list[float]]] = {}
        single: list[float] = []  # R*_k: the base fine-tuned on language k alone
        for method in [m.strip() for m in self.args.methods.split(",") if m.strip()]:
            model, errors = base, [[row0[langs[0]]["cer"]]]
            sequences[method] = errors
            for k, lang in enumerate(langs[1:], start=1):
                if self.too_late(f"{method}, {lang}"):
                    break
                seen = langs[:k]
                replay = {x: share / len(seen) for x in seen} if method == "replay" else None
                model = self.finetune(model, lang, replay=replay)
                res = self.evaluate(model, langs[: k + 1])
                errors.append([res[x]["cer"] for x in langs[: k + 1]])
                self.log(f"{method}, after {lang}: CER {errors[-1]}")
                if method == "fine-tuning" and k == 1:
                    single.append(errors[1][1])  # the first step of plain fine-tuning is the base on it alone
                self.save_sequence(sequences, single)
        for lang in langs[1 + len(single):]:
            if self.too_late(f"{lang} alone from the base"):
                break
            single.append(self.evaluate(self.finetune(base, lang), [lang])[lang]["cer"])
            self.log(f"{lang} alone from the base: CER {single[-1]:.1f}")
            self.save_sequence(sequences, single)
        print(self.save_sequence(sequences, single))

    def save_sequence(self, sequences: dict[str, list[list[float]]], single: list[float]) -> str:
        """Writes the sequence so far (called after every run, so an interrupted sequence keeps what it did).

        FWT needs the single-language runs of every step a method reached; until then it is left out.
        """
        from nemo_tl.transfer.frontier import continual_metrics

        methods = {}
        for method, errors in sequences.items():
            steps = len(errors) - 1
            methods[method] = {"errors": errors,
                               "metrics": continual_metrics(errors, single[:steps] if len(single) >= steps else None)}
        self.results["sequence"] = {"languages": self.langs, "single_task_cer": single, "methods": methods}
        md = sequence_table(self.results["sequence"], self.results["skipped"])
        (self.out / "results.md").write_text(md + "\n", encoding="utf-8")
        (self.out / "results.json").write_text(json.dumps(self.results, indent=1), encoding="utf-8")
        return md


def _regularization_available() -> bool:
    import dataclasses

    from nemo_tl.transfer.config import TransferConfig

    return "regularization" in {f.name for f in dataclasses.fields(TransferConfig)}


def _device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------------- report
def frontier_table(results: dict, src: str, tgt: str) -> str:
    goal = results.get("goal")
    lines = [f"| point | {src} dev WER % | {src} dev CER % | {tgt} dev WER % | {tgt} dev CER % | steps "
             "| trainable params | Pareto | goal |", "|---|---:|---:|---:|---:|---:|---:|:-:|:-:|"]
    for p in results["points"]:
        trainable = "" if p["trainable"] is None else f"{p['trainable']:,}"
        lines.append(f"| {p['name']} | {p[src]['wer']:.1f} | {p[src]['cer']:.1f} | {p[tgt]['wer']:.1f} | "
                     f"{p[tgt]['cer']:.1f} | {p['steps']} | {trainable} | {'✓' if p.get('pareto') else ''} | "
                     f"{'✓' if p.get('goal') else ''} |")
    notes = ["", "Pareto: no other point has both a lower or equal source CER and a lower or equal target CER "
             "(one strictly lower)."]
    if goal:
        notes.append(f"Goal: {src} CER ≤ {goal['source_cer_max']:.1f} (1.20× the base) and {tgt} CER ≤ "
                     f"{goal['target_cer_max']:.1f} (1.05× keep_shared on {tgt} only), at no more steps.")
    for p in results["points"]:
        if "adapter_share" in p:
            s = p["adapter_share"]
            notes.append(f"{p['name']}: adapters {s['adapters']:,} + decoder {s['decoder']:,} parameters train, "
                         f"{100 * s['share']:.1f}% of {s['total']:,}.")
    notes += [f"Not run: {s}." for s in results.get("skipped", [])]
    return "\n".join(lines + notes)


def sequence_table(seq: dict, skipped: Sequence[str] = ()) -> str:
    langs = seq["languages"]
    lines = [f"| method | after | {' | '.join(f'{x} CER %' for x in langs)} | avg CER % | BWT | FWT |",
             "|---|---|" + "---:|" * (len(langs) + 3)]
    for method, m in seq["methods"].items():
        for k, (row, step) in enumerate(zip(m["errors"], m["metrics"])):
            cells = [f"{c:.1f}" for c in row] + [""] * (len(langs) - len(row))
            bwt = "" if step["bwt"] is None else f"{step['bwt']:+.1f}"
            fwt = "" if step["fwt"] is None else f"{step['fwt']:+.1f}"
            lines.append(f"| {method} | {langs[k]} | {' | '.join(cells)} | {step['avg']:.1f} | {bwt} | {fwt} |")
    single = ", ".join(f"{x} {c:.1f}" for x, c in zip(langs[1:], seq["single_task_cer"]))
    lines += ["", "BWT: mean over earlier languages of (CER right after learning it − CER now); negative is "
              "forgetting. FWT: CER of the base fine-tuned on that language alone − CER here; positive helps. "
              f"Single-language CERs: {single}."]
    lines += [f"Not run: {x}." for x in skipped]
    return "\n".join(lines)


def plot_frontier(points: list[dict], src: str, tgt: str, path: Path) -> None:
    from nemo_tl.utils.extras import require

    require("matplotlib", "plots").use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    markers = {"base": "*", "fine-tuning": "s", "replay": "o", "averaging": ".", "LwF": "^", "L2-SP": "v",
               "EWC": "D", "adapters": "P", "combined": "X"}
    for method, marker in markers.items():
        pts = [p for p in points if p["method"] == method]
        if pts:
            ax.scatter([p[src]["cer"] for p in pts], [p[tgt]["cer"] for p in pts], marker=marker, s=60,
                       label=method)
    front = sorted((p[src]["cer"], p[tgt]["cer"]) for p in points if p.get("pareto"))
    if front:
        ax.step([x for x, _ in front], [y for _, y in front], where="post", color="gray", lw=1, label="Pareto front")
    for p in points:
        if p["method"] in ("base", "fine-tuning"):
            ax.axvline(p[src]["cer"], color="gray", ls=":", lw=0.8)
            ax.axhline(p[tgt]["cer"], color="gray", ls=":", lw=0.8)
    ax.set_xlabel(f"{src} dev CER % (source, lower is better)")
    ax.set_ylabel(f"{tgt} dev CER % (target, lower is better)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
