"""Kim et al. 2021 Tables 3-4 (multi-domain uncertainty-matching KD) on synthesized speech, in one run.

    python examples/reproduce_kd.py --out runs/kd --domains en-us,en-gb-scotland --text cldr --hours 1.5 \
        --student-share 0.5 --teacher-steps 1200 --student-steps 800 --batch 32

1. Synthesizes one corpus per domain, two espeak-ng English accents (``nemo_tl.data.synth_corpus``).
   Train utterances whose text is in any domain's dev or test split are dropped (the accents share
   one text pool), so no test sentence is heard in training, in either accent.
2. Trains one teacher per domain on that domain alone: ``--teacher-config`` (QuartzNet 5x3) with
   ``nemo_tl.modules.UncertaintyConvASRDecoder``, so that it predicts log σ² beside its logits.
3. Trains the students from scratch on both domains mixed 1:1 (``train_ds.mixing``), each on the
   first ``--student-share`` of every domain's train data (Kim et al.'s students learn from less
   data than their teachers), all with the same steps, batch and schedule:
   ``conf/distill_ctc.yaml``'s model at ``--student-width`` (Table 3): baseline (CTC only), tok-KD
   from teacher 1, tok-KD + unc-KD from teacher 1, tok-KD from both, tok-KD + unc-KD from both; and
   a smaller student (``--small-width``, ``--small-repeat``: by default R = 1, 5x1 instead of 5x3, as
   Kim et al.'s WSJ-small has fewer layers; Table 4): baseline, tok-KD + unc-KD from teacher 1, from
   both. Every student has the uncertainty decoder, so rows differ only in their loss
   (``model.distillation``: α = 2.5, β = 1, T = 1 from the config, γ_k = 1/K). The teachers' outputs
   are computed once per teacher set on the accelerator into an offline cache
   (``distillation.cache``; ``--online`` runs the teachers in every step instead).
4. Writes ``results.json`` and ``results.md``: greedy WER and CER on each domain's test set and
   their average, rows as in Kim et al. Tables 3-4 (teachers first, as their Table 2), and for each
   row the paper's claims it tests (KD beats the baseline, unc-KD adds to tok-KD, two teachers beat
   one), decided on the average WER. Results are rewritten after every model, so an interrupted run
   keeps what it finished.

``--smoke`` shrinks everything (corpus, models, steps) for a CPU test of the whole pipeline.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
UNCERTAINTY_DECODER = "nemo_tl.modules.UncertaintyConvASRDecoder"
SMOKE = {"hours": 0.01, "teacher_steps": 3, "student_steps": 2, "batch": 4, "teacher_width": 0.125,
         "teacher_repeat": 1, "student_width": 0.0625, "student_repeat": 1, "small_width": 0.03125, "workers": 0,
         "rect_time": 32}


@dataclass(frozen=True)
class Run:
    """One student: its size (``student`` or ``small``), teachers (domain indices) and whether unc-KD is on."""

    key: str
    size: str
    teachers: tuple[int, ...] = ()
    uncertainty: bool = False
    selective: bool = False  # two teachers: ``conditional`` + ``teacher_weighting: confidence`` instead of γ_k = 1/K

    @property
    def method(self) -> str:
        method = "-" if not self.teachers else "tok-KD + unc-KD" if self.uncertainty else "tok-KD"
        return method + " (conditional, confidence-weighted)" if self.selective else method


RUNS = (
    Run("base", "student"),
    Run("tok_1", "student", (0,)),
    Run("tok_unc_1", "student", (0,), True),
    Run("tok_12", "student", (0, 1)),
    Run("tok_unc_12", "student", (0, 1), True),
    Run("tok_unc_12_sel", "student", (0, 1), True, selective=True),
    Run("small_base", "small"),
    Run("small_tok_unc_1", "small", (0,), True),
    Run("small_tok_unc_12", "small", (0, 1), True),
)

# (row, the paper's claim, the row it must beat on average WER)
CLAIMS = (
    ("tok_1", "KD beats the baseline", "base"),
    ("tok_unc_1", "KD beats the baseline", "base"),
    ("tok_unc_1", "unc-KD adds to tok-KD", "tok_1"),
    ("tok_12", "KD beats the baseline", "base"),
    ("tok_12", "two teachers beat one", "tok_1"),
    ("tok_unc_12", "KD beats the baseline", "base"),
    ("tok_unc_12", "unc-KD adds to tok-KD", "tok_12"),
    ("tok_unc_12", "two teachers beat one", "tok_unc_1"),
    ("tok_unc_12_sel", "two teachers beat one", "tok_unc_1"),
    ("tok_unc_12_sel", "per-utterance teacher selection beats fixed γ_k", "tok_unc_12"),
    ("small_base", "the smaller student is worse (Kim et al. Table 2)", "base"),
    ("small_tok_unc_1", "KD beats the baseline", "small_base"),
    ("small_tok_unc_12", "KD beats the baseline", "small_base"),
    ("small_tok_unc_12", "two teachers beat one", "small_tok_unc_1"),
    ("small_tok_unc_12", "with KD the smaller student beats the larger baseline", "base"),
)


def check_claims(rows: dict[str, dict]) -> list[dict]:
    """Each claim of :data:`CLAIMS` whose rows were evaluated, decided on the average WER.

    ``rows[key]["test"]["avg"]["wer"]`` is a row's average WER. A claim holds when its row's WER is
    below the reference row's, except "the smaller student is worse", which holds when it is above.
    """
    checked = []
    for key, claim, ref in CLAIMS:
        if key not in rows or ref not in rows:
            continue
        wer, ref_wer = rows[key]["test"]["avg"]["wer"], rows[ref]["test"]["avg"]["wer"]
        held = wer > ref_wer if claim.startswith("the smaller student is worse") else wer < ref_wer
        checked.append({"row": key, "claim": claim, "reference": ref, "wer": wer, "reference_wer": ref_wer,
                        "held": bool(held)})
    return checked


def quartznet(conf: str, width: float = 1.0, repeat: int | None = None, rect_time: int | None = None):
    """The ``model`` section of ``conf/{conf}.yaml`` with the uncertainty decoder, every encoder block's
    filters scaled by ``width`` (to a multiple of 8), its repeat R capped at ``repeat`` and, given,
    ``spec_augment.rect_time`` set to ``rect_time`` feature frames."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(REPO / "conf" / f"{conf}.yaml").model
    if rect_time is not None:
        cfg.spec_augment.rect_time = rect_time
    for block in cfg.encoder.jasper:
        block.filters = max(8, 8 * round(block.filters * width / 8))
        if repeat is not None:
            block.repeat = min(block.repeat, repeat)
    cfg.decoder._target_ = UNCERTAINTY_DECODER
    cfg.decoder.feat_in = cfg.encoder.jasper[-1].filters
    return cfg


def clean_splits(corpus: dict[str, dict[str, str]], out: Path, share: float) -> dict[str, dict]:
    """Per domain, ``train_teacher.json`` (train utterances whose text is in no domain's dev or test
    split) and ``train_student.json`` (its first ``share``, at least one utterance); returns the
    manifests and their sizes."""
    from nemo_tl.data.manifest import read_manifest
    from nemo_tl.data.synthetic import write_manifest

    held_out = {e["text"] for splits in corpus.values() for s in ("dev", "test") for e in read_manifest(splits[s])}
    data = {}
    for domain, splits in corpus.items():
        train = [e for e in read_manifest(splits["train"]) if e["text"] not in held_out]
        student = train[: max(1, round(share * len(train)))]
        test = read_manifest(splits["test"])
        data[domain] = {
            "teacher_train": write_manifest(str(out / domain / "train_teacher.json"), train),
            "student_train": write_manifest(str(out / domain / "train_student.json"), student),
            "test": splits["test"],
            "sizes": {name: {"utterances": len(es), "hours": round(sum(e["duration"] for e in es) / 3600, 4)}
                      for name, es in (("synthesized_train", read_manifest(splits["train"])),
                                       ("teacher_train", train), ("student_train", student), ("test", test))},
        }
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--domains", default="en-us,en-gb-scotland", help="two espeak-ng English accents")
    p.add_argument("--text", default="cldr", help="digits | cldr | mixed")
    p.add_argument("--hours", type=float, default=1.5, help="synthesized hours per domain (all splits)")
    p.add_argument("--student-share", type=float, default=0.5, help="share of each domain's train data students see")
    p.add_argument("--teacher-config", default="quartznet_5x3", help="conf/ name of the teachers' architecture")
    p.add_argument("--teacher-width", type=float, default=1.0, help="factor on its encoder filters")
    p.add_argument("--teacher-repeat", type=int, default=None, help="cap on its modules per block R")
    p.add_argument("--student-width", type=float, default=0.5, help="factor on conf/distill_ctc.yaml's filters")
    p.add_argument("--student-repeat", type=int, default=None, help="cap on the student's R")
    p.add_argument("--small-width", type=float, default=0.5, help="the smaller student's filter factor")
    p.add_argument("--small-repeat", type=int, default=1, help="cap on the smaller student's R")
    p.add_argument("--teacher-steps", type=int, default=1200)
    p.add_argument("--student-steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--online", action="store_true", help="run the teachers in every step instead of caching")
    p.add_argument("--workers", type=int, default=4 if torch.cuda.is_available() else 0, help="loader workers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rect-time", type=int, default=None,
                   help="spec_augment.rect_time in feature frames (default: the configs' 120, 1.2 s; a corpus of "
                   "shorter utterances needs less: NeMo's SpecCutout crashes on a batch shorter than it)")
    p.add_argument("--smoke", action="store_true", help="tiny corpus, models and steps (a CPU test)")
    if p.parse_known_args(argv)[0].smoke:
        p.set_defaults(**SMOKE)
    args = p.parse_args(argv)
    if not 0 < args.student_share <= 1:
        p.error("--student-share must be in (0, 1]")

    from nemo_tl.utils.training import TrainingTimer, quick_trainer, quiet_logs

    quiet_logs()
    from omegaconf import OmegaConf

    from nemo_tl.data.synth_corpus import synthesize_corpus
    from nemo_tl.data.texts import labels_for
    from nemo_tl.demo import data_cfg
    from nemo_tl.distill.cache import build_cache
    from nemo_tl.models import DistillCTCModel, TransferCTCModel
    from nemo_tl.utils.atomic import atomic_save_to

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    domains = [d.strip().lower() for d in args.domains.split(",")]
    if len(domains) != 2:
        p.error("--domains takes two accents, e.g. en-us,en-gb-scotland")
    labels = labels_for(domains[0])
    results: dict = {"args": vars(args), "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                     "domains": domains, "timing_s": {}, "teachers": {}, "rows": {}, "claims": []}

    def stage(name: str, seconds: float, note: str = "") -> None:
        results["timing_s"][name] = round(seconds, 2)
        print(f"[{time.time() - t0:6.0f} s] {name}: {seconds:.1f} s {note}", flush=True)

    def fit(model_cls, cfg, steps: int):
        torch.manual_seed(args.seed)
        timer = TrainingTimer()
        trainer = quick_trainer(steps, callbacks=[timer])
        start = time.time()
        model = model_cls(cfg=OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)), trainer=trainer)
        built = time.time()
        torch.manual_seed(args.seed)  # the same dither/SpecAugment/noise draws, whatever the teachers consumed
        trainer.fit(model)
        last = {k: float(v) for k, v in trainer.callback_metrics.items() if k.endswith("loss")}
        return model, {"build_s": built - start, "train_s": timer.seconds,
                       "params": sum(q.numel() for q in model.parameters()), "last_losses": last}

    def evaluate(model) -> dict:
        from nemo_tl.evaluation import evaluate_manifests

        model = model.to(device).eval()
        res = evaluate_manifests(model, [data[d]["test"] for d in domains], batch_size=64)
        model.cpu()
        row = {d: res[data[d]["test"]] for d in domains}
        row["avg"] = {k: sum(row[d][k] for d in domains) / len(domains) for k in ("wer", "cer")}
        return row

    def loader(manifests: list[str]) -> dict:
        train = data_cfg(manifests if len(manifests) > 1 else manifests[0], labels, args.batch, True, drop_last=True)
        train["num_workers"] = args.workers
        if len(manifests) > 1:
            train["mixing"] = {"weights": [1.0] * len(manifests), "seed": args.seed}
        return train

    # 1. corpus
    start = time.time()
    corpus = synthesize_corpus(str(out / "corpus"), domains, hours=args.hours, seed=args.seed, text_source=args.text)
    data = clean_splits(corpus, out / "corpus", args.student_share)
    results["corpus"] = {d: data[d]["sizes"] for d in domains}
    stage("corpus", time.time() - start, json.dumps({d: {k: v["utterances"] for k, v in data[d]["sizes"].items()}
                                                     for d in domains}))

    # 2. teachers, one per domain
    teacher_paths = []
    teachers = []
    for d in domains:
        cfg = quartznet(args.teacher_config, args.teacher_width, args.teacher_repeat, args.rect_time)
        cfg.labels, cfg.optim.lr = labels, args.lr
        cfg.train_ds = loader([data[d]["teacher_train"]])
        cfg.validation_ds = data_cfg(None, labels, 64, False)
        model, info = fit(TransferCTCModel, cfg, args.teacher_steps)
        path = out / f"teacher_{d}.nemo"
        atomic_save_to(model, str(path))
        start = time.time()
        info["test"] = evaluate(model)
        results["teachers"][d] = info
        teacher_paths.append(str(path))
        teachers.append(model)
        stage(f"teacher {d}", info["build_s"] + info["train_s"] + time.time() - start,
              f"({info['params']:,} params, {1000 * info['train_s'] / args.teacher_steps:.0f} ms/step; "
              f"test WER {json.dumps({k: round(v['wer'], 1) for k, v in info['test'].items()})})")

    # 3. students
    student_train = [data[d]["student_train"] for d in domains]
    caches: dict[tuple[int, ...], str] = {}
    for run in RUNS:
        if run.size == "student":
            cfg = quartznet("distill_ctc", args.student_width, args.student_repeat, args.rect_time)
        else:
            cfg = quartznet("distill_ctc", args.small_width, args.small_repeat, args.rect_time)
        cfg.labels, cfg.optim.lr = labels, args.lr
        cfg.train_ds = loader(student_train)
        cfg.validation_ds = data_cfg(None, labels, 64, False)
        kd = cfg.pop("distillation")
        model_cls = TransferCTCModel
        if run.teachers:
            model_cls = DistillCTCModel
            kd.teachers = [{"model": teacher_paths[k], "weight": 1.0 / len(run.teachers)} for k in run.teachers]
            kd.uncertainty = run.uncertainty
            if run.selective:
                kd.conditional, kd.teacher_weighting = True, "confidence"
            if not args.online and run.teachers not in caches:
                start = time.time()
                directory = out / "kd_cache" / "_".join(domains[k] for k in run.teachers)
                shutil.rmtree(directory, ignore_errors=True)  # made by an earlier run's teachers
                for i, k in enumerate(run.teachers):
                    build_cache(teachers[k], student_train, str(directory / f"teacher_{i}"), batch_size=64,
                                device=device)
                    teachers[k].cpu()
                caches[run.teachers] = str(directory)
                stage(f"teacher cache {'+'.join(domains[k] for k in run.teachers)}", time.time() - start)
            kd.cache = None if args.online else caches[run.teachers]
            cfg.distillation = kd
        model, info = fit(model_cls, cfg, args.student_steps)
        start = time.time()
        info["test"] = evaluate(model)
        del model
        results["rows"][run.key] = {"size": run.size, "teachers": [domains[k] for k in run.teachers],
                                    "method": run.method, **info}
        if run.teachers:
            results["rows"][run.key]["kd"] = {k: cfg.distillation[k] for k in ("conditional", "teacher_weighting")}
        results["claims"] = check_claims(results["rows"])
        md = save(results, out)
        stage(f"{run.size} {run.key}", info["build_s"] + info["train_s"] + time.time() - start,
              f"({info['params']:,} params, {1000 * info['train_s'] / args.student_steps:.0f} ms/step; "
              f"avg test WER {info['test']['avg']['wer']:.1f}, CER {info['test']['avg']['cer']:.1f})")
    results["timing_s"]["total"] = round(time.time() - t0, 2)
    md = save(results, out)
    print(md)
    print(f"total {time.time() - t0:.0f} s")
    return 0


def save(results: dict, out: Path) -> str:
    md = report(results)
    (out / "results.md").write_text(md + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    return md


def _cells(test: dict, domains: list[str]) -> str:
    cols = [*domains, "avg"]
    return " | ".join(f"{test[c]['wer']:.1f}" for c in cols) + " | " + " | ".join(f"{test[c]['cer']:.1f}" for c in cols)


def report(results: dict) -> str:
    """Markdown: the rows of Kim et al. Tables 2-4 (WER and CER per domain test set and average) and the claims."""
    domains = results["domains"]
    head = " | ".join(f"{d} WER %" for d in domains) + " | avg WER % | "
    head += " | ".join(f"{d} CER %" for d in domains) + " | avg CER %"
    lines = [f"| model | teachers | method | {head} | params | train s | paper's claims (avg WER) |",
             "|---|---|---|" + "---:|" * (2 * len(domains) + 4) + "---|"]
    for d, t in results["teachers"].items():
        lines.append(f"| teacher | trained on {d} | - | {_cells(t['test'], domains)} | {t['params']:,} | "
                     f"{t['train_s']:.0f} | |")
    claims: dict[str, list[str]] = {}
    for c in results["claims"]:
        claims.setdefault(c["row"], []).append(f"{c['claim']}: {'**yes**' if c['held'] else '**no**'}")
    for key, r in results["rows"].items():
        lines.append(f"| {r['size']} | {', '.join(r['teachers']) or '-'} | {r['method']} | "
                     f"{_cells(r['test'], domains)} | {r['params']:,} | {r['train_s']:.0f} | "
                     f"{'; '.join(claims.get(key, []))} |")
    lines += ["", "| row | claim (Kim et al.) | compared with | avg WER % | reference avg WER % | held? |",
              "|---|---|---|---:|---:|---|"]
    for c in results["claims"]:
        lines.append(f"| {c['row']} | {c['claim']} | {c['reference']} | {c['wer']:.2f} | {c['reference_wer']:.2f} | "
                     f"{'yes' if c['held'] else 'no'} |")
    held = sum(c["held"] for c in results["claims"])
    lines += ["", f"{held} of {len(results['claims'])} claims held."]
    if not all(math.isfinite(r["test"]["avg"]["wer"]) for r in results["rows"].values()):
        lines.append("Some WERs are not finite.")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
