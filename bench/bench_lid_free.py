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


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.splitlines()[0])
    add_model_args(p)
    p.add_argument("--symbols-per-frame", type=float, default=None, help="default: chars / encoder frames")
    p.add_argument("--no-cuda-graphs", action="store_true", help="NeMo's greedy_batch decoding without CUDA graphs")
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
    model = MultiSoftmaxRNNTModel(cfg=multilingual_cfg(args, "multisoftmax"))
    if args.no_cuda_graphs:
        from omegaconf import open_dict

        decoding = model.cfg.decoding.copy()
        with open_dict(decoding):
            decoding.greedy.use_cuda_graph_decoder = False
        model.change_decoding_strategy(decoding, verbose=False)
    model.to(device)
    model.eval()
    vocabularies = synthetic_vocabularies({lang: n for lang, (n, _) in LANGUAGES.items()})
    batches = language_batches(args, vocabularies)
    with torch.inference_mode():
        frames = int(model.encode(*batches[model.languages[0]]["own"][:2])[1][0])  # encoder frames per utterance
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
    out = {"setup": {"symbols_per_frame_target": spf, "tau": tau, "s_th": s_th}}
    rows = []
    for precision in args.precisions:
        calibration = calibrate_blank(model, batches, frames, spf, device, precision)
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
                "lid_accuracy_untrained": statistics.mean(float(h.lang == lang) for lang, h in hyps),
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
        out[precision] = {"modes": per_mode, "by_variant": r, "blank_calibration": calibration}
        results.add("lid_free", out)
    print(f"\n### LID-free vs known-language decoding, 4 languages x batch {args.batch_size} ({args.steps} steps)\n")
    print(
        markdown_table(["precision", "decoding", "ms (4 batches)", "vs known", "goal", "T_avg", "labels/frame"], rows)
    )


if __name__ == "__main__":
    main()
