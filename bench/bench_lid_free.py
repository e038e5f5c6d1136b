"""LID-free decoding of 4 languages vs known-language decoding of the same audio (Joshi et al. 2021 §4.2, §6.3).

    python bench/bench_lid_free.py [--device cuda] [--out lid_free.json] [--smoke]

The MultiSoftmaxRNNTModel of bench_multisoftmax.py (same languages, FastConformer-like encoder,
LID head), in eval mode, greedy_batch decoding (conf/multisoftmax_rnnt.yaml), one batch of 16 ×
10 s random audio per language. Timed per batch, interleaved: the model's transcribe forward
and output processing (``_transcribe_forward`` + ``_transcribe_output_processing``: encoder, LID
head, decoders, language choice), without audio loading, under ``torch.inference_mode`` as
NeMo's ``transcribe`` runs it:

- known language (``lang=...``): that language's decoder only;
- LID-free without early stopping (τ = ∞): every language's decoder; goal ≤ 1.5x known;
- LID-free with early stopping at the config's default (τ, s_th), with T_avg.

The weights are random, so each language's blank logit is offset (by bisection) until greedy
decoding emits about ``--symbols-per-frame`` labels per encoder frame (150 characters over 125
frames for 10 s of speech at 8x subsampling: 1.2), as a trained model would; the report gives
the rate actually emitted. The LID head is untrained: T_avg and which decoders
early stopping switches off are those of an untrained head, not of a trained one.

With ``--checkpoint model.nemo --manifests en.json,hi.json,...`` it times a trained model instead:
one batch of the first ``--batch-size`` utterances of each language's manifest (real speech, in
the model's LID order), no blank calibration, and the LID accuracy of the trained head.
(``examples/reproduce_multilingual.py --save`` writes such a model and its test manifests.)
"""

from __future__ import annotations

import math
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_multisoftmax import (  # noqa: E402
    LANGUAGES,
    add_model_args,
    finish_model_args,
    language_batches,
    multilingual_cfg,
    synthetic_vocabularies,
)
from common import (  # noqa: E402
    Results,
    Variant,
    autocast,
    base_parser,
    finish_args,
    fmt,
    markdown_table,
    measure,
    run_section,
    verdict,
)

GOAL_RATIO = 1.5


def emission_rate(model, lang: str, audio, audio_len, frames: int, device: str, precision: str) -> float:
    """Labels per encoder frame that known-language greedy decoding of ``lang`` emits on the batch."""
    import torch

    from nemo_tl.models.multisoftmax_rnnt import MultilingualTranscribeConfig

    trcfg = MultilingualTranscribeConfig(batch_size=audio.shape[0], return_hypotheses=True)
    trcfg.languages = lang
    with torch.inference_mode(), autocast(device, precision):
        hyps = model._transcribe_output_processing(model._transcribe_forward((audio, audio_len), trcfg), trcfg)
    return sum(len(h.y_sequence) for h in hyps) / (len(hyps) * frames)


def calibrate_blank(
    model, batches: dict, frames: int, symbols_per_frame: float, device: str, precision: str, iterations: int = 12
) -> dict[str, dict]:
    """Offset each language's blank logit so that greedy decoding emits about ``symbols_per_frame`` labels a frame.

    Bisection on the offset of the blank bias (the emission rate falls as the offset grows).
    """
    import torch

    found = {}
    for lang in model.languages:
        audio, audio_len = batches[lang]["own"][:2]
        bias = [m for m in model.joint[lang].joint_net.modules() if isinstance(m, torch.nn.Linear)][-1].bias
        original = float(bias.data[-1])
        lo, hi = -30.0, 30.0
        for _ in range(iterations):
            mid = (lo + hi) / 2
            bias.data[-1] = original + mid
            if emission_rate(model, lang, audio, audio_len, frames, device, precision) > symbols_per_frame:
                lo = mid
            else:
                hi = mid
        bias.data[-1] = original + (lo + hi) / 2
        rate = emission_rate(model, lang, audio, audio_len, frames, device, precision)
        found[lang] = {"offset": (lo + hi) / 2, "symbols_per_frame": rate}
    return found


def force_cuda_graph_decoders(model, mode: str | None = None) -> None:
    """Rebuild every language's decoding and the stacked LID-free decoding with NeMo's CUDA-graph decoder on.

    ``MultiSoftmaxRNNTModel.change_decoding_strategy`` turns ``use_cuda_graph_decoder`` off (an
    illegal memory access seen at graph replay with several language decoders); this bypasses it.
    """
    from omegaconf import open_dict

    cfg = model.cfg.decoding.copy()  # already merged with NeMo's defaults by change_decoding_strategy
    with open_dict(cfg):
        cfg.greedy.use_cuda_graph_decoder = True
    model.lang_decoding = model._language_decodings(cfg)
    stacked = model._new_stacked_decoding(cfg)
    model.__dict__["_stacked"] = (model.cfg.decoding, stacked)
    if mode is not None:
        stacked_decoding = [] if stacked is None else [stacked.decoding]
        for decoding in [*model.lang_decoding.values(), *stacked_decoding]:
            decoding.decoding.decoding_computer.force_cuda_graphs_mode(mode)


def manifest_batches(model, manifests: str | None, batch_size: int, device: str) -> dict[str, dict]:
    """``{lang: {"own": (audio (B, S), lengths (B,))}}``: the first ``batch_size`` utterances of each manifest."""
    import soundfile as sf
    import torch

    from nemo_tl.data.manifest import read_manifest

    paths = (manifests or "").split(",")
    if len(paths) != len(model.languages):
        raise SystemExit(f"--manifests: give one test manifest per language {list(model.languages)}, in that order")
    out = {}
    for lang, path in zip(model.languages, paths):
        entries = read_manifest(path)[:batch_size]
        waves = []
        for e in entries:
            wav, rate = sf.read(os.path.join(os.path.dirname(path), e["audio_filepath"]), dtype="float32")
            if rate != model.cfg.sample_rate:
                raise SystemExit(
                    f"{path}: {e['audio_filepath']} is {rate} Hz; the model takes {model.cfg.sample_rate} Hz"
                )
            waves.append(torch.from_numpy(wav))
        lengths = torch.tensor([len(w) for w in waves])
        audio = torch.zeros(len(waves), int(lengths.max()))
        for i, w in enumerate(waves):
            audio[i, : len(w)] = w
        out[lang] = {"own": (audio.to(device), lengths.to(device))}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.splitlines()[0])
    add_model_args(p)
    p.add_argument("--symbols-per-frame", type=float, default=None, help="default: chars / encoder frames")
    p.add_argument("--no-cuda-graphs", action="store_true", help="NeMo's greedy_batch decoding without CUDA graphs")
    p.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="force NeMo's CUDA-graph greedy decoders on (the model turns them off); checks the texts too",
    )
    p.add_argument(
        "--graphs-mode",
        choices=("full_graph", "no_while_loops"),
        default=None,
        help="with --cuda-graphs: NeMo's CUDA-graph mode (default: NeMo's choice, full_graph where it can)",
    )
    p.add_argument(
        "--checkpoint", default=None, help="a trained MultiSoftmaxRNNTModel .nemo (instead of random weights)"
    )
    p.add_argument("--manifests", default=None, help="with --checkpoint: one test manifest per language, LID order")
    args = p.parse_args(argv)
    finish_args(args, precisions=("fp32", "bf16"), warmup=2, steps=10)
    finish_model_args(args)

    results = Results("bench_lid_free", args)
    run_section(results, "lid_free", lambda: bench(args, results))
    results.finish()
    return results.data


def bench(args, results: Results) -> None:
    import torch

    import nemo_tl  # noqa: F401
    from nemo_tl.models.multisoftmax_rnnt import MultilingualTranscribeConfig, MultiSoftmaxRNNTModel

    device = args.device
    trained = args.checkpoint is not None
    if trained:
        model = MultiSoftmaxRNNTModel.restore_from(args.checkpoint, map_location="cpu")
    else:
        model = MultiSoftmaxRNNTModel(cfg=multilingual_cfg(args, "multisoftmax"))
    if args.no_cuda_graphs and args.cuda_graphs:
        raise SystemExit("--no-cuda-graphs and --cuda-graphs exclude each other")
    if args.graphs_mode and not args.cuda_graphs:
        raise SystemExit("--graphs-mode needs --cuda-graphs")
    if args.no_cuda_graphs:
        from omegaconf import open_dict

        decoding = model.cfg.decoding.copy()
        with open_dict(decoding):
            decoding.greedy.use_cuda_graph_decoder = False
        model.change_decoding_strategy(decoding, verbose=False)
    model.to(device)
    model.eval()
    if trained:
        batches = manifest_batches(model, args.manifests, args.batch_size, device)
    else:
        vocabularies = synthetic_vocabularies({lang: n for lang, (n, _) in LANGUAGES.items()})
        batches = language_batches(args, vocabularies)
    with torch.inference_mode():
        lengths = torch.cat([model.encode(*b["own"][:2])[1] for b in batches.values()])
        frames = float(lengths.float().mean())  # encoder frames per utterance
    spf = args.symbols_per_frame or args.chars / frames
    tau, s_th = float(model.cfg.lid_free.min_frames), float(model.cfg.lid_free.threshold)

    def decode(lang_batch, languages, min_frames, precision):
        audio, audio_len = lang_batch[0], lang_batch[1]
        trcfg = MultilingualTranscribeConfig(batch_size=audio.shape[0], return_hypotheses=True)
        trcfg.languages, trcfg.min_frames, trcfg.threshold = languages, min_frames, None
        with torch.inference_mode(), autocast(device, precision):
            outputs = model._transcribe_forward((audio, audio_len), trcfg)
            return model._transcribe_output_processing(outputs, trcfg)

    modes = {
        "known language": lambda lang: (lang, None),
        "LID-free, no early stopping": lambda lang: (None, math.inf),
        f"LID-free, early stopping (τ={tau:g}, s_th={s_th:g})": lambda lang: (None, None),
    }
    out = {
        "setup": {
            "symbols_per_frame_target": None if trained else spf,
            "tau": tau,
            "s_th": s_th,
            "checkpoint": args.checkpoint,
            "languages": list(model.languages),
            "encoder_frames": frames,
        }
    }
    rows = []
    for precision in args.precisions:
        calibration = None if trained else calibrate_blank(model, batches, frames, spf, device, precision)
        mismatches = None
        if args.cuda_graphs:  # texts without graphs first, then the same decodings with them
            reference = {
                (mode, lang): [h.text for h in decode(batches[lang]["own"], *spec(lang), precision)]
                for mode, spec in modes.items()
                for lang in model.languages
            }
            saved = model.lang_decoding, model.__dict__.get("_stacked")
            force_cuda_graph_decoders(model, args.graphs_mode)
            mismatches = {
                f"{mode} [{lang}]": sum(
                    a != h.text for a, h in zip(texts, decode(batches[lang]["own"], *modes[mode](lang), precision))
                )
                for (mode, lang), texts in reference.items()
            }
            print(f"{precision}: CUDA-graph decoding vs without, differing texts: {mismatches}", flush=True)
        variants = []
        for mode, spec in modes.items():
            for lang in model.languages:
                languages, min_frames = spec(lang)
                b = batches[lang]["own"]
                variants.append(
                    Variant(f"{mode} [{lang}]", lambda b=b, a=languages, m=min_frames, q=precision: decode(b, a, m, q))
                )
        r = measure(variants, device, warmup=args.warmup, steps=args.steps, memory=False)
        per_mode = {}
        for mode, spec in modes.items():
            total = sum(r[f"{mode} [{lang}]"]["median_ms"] for lang in model.languages)
            hyps = []
            for lang in model.languages:
                languages, min_frames = spec(lang)
                hyps += [(lang, h) for h in decode(batches[lang]["own"], languages, min_frames, precision)]
            emitted = [len(h.y_sequence) / frames for _, h in hyps]
            per_mode[mode] = {
                "total_ms": total,
                "per_language_ms": {lang: r[f"{mode} [{lang}]"]["median_ms"] for lang in model.languages},
                "t_avg": statistics.mean(float(h.t_avg) for _, h in hyps),
                "symbols_per_frame": statistics.mean(emitted),
                "lid_accuracy" + ("" if trained else "_untrained"): statistics.mean(
                    float(h.lang == lang) for lang, h in hyps
                ),
            }
        known = per_mode["known language"]["total_ms"]
        for mode, m in per_mode.items():
            m["ratio"] = m["total_ms"] / known
            goal = "" if "no early" not in mode else f"≤ {GOAL_RATIO}: {verdict(m['ratio'], GOAL_RATIO)}"
            rows.append(
                [
                    precision,
                    mode,
                    fmt(m["total_ms"]),
                    f"{m['ratio']:.2f}",
                    goal,
                    f"{m['t_avg']:.2f}",
                    f"{m['symbols_per_frame']:.2f}",
                ]
            )
        out[precision] = {
            "modes": per_mode,
            "by_variant": r,
            "blank_calibration": calibration,
            "cuda_graphs": bool(args.cuda_graphs),
            "graph_text_mismatches": mismatches,
        }
        if args.cuda_graphs:
            model.lang_decoding, model.__dict__["_stacked"] = saved
        results.add("lid_free", out)
    what = f"trained model {args.checkpoint}" if trained else "random weights, calibrated blank"
    print(
        f"\n### LID-free vs known-language decoding, {len(model.languages)} languages x batch {args.batch_size} "
        f"({what}; {args.steps} steps)\n"
    )
    print(
        markdown_table(
            [
                "precision",
                "decoding",
                f"ms ({len(model.languages)} batches)",
                "vs known",
                "goal",
                "T_avg",
                "labels/frame",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
