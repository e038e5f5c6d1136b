"""MultiSoftmaxRNNTModel training step vs the vanilla union-vocabulary EncDecRNNTModel (Joshi et al. 2021).

    python bench/bench_multisoftmax.py [--device cuda] [--out multisoftmax.json] [--smoke] [--fused N]

Four languages with the grapheme vocabulary sizes of Joshi et al. Table 1 (En-IN 133, Hi-IN 59,
Ta-IN 97, Gu-IN 123 labels; disjoint synthetic characters, as the paper's graphemes are
distinct), so the union softmax has 412 labels + blank = 413 outputs and language l's softmax
V_l + 1. Every model has the same preprocessor (80 mel), encoder and prediction network:

- encoder: FastConformer-like ``ConformerEncoder``, 16 layers, d_model 256, 4 heads, 8x
  depthwise-striding subsampling (10 s → 125 frames), conv kernel 9 (``--encoder conf`` takes
  conf/multisoftmax_rnnt.yaml's ConformerEncoder, with LayerNorm convolutions, at the same sizes);
- prediction network: 1-layer LSTM, 640 units; joint hidden 640;
- or ``--encoder lstm``, the paper's own shapes (§5): 6 unidirectional LSTM layers of 1024 units
  (projected to 640) over stacked features at a 30 ms shift (10 s → 334 frames), a 2-layer
  prediction LSTM of 1024 units, joint hidden 1024. With 334 frames the joint (B × T × U × V) is
  the largest tensor of the step, as in the paper's setting; with the FastConformer's 125 frames
  the encoder is;
- loss: NeMo's ``warprnnt_numba`` (its CUDA kernel on GPU), bf16-mixed autocast.

A batch holds one language (``train_ds.mixing.per_batch``): batch 16 × 10 s of random audio with
150-character transcripts. Steps are interleaved over models and languages; a model's step time
is the mean over languages weighted by the training hours of Table 1 (the languages' batch
probabilities), its peak memory the largest over languages. Compared (all driven through their
``training_step``, no Trainer):

- NeMo EncDecRNNTModel, union vocabulary (the baseline: ratios are against it);
- nemo_tl MultiSoftmaxRNNTModel ``architecture: multisoftmax`` (with its LID head + CE): goals
  ≤ 0.8x step time and ≤ 0.55x peak memory;
- nemo_tl ``architecture: vanilla`` (union softmax + LID head: nemo_tl's own overhead);
- NeMo EncDecRNNTModel per language with that language's vocabulary (the lower bound);
then the same with NeMo's fused joint (``fuse_loss_wer: true``, ``fused_batch_size``).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    NOVOGRAD,
    ROOT,
    Results,
    attach_step_trainer,
    base_parser,
    finish_args,
    fmt,
    free,
    markdown_table,
    measure,
    random_batch,
    run_section,
    setup_optimizer,
    training_step_variant,
    verdict,
    working,
)

# Joshi et al. 2021, Table 1: grapheme vocabulary size and training hours per language.
LANGUAGES = {"en": (133, 10077), "hi": (59, 10591), "ta": (97, 925), "gu": (123, 1205)}
GOAL_TIME, GOAL_MEMORY = 0.8, 0.55


def synthetic_vocabularies(sizes: dict[str, int]) -> dict[str, list[str]]:
    """Disjoint single-character label sets of the given sizes (CJK code points, 1000 apart per language)."""
    return {lang: [chr(0x4E00 + 1000 * i + j) for j in range(n)] for i, (lang, n) in enumerate(sizes.items())}


def fastconformer(d_model: int, n_layers: int, n_heads: int, feat_in: int = 80) -> dict:
    """A FastConformer-like encoder config: 8x depthwise-striding subsampling, rel-pos attention."""
    return {
        "_target_": "nemo.collections.asr.modules.ConformerEncoder",
        "feat_in": feat_in,
        "n_layers": n_layers,
        "d_model": d_model,
        "subsampling": "dw_striding",
        "subsampling_factor": 8,
        "subsampling_conv_channels": d_model,
        "ff_expansion_factor": 4,
        "self_attention_model": "rel_pos",
        "n_heads": n_heads,
        "att_context_size": [-1, -1],
        "xscaling": True,
        "untie_biases": True,
        "pos_emb_max_len": 5000,
        "conv_kernel_size": 9,
        "conv_norm_type": "batch_norm",
        "dropout": 0.1,
        "dropout_pre_encoder": 0.1,
        "dropout_emb": 0.0,
        "dropout_att": 0.1,
    }


def lstm_encoder(d_model: int, hidden: int, n_layers: int, feat_in: int = 80) -> dict:
    """Joshi et al. 2021 §5: unidirectional LSTM layers over stacked features at a 30 ms frame shift.

    NeMo's ``RNNEncoder``: 3 frames of 10 ms stacked (3x subsampling, 10 s → 334 frames), then
    ``n_layers`` LSTMs of ``hidden`` units projected to ``d_model``.
    """
    return {
        "_target_": "nemo.collections.asr.modules.RNNEncoder",
        "feat_in": feat_in,
        "n_layers": n_layers,
        "d_model": hidden,
        "proj_size": d_model,
        "rnn_type": "lstm",
        "bidirectional": False,
        "subsampling": "stacking",
        "subsampling_factor": 3,
        "dropout": 0.1,
    }


def multilingual_cfg(args, architecture: str = "multisoftmax", fused: bool = False):
    """conf/multisoftmax_rnnt.yaml with the benchmark's languages, encoder and sizes (a ``model`` DictConfig)."""
    from omegaconf import OmegaConf, open_dict

    cfg = OmegaConf.load(os.path.join(ROOT, "conf", "multisoftmax_rnnt.yaml"))
    cfg = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))
    sizes = {lang: n for lang, (n, _) in LANGUAGES.items()}
    with open_dict(cfg):
        for key in ("train_ds", "validation_ds", "test_ds"):
            cfg.pop(key, None)
        cfg.languages = {lang: {"labels": labels} for lang, labels in synthetic_vocabularies(sizes).items()}
        cfg.architecture = architecture
        cfg.model_defaults = {
            "enc_hidden": args.d_model,
            "pred_hidden": args.pred_hidden,
            "joint_hidden": args.pred_hidden,
        }
        cfg.decoder.prednet.pred_hidden = args.pred_hidden
        cfg.joint.jointnet.joint_hidden = args.pred_hidden
        if args.encoder == "fastconformer":
            cfg.encoder = fastconformer(args.d_model, args.layers, args.heads, cfg.preprocessor.features)
        elif args.encoder == "lstm":
            cfg.encoder = lstm_encoder(args.d_model, args.lstm_hidden, args.layers, cfg.preprocessor.features)
            cfg.decoder.prednet.pred_rnn_layers = 2
        else:
            cfg.encoder.d_model = cfg.encoder.subsampling_conv_channels = args.d_model
            cfg.encoder.n_layers = args.layers
        cfg.joint.fuse_loss_wer = fused
        cfg.joint.fused_batch_size = args.fused_batch_size if fused else None
    return cfg


def nemo_rnnt_cfg(args, labels: list[str] | None = None, fused: bool = False):
    """A plain NeMo EncDecRNNTModel config with the same parts: union labels (vanilla) or ``labels``."""
    from omegaconf import OmegaConf, open_dict

    from nemo_tl.multilingual.config import MULTILINGUAL_KEYS, prepare_multilingual_config

    cfg = prepare_multilingual_config(multilingual_cfg(args, "vanilla", fused))
    with open_dict(cfg):
        for key in MULTILINGUAL_KEYS:
            cfg.pop(key, None)
        cfg.target = "nemo.collections.asr.models.rnnt_models.EncDecRNNTModel"
        if labels is not None:
            cfg.labels = list(labels)
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))


def add_model_args(p) -> None:
    p.add_argument("--batch-size", type=int, default=None, help="default 16 (smoke: 2)")
    p.add_argument("--seconds", type=float, default=None, help="default 10 (smoke: 1.5)")
    p.add_argument("--chars", type=int, default=None, help="transcript length; default 15 per second")
    p.add_argument(
        "--encoder",
        choices=("fastconformer", "conf", "lstm"),
        default="fastconformer",
        help="lstm: Joshi et al.'s encoder (unidirectional LSTM, 30 ms frames) and 2-layer prediction LSTM",
    )
    p.add_argument("--layers", type=int, default=None, help="encoder layers; default 16, lstm 6 (smoke: 2)")
    p.add_argument("--d-model", type=int, default=None, help="encoder output; default 256, lstm 640 (smoke: 64)")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--lstm-hidden", type=int, default=None, help="lstm: LSTM units per layer; default 1024 (smoke: 96)")
    p.add_argument(
        "--pred-hidden", type=int, default=None, help="prediction and joint width; default 640, lstm 1024 (smoke: 64)"
    )


def finish_model_args(args) -> None:
    lstm = args.encoder == "lstm"
    args.batch_size = args.batch_size or (2 if args.smoke else 16)
    args.seconds = args.seconds or (1.5 if args.smoke else 10.0)
    args.chars = args.chars or int(15 * args.seconds)
    args.layers = args.layers or (2 if args.smoke else 6 if lstm else 16)
    args.d_model = args.d_model or (64 if args.smoke else 640 if lstm else 256)
    args.lstm_hidden = args.lstm_hidden or (96 if args.smoke else 1024)
    args.pred_hidden = args.pred_hidden or (64 if args.smoke else 1024 if lstm else 640)


def language_batches(args, vocabularies: dict[str, list[str]]):
    """Per language: (own-id batch + lang ids, union-id batch + lang ids); the same audio for both."""
    import torch

    offsets, union = {}, 0
    for lang, labels in vocabularies.items():
        offsets[lang] = union
        union += len(labels)
    out = {}
    for i, (lang, labels) in enumerate(vocabularies.items()):
        audio, audio_len, tokens, tokens_len = random_batch(
            args.batch_size, args.seconds, args.chars, len(labels), args.device, seed=args.seed + i
        )
        lang_ids = torch.full((args.batch_size,), i, dtype=torch.long, device=args.device)
        out[lang] = {
            "own": (audio, audio_len, tokens, tokens_len, lang_ids),
            "union": (audio, audio_len, tokens + offsets[lang], tokens_len, lang_ids),
        }
    return out


def prepare(model, device):
    model.to(device)
    model.train()
    optimizer = setup_optimizer(model, NOVOGRAD)
    attach_step_trainer(model)
    return optimizer


def compare(args, results: Results, section: str, fused: bool, precision: str) -> None:
    """Build the models of one table, measure them interleaved over languages, print and record."""
    from nemo.collections.asr.models import EncDecRNNTModel

    from nemo_tl.models.multisoftmax_rnnt import MultiSoftmaxRNNTModel

    sizes = {lang: n for lang, (n, _) in LANGUAGES.items()}
    vocabularies = synthetic_vocabularies(sizes)
    hours = {lang: h for lang, (_, h) in LANGUAGES.items()}
    batches = language_batches(args, vocabularies)
    models, notes = {}, {}
    models["NeMo vanilla (union 413)"] = (EncDecRNNTModel(cfg=nemo_rnnt_cfg(args, fused=fused)), "union", 4)
    for arch, key in (("multisoftmax", "own"), ("vanilla", "union")):
        name = f"nemo_tl {arch}" + (" (LID head)" if arch == "multisoftmax" else " (union 413, LID head)")
        try:
            models[name] = (MultiSoftmaxRNNTModel(cfg=multilingual_cfg(args, arch, fused)), key, 5)
        except Exception as e:  # e.g. a fused joint the class does not support
            notes[name] = f"not measured: {type(e).__name__}: {e}".replace("\n", " ")
            print(f"[{section}] {name}: {notes[name]}")
    mono = {lang: EncDecRNNTModel(cfg=nemo_rnnt_cfg(args, labels, fused)) for lang, labels in vocabularies.items()}

    variants, where = [], {}
    for name, (model, key, width) in models.items():
        optimizer = prepare(model, args.device)
        for lang in vocabularies:
            v = training_step_variant(
                f"{name} [{lang}]", model, optimizer, batches[lang][key][:width], args.device, precision
            )
            variants.append(v)
            where[v.name] = (name, lang)
    for lang, model in mono.items():
        optimizer = prepare(model, args.device)
        name = "NeMo monolingual (own vocabulary)"
        v = training_step_variant(
            f"{name} [{lang}]", model, optimizer, batches[lang]["own"][:4], args.device, precision
        )
        variants.append(v)
        where[v.name] = (name, lang)

    variants, failed = working(variants)
    for vname, error in failed.items():
        name, _ = where.pop(vname)
        notes[name] = f"not measured: {error}".replace("\n", " ")
    r = measure(variants, args.device, warmup=args.warmup, steps=args.steps)
    total_hours = sum(hours.values())
    summary: dict[str, dict] = {}
    for vname, (name, lang) in where.items():
        if name in notes:
            continue
        s = summary.setdefault(name, {"per_language": {}, "mean_ms": 0.0, "peak_gib": None})
        s["per_language"][lang] = r[vname]
        s["mean_ms"] += r[vname]["median_ms"] * hours[lang] / total_hours
        peak = r[vname].get("peak_gib")
        if peak is not None:
            s["peak_gib"] = max(peak, s["peak_gib"] or 0.0)
    base = summary["NeMo vanilla (union 413)"]
    for s in summary.values():
        s["time_ratio"] = s["mean_ms"] / base["mean_ms"]
        s["memory_ratio"] = None if s["peak_gib"] is None else s["peak_gib"] / base["peak_gib"]
    ms_name = "nemo_tl multisoftmax (LID head)"
    results.add(section, {"models": summary, "notes": notes, "goals": {"time": GOAL_TIME, "memory": GOAL_MEMORY}})

    rows = []
    for name, s in summary.items():
        goal = name == ms_name
        rows.append(
            [
                name,
                fmt(s["mean_ms"]),
                f"{s['time_ratio']:.2f}" + (f" ({verdict(s['time_ratio'], GOAL_TIME)})" if goal else ""),
                fmt(s["peak_gib"], ".2f"),
                fmt(s["memory_ratio"], ".2f")
                + (f" ({verdict(s['memory_ratio'], GOAL_MEMORY)})" if goal and s["memory_ratio"] is not None else ""),
                " / ".join(fmt(s["per_language"][lang]["median_ms"]) for lang in vocabularies),
            ]
        )
    for name, note in notes.items():
        rows.append([name, note, "", "", "", ""])
    title = f"fused joint (fuse_loss_wer, fused_batch_size={args.fused_batch_size})" if fused else "plain joint"
    print(f"\n### Multi-softmax vs vanilla RNN-T, {precision}, {title} ({args.steps} interleaved steps)\n")
    print(
        markdown_table(
            [
                "model",
                "step ms (hours-weighted)",
                f"vs vanilla (≤ {GOAL_TIME})",
                "peak GiB",
                f"vs vanilla (≤ {GOAL_MEMORY})",
                "ms " + " / ".join(vocabularies),
            ],
            rows,
        )
    )


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.splitlines()[0])
    add_model_args(p)
    p.add_argument(
        "--fused",
        "--fused-batch-size",
        dest="fused_batch_size",
        type=int,
        default=4,
        metavar="N",
        help="fused-joint table: every model with joint.fuse_loss_wer true and fused_batch_size N (default 4)",
    )
    p.add_argument("--no-fused", action="store_true", help="skip the fused-joint table")
    args = p.parse_args(argv)
    finish_args(args, precisions=("bf16",), warmup=2, steps=10)
    finish_model_args(args)

    import nemo_tl  # noqa: F401

    results = Results("bench_multisoftmax", args)
    results.data["setup"] = {
        "languages": {lang: {"labels": n, "hours": h} for lang, (n, h) in LANGUAGES.items()},
        "encoder": args.encoder,
        "layers": args.layers,
        "d_model": args.d_model,
        "lstm_hidden": args.lstm_hidden if args.encoder == "lstm" else None,
        "pred_hidden": args.pred_hidden,
        "pred_rnn_layers": 2 if args.encoder == "lstm" else 1,
        "batch": args.batch_size,
        "seconds": args.seconds,
        "chars": args.chars,
        "loss": "warprnnt_numba",
    }
    for precision in args.precisions:
        for fused in (False, True)[: 1 if args.no_fused else 2]:
            section = f"{'fused' if fused else 'plain'}_joint_{precision}"
            run_section(results, section, lambda s=section, f=fused, q=precision: compare(args, results, s, f, q))
            free()
    results.finish()
    return results.data


if __name__ == "__main__":
    main()
