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

Decoding runs as the model runs it: NeMo's CUDA-graph greedy decoder in ``no_while_loops`` mode
(``model.cuda_graphs_mode``). ``--graphs no_while_loops off full_graph`` times several settings in
one run, each checked first against the texts decoded without graphs; ``full_graph`` crashes as
soon as two decoders replay in turn (NeMo, not nemo_tl: bench/repro_cuda_graphs.py).

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
    profile_call,
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


GRAPH_SETTINGS = ("no_while_loops", "off", "full_graph")


def set_graphs(model, setting: str) -> None:
    """Every decoder of the model (each language's and the batched LID-free one) with NeMo's CUDA graphs
    in ``setting``: ``no_while_loops`` (the model's default), ``off``, or ``full_graph`` (crashes once two
    label-looping decoders replay in turn, see bench/repro_cuda_graphs.py). A frame-looping decoder
    has only NeMo's full graph (conditional nodes), which it gets for any setting but ``off``."""
    from nemo_tl.compat import force_cuda_graphs_mode

    model._stacked_decoding()  # build the batched decoder now, so that it is switched too
    if setting == "off":
        model.disable_cuda_graphs()
        return
    for decoding in model._decodings():
        if not force_cuda_graphs_mode(decoding.decoding, setting):  # frame looping: NeMo's one graph
            decoding.decoding.maybe_enable_cuda_graphs()


def set_loops(model, loop: str, lid_free_loop: str) -> None:
    """NeMo's greedy_batch algorithm (``decoding.greedy.loop_labels``) for every decoder (``loop``),
    then for the batched LID-free decoder alone (``lid_free_loop``): ``labels`` or ``frames``."""
    from omegaconf import OmegaConf, open_dict

    from nemo_tl.multilingual.lid_free import build_stacked_decoding

    def with_loop(cfg, which):
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        with open_dict(cfg):
            cfg.greedy.loop_labels = which == "labels"
        return cfg

    if loop != "labels":
        model.change_decoding_strategy(with_loop(model.cfg.decoding, loop), verbose=False)
    if lid_free_loop != loop:
        stacked = build_stacked_decoding(
            model.decoder, model.joint, model.vocabularies, with_loop(model.cfg.decoding, lid_free_loop),
            model.multilingual.cuda_graphs_mode,
        )
        model.__dict__["_stacked"] = (model.cfg.decoding, stacked)


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
    p.add_argument(
        "--graphs",
        nargs="+",
        choices=GRAPH_SETTINGS,
        default=["no_while_loops"],
        help="NeMo's CUDA-graph decoder settings to time, each a table block (default: the model's, no_while_loops)",
    )
    p.add_argument(
        "--loop",
        choices=("labels", "frames"),
        default="labels",
        help="NeMo's greedy_batch algorithm for every decoder (decoding.greedy.loop_labels; default labels)",
    )
    p.add_argument(
        "--lid-free-loop",
        choices=("labels", "frames"),
        default=None,
        help="the algorithm of the batched LID-free decoder alone (default: --loop's)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="also torch.profiler one known-language and one LID-free decoding per language (CUDA only)",
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
    model.to(device)
    model.eval()
    args.lid_free_loop = args.lid_free_loop or args.loop
    set_loops(model, args.loop, args.lid_free_loop)
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
            "loop": args.loop,
            "lid_free_loop": args.lid_free_loop,
        }
    }
    rows = []
    def measure_setting(precision: str, reference: dict | None) -> tuple[dict, dict, dict | None]:
        """Time the three modes interleaved in the current graph setting; texts compared with ``reference``."""
        mismatches = None
        if reference is not None:  # also the first (capturing) pass of the graphs
            mismatches = {
                f"{mode} [{lang}]": sum(
                    a != h.text for a, h in zip(texts, decode(batches[lang]["own"], *modes[mode](lang), precision))
                )
                for (mode, lang), texts in reference.items()
            }
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
            hyps = []
            for lang in model.languages:
                languages, min_frames = spec(lang)
                hyps += [(lang, h) for h in decode(batches[lang]["own"], languages, min_frames, precision)]
            per_mode[mode] = {
                "total_ms": sum(r[f"{mode} [{lang}]"]["median_ms"] for lang in model.languages),
                "per_language_ms": {lang: r[f"{mode} [{lang}]"]["median_ms"] for lang in model.languages},
                "t_avg": statistics.mean(float(h.t_avg) for _, h in hyps),
                "symbols_per_frame": statistics.mean(len(h.y_sequence) / frames for _, h in hyps),
                "lid_accuracy" + ("" if trained else "_untrained"): statistics.mean(
                    float(h.lang == lang) for lang, h in hyps
                ),
            }
        known = per_mode["known language"]["total_ms"]
        for m in per_mode.values():
            m["ratio"] = m["total_ms"] / known
        return per_mode, r, mismatches

    profile_rows = []
    for precision in args.precisions:
        set_graphs(model, args.graphs[0])
        calibration = None if trained else calibrate_blank(model, batches, frames, spf, device, precision)
        reference = None
        if any(setting != "off" for setting in args.graphs):  # the texts without graphs, to check those with
            set_graphs(model, "off")
            reference = {
                (mode, lang): [h.text for h in decode(batches[lang]["own"], *spec(lang), precision)]
                for mode, spec in modes.items()
                for lang in model.languages
            }
        out[precision] = {"blank_calibration": calibration}
        for setting in args.graphs:
            set_graphs(model, setting)
            per_mode, r, mismatches = measure_setting(precision, None if setting == "off" else reference)
            if mismatches is not None:
                print(f"{precision}, graphs {setting}: texts differing from decoding without graphs: "
                      f"{sum(mismatches.values())}", flush=True)
            for mode, m in per_mode.items():
                goal = "" if "no early" not in mode else f"≤ {GOAL_RATIO}: {verdict(m['ratio'], GOAL_RATIO)}"
                rows.append(
                    [
                        precision,
                        setting,
                        mode,
                        fmt(m["total_ms"]),
                        f"{m['ratio']:.2f}",
                        goal,
                        f"{m['t_avg']:.2f}",
                        f"{m['symbols_per_frame']:.2f}",
                    ]
                )
            out[precision][setting] = {"modes": per_mode, "by_variant": r, "graph_text_mismatches": mismatches}
            if args.profile and device.startswith("cuda"):
                out[precision][setting]["profile"] = profiled = {}
                for mode in list(modes)[:2]:  # known language, LID-free without early stopping
                    per_lang = []
                    for lang in model.languages:
                        b, spec = batches[lang]["own"], modes[mode](lang)
                        per_lang.append(profile_call(lambda b=b, a=spec, q=precision: decode(b, *a, q), device))
                    profiled[mode] = {k: sum(x[k] for x in per_lang) for k in per_lang[0]}
                    profile_rows.append([precision, setting, mode, *(fmt(v) for v in profiled[mode].values())])
            results.add("lid_free", out)
    what = f"trained model {args.checkpoint}" if trained else "random weights, calibrated blank"
    what += f"; NeMo greedy_batch looping over {args.loop}, LID-free decoder over {args.lid_free_loop}"
    print(
        f"\n### LID-free vs known-language decoding, {len(model.languages)} languages x batch {args.batch_size} "
        f"({what}; {args.steps} steps)\n"
    )
    print(
        markdown_table(
            [
                "precision",
                "CUDA graphs",
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
    if profile_rows:
        print(f"\n### torch.profiler: one decoding of each of the {len(model.languages)} batches, summed\n")
        print(
            markdown_table(
                ["precision", "CUDA graphs", "decoding", "wall ms", "kernel ms", "graph replays", "item() x2",
                 "kernel launches"],
                profile_rows,
            )
        )


if __name__ == "__main__":
    main()
