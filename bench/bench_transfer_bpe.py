"""TransferCTCBPEModel / TransferRNNTBPEModel training step vs NeMo's classes, FastConformer large shape, and freezing.

    python bench/bench_transfer_bpe.py [--heads ctc rnnt] [--device cuda] [--out transfer_bpe.json] [--smoke]

The models are FastConformer-large-shaped (109 M parameters with the CTC head, the shape NeMo quotes as
115 M for stt_en_fastconformer_ctc_large: 80 mel features,
dw_striding subsampling x8 with 256 channels, 17 layers, d_model 512, 8 heads, feed-forward x4, kernel 9,
BatchNorm) with a 1024-piece SentencePiece BPE tokenizer trained at run time on random words (random
weights). The RNN-T head is NeMo's FastConformer transducer head (prediction network 640, joint 640,
fused joint + loss with fused_batch_size 4, the numba RNN-T loss). The transfer model takes the NeMo
model as its base with the same tokenizer (``vocabulary: same``). Batch 16 of 10 s random audio, 4
random tokens per second. One training step = the model's ``on_train_batch_start`` hook, NeMo's
``training_step`` (preprocessor, SpecAugment, encoder, head, loss) under autocast for bf16-mixed, backward
through the model's ``backward`` hook, AdamW step (NeMo's FastConformer recipe: betas 0.9/0.98, weight decay
1e-3; the model's own ``setup_optimization``, so nemo_tl's parameter groups without frozen parameters
are used). No Trainer: ``self.log`` is a no-op and the training WER is not computed, on both sides.

Per head:
1. Head to head, nothing frozen, fp32 and bf16-mixed: goal ratio ≤ 1.02 (with a second NeMo model as control).
2. Freezing the k lowest of the 18 encoder blocks ([pre_encode, *17 layers]): step time and peak memory
   per k (should fall monotonically), with NeMo's ``model.encoder.freeze()`` as a reference.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
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
)

GOAL_RATIO = 1.02
ADAMW = {"name": "adamw", "lr": 1e-4, "betas": [0.9, 0.98], "weight_decay": 1e-3}
HEADS = ("ctc", "rnnt")


def make_tokenizer(directory: str, vocab_size: int, seed: int = 0) -> str:
    """A SentencePiece BPE tokenizer (NeMo's ``create_spt_model``) trained on random words; its directory."""
    from nemo.collections.common.tokenizers.sentencepiece_tokenizer import create_spt_model

    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choice(letters[: rng.randint(8, 26)]) for _ in range(rng.randint(2, 9))) for _ in range(4000)]
    text = os.path.join(directory, "text.txt")
    with open(text, "w", encoding="utf-8") as f:
        for _ in range(3000):
            f.write(" ".join(rng.choice(words) for _ in range(12)) + "\n")
    out = os.path.join(directory, "tokenizer")
    create_spt_model(text, vocab_size, sample_size=-1, do_lower_case=False, tokenizer_type="bpe", output_dir=out)
    return out


def fastconformer_cfg(head: str, tokenizer_dir: str, smoke: bool):
    """A NeMo FastConformer model config (CTC or RNN-T head) of the large shape (smoke: 2 tiny layers)."""
    from omegaconf import OmegaConf

    d, layers, heads, ch, feats = (32, 2, 2, 16, 16) if smoke else (512, 17, 8, 256, 80)
    pred = 32 if smoke else 640
    cfg = {
        "sample_rate": 16000,
        "tokenizer": {"dir": tokenizer_dir, "type": "bpe"},
        "preprocessor": {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
                         "sample_rate": 16000, "normalize": "per_feature", "window_size": 0.025,
                         "window_stride": 0.01, "window": "hann", "features": feats, "n_fft": 512,
                         "frame_splicing": 1, "dither": 1e-5, "pad_to": 0},
        "spec_augment": {"_target_": "nemo.collections.asr.modules.SpectrogramAugmentation",
                         "freq_masks": 2, "time_masks": 10, "freq_width": 27 if not smoke else 4, "time_width": 0.05},
        "encoder": {"_target_": "nemo.collections.asr.modules.ConformerEncoder", "feat_in": feats, "feat_out": -1,
                    "n_layers": layers, "d_model": d, "subsampling": "dw_striding", "subsampling_factor": 8,
                    "subsampling_conv_channels": ch, "causal_downsampling": False, "ff_expansion_factor": 4,
                    "self_attention_model": "rel_pos", "n_heads": heads, "att_context_size": [-1, -1],
                    "xscaling": True, "untie_biases": True, "pos_emb_max_len": 5000, "conv_kernel_size": 9,
                    "conv_norm_type": "batch_norm", "dropout": 0.1, "dropout_pre_encoder": 0.1,
                    "dropout_emb": 0.0, "dropout_att": 0.1},
    }
    if head == "ctc":
        cfg["decoder"] = {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": d,
                          "num_classes": -1, "vocabulary": []}
    else:
        cfg.update({
            "model_defaults": {"enc_hidden": d, "pred_hidden": pred, "joint_hidden": pred},
            "decoder": {"_target_": "nemo.collections.asr.modules.RNNTDecoder", "normalization_mode": None,
                        "random_state_sampling": False, "blank_as_pad": True,
                        "prednet": {"pred_hidden": pred, "pred_rnn_layers": 1, "t_max": None, "dropout": 0.2}},
            "joint": {"_target_": "nemo.collections.asr.modules.RNNTJoint", "log_softmax": None,
                      "preserve_memory": False, "fuse_loss_wer": True, "fused_batch_size": 4,
                      "jointnet": {"joint_hidden": pred, "activation": "relu", "dropout": 0.2,
                                   "encoder_hidden": d, "pred_hidden": pred}},
            "decoding": {"strategy": "greedy_batch", "greedy": {"max_symbols": 10}},
            "loss": {"loss_name": "default", "warprnnt_numba_kwargs": {"fastemit_lambda": 0.0}},
        })
    return OmegaConf.create(cfg)


def variant_name(key: str, n_blocks: int, head: str) -> str:
    nemo = "EncDecCTCModelBPE" if head == "ctc" else "EncDecRNNTBPEModel"
    return {
        "nemo": f"NeMo {nemo}",
        "nemo_freeze": "NeMo, encoder.freeze()",
        "nemo_control": f"NeMo {nemo}, second copy (control)",
    }.get(key, f"nemo_tl, k={key[1:]} of {n_blocks}")


def build_models(head: str, args, tokenizer_dir: str):
    """NeMo baseline, its control copy, NeMo with the encoder frozen, and one transfer model per k."""
    from nemo.collections.asr.models import EncDecCTCModelBPE, EncDecRNNTBPEModel

    import nemo_tl  # noqa: F401
    from nemo_tl.models import TransferCTCBPEModel, TransferRNNTBPEModel

    nemo_cls, tl_cls = (EncDecCTCModelBPE, TransferCTCBPEModel) if head == "ctc" else (
        EncDecRNNTBPEModel, TransferRNNTBPEModel)
    cfg = fastconformer_cfg(head, tokenizer_dir, args.smoke)
    nemo = nemo_cls(cfg=cfg)
    models = {"nemo": nemo}
    for k in args.ks:
        models[f"k{k}"] = tl_cls.from_base(nemo, tokenizer_dir=tokenizer_dir, vocabulary="same",
                                           freeze_encoder_blocks=k, cfg={"optim": ADAMW})
    models["nemo_control"] = nemo_cls(cfg=cfg)
    models["nemo_control"].load_state_dict(nemo.state_dict())
    models["nemo_freeze"] = nemo_cls(cfg=cfg)
    optimizers = {}
    for name, model in models.items():
        model.to(args.device)
        model.train()
        if name == "nemo_freeze":
            model.encoder.freeze()
        optimizers[name] = setup_optimizer(model, ADAMW)
        attach_step_trainer(model)
    n_blocks = 1 + len(nemo.encoder.layers)
    return models, optimizers, n_blocks


def run_head(head: str, args, results: Results, tokenizer_dir: str) -> None:
    models, optimizers, n_blocks = build_models(head, args, tokenizer_dir)
    ks = [k for k in args.ks if k <= n_blocks]
    vocab = models["nemo"].tokenizer.vocab_size
    batch = random_batch(args.batch_size, args.seconds, args.tokens, vocab, args.device, seed=args.seed)
    results.data.setdefault("setup", {})[head] = {
        "parameters_m": round(sum(q.numel() for q in models["nemo"].parameters()) / 1e6, 2),
        "encoder_blocks": n_blocks, "vocabulary": vocab, "batch": args.batch_size, "seconds": args.seconds,
        "tokens": args.tokens, "optimizer": ADAMW,
    }
    print(f"\n## {head}: {results.data['setup'][head]}")

    def name(key: str) -> str:
        return variant_name(key, n_blocks, head)

    def variants(keys, precision):
        return [training_step_variant(name(k), models[k], optimizers[k], batch, args.device, precision) for k in keys]

    def head_to_head():
        rows, out = [], {}
        for precision in args.precisions:
            r = measure(variants(["nemo", "k0", "nemo_control"], precision), args.device,
                        warmup=args.warmup, steps=args.ratio_steps)
            a, b, c = r[name("nemo")], r[name("k0")], r[name("nemo_control")]
            ratio = b["median_ms"] / a["median_ms"]
            per_step = statistics.median(x / y for x, y in zip(b["times_ms"], a["times_ms"]))
            control = statistics.median(x / y for x, y in zip(c["times_ms"], a["times_ms"]))
            out[precision] = {"nemo": a, "nemo_tl": b, "control": c, "ratio": ratio, "goal": GOAL_RATIO,
                              "median_step_ratio": per_step, "control_step_ratio": control}
            rows.append([precision, fmt(a["median_ms"]), fmt(b["median_ms"]), f"{ratio:.3f}",
                         verdict(ratio, GOAL_RATIO), f"{per_step:.3f}", f"{control:.3f}",
                         fmt(a.get("peak_gib"), ".2f"), fmt(b.get("peak_gib"), ".2f")])
            results.add(f"{head}_head_to_head", out)
        print(f"\n### {head}: nemo_tl vs NeMo, nothing frozen ({args.ratio_steps} interleaved steps)\n")
        print(markdown_table(["precision", "NeMo ms", "nemo_tl ms", "ratio", f"≤ {GOAL_RATIO}", "per step",
                              "control per step", "NeMo GiB", "nemo_tl GiB"], rows))

    def sweep():
        keys = ["nemo", *[f"k{k}" for k in ks], "nemo_freeze"]
        rows, out = [], {}
        for precision in args.precisions:
            r = measure(variants(keys, precision), args.device, warmup=args.warmup, steps=args.steps)
            ref = r[name("nemo")]
            ms = [r[name(f"k{k}")]["median_ms"] for k in ks]
            gib = [r[name(f"k{k}")].get("peak_gib") for k in ks]
            out[precision] = {"by_variant": r, "ks": ks,
                              "time_monotonic": all(b <= a for a, b in zip(ms, ms[1:])),
                              "memory_monotonic": None if None in gib else all(b <= a for a, b in zip(gib, gib[1:]))}
            results.add(f"{head}_freeze_sweep", out)
            for k in keys:
                x = r[name(k)]
                frozen = {"nemo": "0", "nemo_freeze": f"{n_blocks} (encoder)"}.get(k, k[1:])
                peak = x.get("peak_gib")
                rows.append([precision, name(k), frozen, fmt(x["median_ms"]), f"{x['median_ms'] / ref['median_ms']:.2f}",
                             fmt(peak, ".2f"), "n/a" if peak is None else f"{peak / ref['peak_gib']:.2f}"])
        print(f"\n### {head}: freezing the k lowest encoder blocks ({args.steps} interleaved steps)\n")
        print(markdown_table(["precision", "model", "frozen", "ms", "vs NeMo", "peak GiB", "vs NeMo"], rows))
        for precision, o in out.items():
            print(f"{head} {precision}: time falls monotonically with k: {o['time_monotonic']}; "
                  f"memory: {o['memory_monotonic']}")

    run_section(results, f"{head}_head_to_head", head_to_head)
    run_section(results, f"{head}_freeze_sweep", sweep)


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--heads", nargs="+", choices=HEADS, default=list(HEADS))
    p.add_argument("--batch-size", type=int, default=None, help="default 16 (smoke: 2)")
    p.add_argument("--seconds", type=float, default=None, help="audio length; default 10 (smoke: 1.5)")
    p.add_argument("--tokens", type=int, default=None, help="transcript length in tokens; default 4 per second")
    p.add_argument("--vocab-size", type=int, default=None, help="BPE pieces; default 1024 (smoke: 64)")
    p.add_argument("--ks", type=int, nargs="+", default=None, help="frozen block counts (default 0 1 2 6 10 14 18)")
    p.add_argument("--ratio-steps", type=int, default=None, help="timed steps of the head-to-head (default 20)")
    args = p.parse_args(argv)
    finish_args(args, precisions=("fp32", "bf16"), warmup=3, steps=8)
    args.batch_size = args.batch_size or (2 if args.smoke else 16)
    args.seconds = args.seconds or (1.5 if args.smoke else 10.0)
    args.tokens = args.tokens or max(1, int(4 * args.seconds))
    args.vocab_size = args.vocab_size or (64 if args.smoke else 1024)
    args.ks = args.ks or ([0, 1, 3] if args.smoke else [0, 1, 2, 6, 10, 14, 18])
    if 0 not in args.ks:
        args.ks = [0, *args.ks]
    args.ratio_steps = args.ratio_steps or (2 if args.smoke else 20)

    results = Results("bench_transfer_bpe", args)
    with tempfile.TemporaryDirectory(prefix="bench_bpe_") as work:
        tokenizer_dir = make_tokenizer(work, args.vocab_size, args.seed)
        for head in args.heads:
            run_head(head, args, results, tokenizer_dir)
            free()  # the head's models are gone with run_head's frame
    results.finish()
    return results.data


if __name__ == "__main__":
    main()
