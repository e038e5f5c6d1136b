"""Render docs/PERFORMANCE.md from the JSON results of ``bench/run_all.sh``.

    python bench/report.py OUT_DIR [--docs docs/PERFORMANCE.md] [--force]

Reads OUT_DIR/{transfer_ctc,multisoftmax,distill,lid_free,mixed_loader}.json (a missing one is
reported as not measured), writes OUT_DIR/PERFORMANCE.md and, for a full GPU run, the docs
page too (smoke or CPU results never overwrite docs/ unless ``--force``). Prints the goals table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import fmt, markdown_table  # noqa: E402

NAMES = ("transfer_ctc", "multisoftmax", "distill", "lid_free", "mixed_loader")
NOT_MEASURED = "_not measured: see bench.log_"


def load(out_dir: str) -> dict[str, Any]:
    results = {}
    for name in NAMES:
        path = os.path.join(out_dir, f"{name}.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                results[name] = json.load(f)
    return results


def met(value: float | None, goal: float | None, at_least: bool = False) -> str:
    if value is None or goal is None:
        return "n/a"
    ok = value >= goal if at_least else value <= goal
    return "yes" if ok else "**NO**"


def header(results: dict[str, Any]) -> tuple[list[str], bool]:
    """The environment lines and whether these are real GPU results (no smoke, no CPU)."""
    envs = [r["env"] for r in results.values() if "env" in r]
    real = bool(envs) and all(
        not r.get("smoke") and r.get("env", {}).get("device_kind") == "cuda" for r in results.values() if "env" in r
    )
    if not envs:
        return [
            "> **Not measured yet**: run `bash bench/run_all.sh OUT_DIR` on the lent GPU (bench/README.md)."
        ], False
    e = envs[0]
    gpus = sorted({x.get("gpu") or "CPU" for x in envs})
    lines = [
        f"- **Device**: {', '.join(gpus)}" + (f" ({e.get('gpu_memory_gib')} GiB)" if e.get("gpu") else ""),
        f"- **Date**: {e['date_utc']}",
        f"- **Versions**: torch {e['torch']} (CUDA {e['cuda']}, cuDNN {e.get('cudnn')}), NeMo {e['nemo']}, "
        f"Python {e['python']}, nemo_tl {e.get('git') or 'working tree'}",
    ]
    if len(gpus) > 1:
        lines.append("- **Warning**: the benchmarks ran on different devices; compare ratios only within one.")
    if not real:
        lines.insert(0, "> **SMOKE / CPU RUN: NOT RESULTS.** Shapes are tiny and times come from a CPU.\n")
    return lines, real


# ------------------------------------------------------------------------------ sections
def transfer(r: dict | None, goals: list) -> list[str]:
    lines = ["## 1. TransferCTCModel vs EncDecCTCModel (QuartzNet 15x5)", ""]
    if r is None:
        goals.append(["1", "TransferCTCModel step / EncDecCTCModel, nothing frozen", "≤ 1.02", NOT_MEASURED, "n/a"])
        return [*lines, NOT_MEASURED, ""]
    s, setup = r["sections"], r.get("setup", {})
    lines.append(
        f"{setup.get('config')}, {setup.get('parameters_m')} M parameters, batch {setup.get('batch')} × "
        f"{setup.get('seconds')} s random audio, {setup.get('chars')}-character transcripts; one step = "
        "`training_step` (dither, SpecAugment, encoder, decoder, CTC) + backward + NovoGrad step; median of "
        f"{r['args'].get('ratio_steps')} interleaved steps after {r['args'].get('warmup')} warm-up steps."
    )
    lines.append("")
    h2h = s.get("head_to_head", {})
    rows = []
    for p, x in h2h.items():
        rows.append(
            [
                p,
                fmt(x["nemo"]["median_ms"]),
                fmt(x["nemo_tl"]["median_ms"]),
                f"{x['ratio']:.3f}",
                met(x["ratio"], x["goal"]),
                fmt(x["nemo"].get("peak_gib"), ".2f"),
                fmt(x["nemo_tl"].get("peak_gib"), ".2f"),
            ]
        )
        goals.append(
            [
                "1",
                f"TransferCTCModel step / EncDecCTCModel, nothing frozen, {p}",
                "≤ 1.02",
                f"{x['ratio']:.3f}",
                met(x["ratio"], x["goal"]),
            ]
        )
    if not h2h:
        goals.append(["1", "TransferCTCModel step / EncDecCTCModel, nothing frozen", "≤ 1.02", NOT_MEASURED, "n/a"])
    lines += [
        markdown_table(
            ["precision", "NeMo ms", "nemo_tl ms", "ratio", "≤ 1.02", "NeMo peak GiB", "nemo_tl peak GiB"], rows
        )
        if rows
        else NOT_MEASURED,
        "",
        "### Freezing the k lowest encoder blocks (Kunze et al. 2017, Fig. 4)",
        "",
    ]
    sweep = s.get("freeze_sweep", {})
    rows = []
    for p, x in sweep.items():
        by = x["by_variant"]
        ref = by.get("NeMo EncDecCTCModel")
        for name, v in by.items():
            rows.append(
                [
                    p,
                    name,
                    fmt(v["median_ms"]),
                    f"{v['median_ms'] / ref['median_ms']:.2f}",
                    fmt(v.get("peak_gib"), ".2f"),
                    "n/a" if v.get("peak_gib") is None else f"{v['peak_gib'] / ref['peak_gib']:.2f}",
                ]
            )
        mono = f"time {x['time_monotonic']}, memory {x['memory_monotonic']}"
        flags = [x["time_monotonic"], x["memory_monotonic"]]
        verdict = "**NO**" if False in flags else ("n/a" if None in flags else "yes")
        goals.append(["1", f"step time and peak memory fall monotonically with k, {p}", "true", mono, verdict])
    lines += [
        markdown_table(["precision", "model", "ms", "vs NeMo", "peak GiB", "vs NeMo"], rows) if rows else NOT_MEASURED,
        "",
    ]
    return lines


def multisoftmax(r: dict | None, goals: list) -> list[str]:
    lines = ["## 3. Multi-softmax RNN-T vs the vanilla union-vocabulary RNN-T", ""]
    if r is None:
        goals.append(["3", "multi-softmax step / vanilla", "≤ 0.8", NOT_MEASURED, "n/a"])
        return [*lines, NOT_MEASURED, ""]
    st = r.get("setup", {})
    langs = ", ".join(f"{k} {v['labels']}" for k, v in st.get("languages", {}).items())
    lines += [
        f"Languages (labels): {langs}; union 412 + blank. Encoder: {st.get('encoder')} ({st.get('layers')} layers, "
        f"d_model {st.get('d_model')}, 8x subsampling), prediction/joint width {st.get('pred_hidden')}, "
        f"loss {st.get('loss')}; batch {st.get('batch')} × {st.get('seconds')} s, {st.get('chars')} characters, one "
        "language per batch. Step time = mean over languages weighted by Joshi et al.'s training hours; peak = the "
        "largest over languages.",
        "",
    ]
    for section, x in r["sections"].items():
        lines += [f"### {section.replace('_', ' ')}", ""]
        rows = []
        for name, m in x["models"].items():
            per = " / ".join(fmt(v["median_ms"]) for v in m["per_language"].values())
            rows.append(
                [
                    name,
                    fmt(m["mean_ms"]),
                    f"{m['time_ratio']:.2f}",
                    fmt(m["peak_gib"], ".2f"),
                    fmt(m["memory_ratio"], ".2f"),
                    per,
                ]
            )
        for name, note in x.get("notes", {}).items():
            rows.append([name, note, "", "", "", ""])
        lines += [
            markdown_table(["model", "step ms", "vs vanilla", "peak GiB", "vs vanilla", "ms per language"], rows),
            "",
        ]
        ms = x["models"].get("nemo_tl multisoftmax (LID head)")
        if ms is not None:
            goals.append(
                [
                    "3",
                    f"multi-softmax step time / vanilla ({section})",
                    "≤ 0.8",
                    f"{ms['time_ratio']:.2f}",
                    met(ms["time_ratio"], 0.8),
                ]
            )
            goals.append(
                [
                    "3",
                    f"multi-softmax peak memory / vanilla ({section})",
                    "≤ 0.55",
                    fmt(ms["memory_ratio"], ".2f"),
                    met(ms["memory_ratio"], 0.55),
                ]
            )
        else:
            goals.append(["3", f"multi-softmax vs vanilla ({section})", "≤ 0.8 / ≤ 0.55", "not measured", "n/a"])
    for section, error in r.get("errors", {}).items():
        lines += [f"### {section.replace('_', ' ')}", "", f"Not measured: `{error}`", ""]
    return lines


def distill(r: dict | None, goals: list) -> list[str]:
    lines = ["## 2. Knowledge distillation: 15x5 teachers → 5x3 student", ""]
    x = (r or {}).get("sections", {}).get("distill")
    if x is None:
        goals.append(["2", "distillation from the cache / student alone", "≤ 1.10", NOT_MEASURED, "n/a"])
        return [*lines, NOT_MEASURED if r is None else f"Not measured: `{r.get('errors')}`", ""]
    rows = []
    for p, y in x["precisions"].items():
        by = y["by_variant"]
        base = by["NeMo student alone (5x3)"]
        for name, v in by.items():
            ratio = v["median_ms"] / base["median_ms"]
            goal = y["goals"].get(name)
            rows.append(
                [
                    p,
                    name,
                    fmt(v["median_ms"]),
                    f"{ratio:.2f}",
                    "" if goal is None else f"≤ {goal:.2f}",
                    "" if goal is None else met(ratio, goal),
                    fmt(v.get("peak_gib"), ".2f"),
                ]
            )
            if goal is not None:
                goals.append(["2", f"{name} / student alone, {p}", f"≤ {goal:.2f}", f"{ratio:.2f}", met(ratio, goal)])
        for name, error in y.get("failed", {}).items():
            rows.append([p, name, f"not measured: {error}", "", "", "", ""])
    a = r.get("args", {})
    lines += [
        f"Teachers {a.get('teacher_config')} and student {a.get('student_config')}, both with nemo_tl's "
        f"UncertaintyConvASRDecoder (student alone: NeMo's plain decoder), conf/distill_ctc.yaml's distillation "
        f"section; batch {a.get('batch_size')} × {a.get('seconds')} s; median of {a.get('steps')} interleaved steps. "
        "Online goal: 1 + K · teacher forward / student step + 0.05 for K teachers.",
        "",
        markdown_table(["precision", "variant", "ms", "vs student", "goal", "met", "peak GiB"], rows),
        "",
        f"Cache build (teacher forward + writes, once): {', '.join(f'{s:.0f}' for s in x['cache_build_s_per_audio_hour'])}"
        " s per hour of audio per teacher.",
        "",
    ]
    return lines


def lid_free(r: dict | None, goals: list) -> list[str]:
    lines = ["## 4. LID-free decoding vs known-language decoding (4 languages)", ""]
    x = (r or {}).get("sections", {}).get("lid_free")
    if x is None:
        goals.append(["4", "LID-free / known-language decoding, no early stopping", "≤ 1.5", NOT_MEASURED, "n/a"])
        return [*lines, NOT_MEASURED, ""]
    rows = []
    for p, y in x.items():
        if p == "setup":
            continue
        for setting, z in y.items():
            if setting == "blank_calibration":
                continue
            for mode, m in z["modes"].items():
                rows.append(
                    [
                        p,
                        setting,
                        mode,
                        fmt(m["total_ms"]),
                        f"{m['ratio']:.2f}",
                        f"{m['t_avg']:.2f}",
                        f"{m['symbols_per_frame']:.2f}",
                    ]
                )
                what = f"{p}, CUDA graphs {setting}"
                if "no early" in mode:
                    goals.append(
                        ["4", f"LID-free / known language, no early stopping, {what}", "≤ 1.5",
                         f"{m['ratio']:.2f}", met(m["ratio"], 1.5)]
                    )
                elif "early stopping" in mode:
                    goals.append(
                        ["4", f"LID-free / known language, {mode.split(', ', 1)[1]}, {what}", "(figure)",
                         f"{m['ratio']:.2f}, T_avg {m['t_avg']:.2f}", "n/a"]
                    )
    lines += [
        "Greedy batch decoding of one batch per language (encoder + LID head + decoders + language choice, no audio "
        "loading); random weights, with each language's blank logit offset so that greedy decoding emits about as "
        "many labels per frame as a trained model would (labels/frame below). The LID head is untrained, so T_avg is "
        "that of an untrained head. CUDA graphs: NeMo's greedy decoder as the model runs it (no_while_loops), or off.",
        "",
        markdown_table(
            ["precision", "CUDA graphs", "decoding", "ms (4 batches)", "vs known", "T_avg", "labels/frame"], rows
        ),
        "",
    ]
    return lines


def mixed_loader(r: dict | None, goals: list) -> list[str]:
    lines = ["## 5. Mixed-manifest loader vs NeMo's plain loader", ""]
    if r is None:
        goals.append(["5", "mixed loader batches/s / plain", "≥ 0.95", NOT_MEASURED, "n/a"])
        return [*lines, NOT_MEASURED, ""]
    a = r.get("args", {})
    rows = [[name, fmt(rate), f"{r['ratio_vs_plain'][name]:.2f}"] for name, rate in r["batches_per_s"].items()]
    for name, ratio in r["ratio_vs_plain"].items():
        if not name.startswith("plain"):
            goals.append(["5", f"{name} batches/s / plain", "≥ 0.95", f"{ratio:.2f}", met(ratio, 0.95, at_least=True)])
    lines += [
        f"{r.get('device')}; batch {a.get('batch_size')}, {a.get('num_workers')} workers, {a.get('batches')} batches × "
        f"{a.get('repeats')} repeats.",
        "",
        markdown_table(["loader", "batches/s", "vs plain"], rows),
        "",
    ]
    idx = r.get("index_samples_per_s", {})
    if idx:
        rows = [
            [mode, f"{v['epoch_plan_samples_per_s']:.3g}", f"{v['rank_iteration_samples_per_s']:.3g}"]
            for mode, v in idx.items()
        ]
        lines += [
            markdown_table(["index generation, 8 ranks", "epoch plan samples/s", "one rank samples/s"], rows),
            "",
        ]
    return lines


def render(results: dict[str, Any]) -> tuple[str, str, bool]:
    env_lines, real = header(results)
    goals: list[list[str]] = []
    body = []
    body += transfer(results.get("transfer_ctc"), goals)
    body += distill(results.get("distill"), goals)
    body += multisoftmax(results.get("multisoftmax"), goals)
    body += lid_free(results.get("lid_free"), goals)
    body += mixed_loader(results.get("mixed_loader"), goals)
    elapsed = ", ".join(f"{k} {v['elapsed_s']:.0f} s" for k, v in results.items() if "elapsed_s" in v)
    goal_table = markdown_table(["#", "what", "goal", "measured", "met"], goals)
    text = "\n".join(
        [
            "# Performance",
            "",
            "Measured by `bash bench/run_all.sh OUT_DIR` and rendered by `python bench/report.py OUT_DIR` "
            "(see bench/README.md). Every ratio is against plain NeMo measured in the same process on the same GPU; "
            "steps are interleaved between the models compared (rotating order), timed with a synchronize on each "
            "side, after warm-up; the median is reported. Peak memory is `torch.cuda.max_memory_allocated` after "
            "`reset_peak_memory_stats`, as if the model were alone on the GPU (its parameters, optimizer state, "
            "teachers and batch, plus the step's peak above that).",
            "",
            *env_lines,
            f"- **Time per benchmark**: {elapsed}" if elapsed else "",
            "",
            "## Goals (issue 6)",
            "",
            goal_table,
            "",
            *body,
        ]
    )
    return text, goal_table, real


HAND_WRITTEN = "## Where a goal is missed"  # from this heading on, the page is written by hand and kept


def hand_written_part(path: str) -> str:
    """The hand-written tail of an existing page (analysis of missed goals, GPU scaling), or a stub."""
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            page = f.read()
        if HAND_WRITTEN in page:
            return page[page.index(HAND_WRITTEN):]
    return (f"{HAND_WRITTEN}, and why\n\n_Profile (torch.profiler) and fix what is ours; where the cause is outside "
            "nemo_tl, say what it is and what the ratio would be without it._\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--docs", default=os.path.join(ROOT, "docs", "PERFORMANCE.md"))
    p.add_argument("--force", action="store_true", help="write --docs even for smoke or CPU results")
    args = p.parse_args(argv)
    text, goal_table, real = render(load(args.out_dir))
    try:
        with open(os.path.join(args.out_dir, "PERFORMANCE.md"), "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:  # e.g. the read-only folder the device tool fetched the results into
        print(f"could not write {args.out_dir}/PERFORMANCE.md ({e.strerror}); writing --docs only")
    if real or args.force:
        os.makedirs(os.path.dirname(os.path.abspath(args.docs)), exist_ok=True)
        tail = hand_written_part(args.docs)
        with open(args.docs, "w", encoding="utf-8") as f:
            f.write(text.rstrip("\n") + "\n\n" + tail)
        print(f"wrote {args.docs} and {os.path.join(args.out_dir, 'PERFORMANCE.md')}")
    else:
        print(f"smoke/CPU results: wrote {os.path.join(args.out_dir, 'PERFORMANCE.md')} only (not {args.docs})")
    print("\n## Goals\n")
    print(goal_table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
