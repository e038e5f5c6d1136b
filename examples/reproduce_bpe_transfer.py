"""English → German transfer of a small FastConformer BPE model (CTC and RNN-T) on synthesized CLDR speech.

    python examples/reproduce_bpe_transfer.py --out runs/bpe_transfer [--work /tmp/bpe_work] [--heads ctc rnnt] \
        [--source-hours 0.4 --target-hours 0.15 --base-steps 1000 --steps 300 --eval-every 50]

1. Synthesizes an English and a German corpus (``nemo_tl.data.synth_corpus``, CLDR names) and trains
   one SentencePiece BPE tokenizer on each training set (``nemo_tl.transfer.tokenizer``).
2. Per head (CTC: EncDecCTCModelBPE, RNN-T: EncDecRNNTBPEModel), trains a small FastConformer base on
   English from scratch (4 layers, d_model 176, dw_striding x8).
3. Fine-tunes it to German with the German tokenizer, every run with the same steps, batch and
   schedule: ``keep_shared`` with new pieces at zero, ``keep_shared`` with ``compose`` (the mean of the
   base rows of the pieces the English tokenizer splits a new piece into), NeMo's own
   ``change_vocabulary`` (a fresh decoder / prediction embedding and joint: what NeMo users do today),
   and the same architecture trained on German from scratch.
4. Writes ``results.json`` and ``results.md`` to ``--out`` after every run: target (German) and source
   (English) dev CER and WER per run, the step at which the target CER first reaches ``--target-cer``,
   the step at which it first reaches the final target CER of ``change_vocabulary`` (the claim:
   keep_shared gets there in at most half the steps), and the median step time.

``--time-limit`` (seconds) skips the runs that would start after it, so that one bounded GPU call
still writes what it measured. ``--smoke`` runs tiny sizes on a few utterances (a test).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reproduce_transfer import DevCurve, StepTimer, steps_to_90  # noqa: E402

RUNS = (  # name, transfer keys (None: NeMo's change_vocabulary on the restored base)
    ("keep_shared, new pieces zero", {"vocabulary": "keep_shared", "new_label_init": "zero"}),
    ("NeMo change_vocabulary", None),
    ("keep_shared, new pieces compose", {"vocabulary": "keep_shared", "new_label_init": "compose"}),
    ("from scratch on target", {"vocabulary": "reinit", "reinitialize": True}),
)


def fastconformer_config(head: str, tokenizer_dir: str, *, d_model: int, layers: int, heads: int) -> dict:
    """A small NeMo FastConformer BPE model config (``head``: ctc | rnnt), without data sections."""
    cfg = {
        "sample_rate": 16000,
        "tokenizer": {"dir": tokenizer_dir, "type": "bpe"},
        "preprocessor": {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
                         "sample_rate": 16000, "normalize": "per_feature", "window_size": 0.025,
                         "window_stride": 0.01, "features": 80, "n_fft": 512, "frame_splicing": 1, "dither": 1e-5},
        "spec_augment": {"_target_": "nemo.collections.asr.modules.SpectrogramAugmentation",
                         "freq_masks": 2, "time_masks": 2, "freq_width": 27, "time_width": 0.05},
        "encoder": {"_target_": "nemo.collections.asr.modules.ConformerEncoder", "feat_in": 80, "n_layers": layers,
                    "d_model": d_model, "subsampling": "dw_striding", "subsampling_factor": 8,
                    "subsampling_conv_channels": d_model, "ff_expansion_factor": 4, "self_attention_model": "rel_pos",
                    "n_heads": heads, "conv_kernel_size": 9, "xscaling": True, "untie_biases": True,
                    "dropout": 0.1, "dropout_pre_encoder": 0.1, "dropout_emb": 0.0, "dropout_att": 0.1},
    }
    if head == "ctc":
        cfg["decoder"] = {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": d_model,
                          "num_classes": -1, "vocabulary": []}
        return cfg
    hidden = d_model
    cfg.update({
        "model_defaults": {"enc_hidden": d_model, "pred_hidden": hidden, "joint_hidden": hidden},
        "decoder": {"_target_": "nemo.collections.asr.modules.RNNTDecoder", "normalization_mode": None,
                    "random_state_sampling": False, "blank_as_pad": True,
                    "prednet": {"pred_hidden": hidden, "pred_rnn_layers": 1, "t_max": None, "dropout": 0.1}},
        "joint": {"_target_": "nemo.collections.asr.modules.RNNTJoint", "log_softmax": None,
                  "preserve_memory": False, "fuse_loss_wer": True, "fused_batch_size": 16,
                  "jointnet": {"joint_hidden": hidden, "activation": "relu", "dropout": 0.1,
                               "encoder_hidden": d_model, "pred_hidden": hidden}},
        "decoding": {"strategy": "greedy_batch", "greedy": {"max_symbols": 10}},
        "loss": {"loss_name": "default"},
    })
    return cfg


def adamw(lr: float, warmup_ratio: float = 0.1) -> dict:
    """NeMo's FastConformer recipe at peak ``lr``: AdamW (0.9, 0.98), weight decay 1e-3, cosine with warmup."""
    return {"name": "adamw", "lr": lr, "betas": [0.9, 0.98], "weight_decay": 1e-3,
            "sched": {"name": "CosineAnnealing", "warmup_ratio": warmup_ratio, "min_lr": lr / 100}}


def bpe_data(manifest: str | None, batch: int, shuffle: bool, workers: int) -> dict:
    """A NeMo BPE dataset section; lines whose tokens outnumber the x8 encoder frames are dropped (and logged)."""
    return {"manifest_filepath": manifest, "sample_rate": 16000, "batch_size": batch, "shuffle": shuffle,
            "num_workers": workers, "pin_memory": workers > 0, "max_duration": 20.0, "use_start_end_token": False,
            "skip_invalid": True}


def first_step_at_or_below(points: list[dict], lang: str, cer: float | None) -> int | None:
    """The first evaluated step whose ``lang`` dev CER is at most ``cer``."""
    if cer is None:
        return None
    return next((p["step"] for p in points if p[lang]["cer"] <= cer), None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="results.json and results.md go here")
    p.add_argument("--work", help="corpus, tokenizers and base models (default: --out)")
    p.add_argument("--heads", nargs="+", choices=("ctc", "rnnt"), default=["ctc", "rnnt"])
    p.add_argument("--source", default="en")
    p.add_argument("--target", default="de")
    p.add_argument("--text", default="cldr", help="digits | cldr | mixed")
    p.add_argument("--source-hours", type=float, default=0.4)
    p.add_argument("--target-hours", type=float, default=0.15)
    p.add_argument("--vocab-size", type=int, default=128, help="BPE pieces of each tokenizer")
    p.add_argument("--d-model", type=int, default=176)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads-attention", type=int, default=4)
    p.add_argument("--base-steps", type=int, default=1000)
    p.add_argument("--base-lr", type=float, default=2e-3, help="from-scratch peak lr (base and scratch runs)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=5e-4, help="fine-tuning peak lr")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--target-cer", type=float, default=30.0, help="report the step at which target CER ≤ this")
    p.add_argument("--time-limit", type=float, default=480.0, help="no run starts after this many seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, 12 utterances per language, a few steps")
    args = p.parse_args(argv)
    if args.smoke:
        args.d_model, args.layers, args.heads_attention, args.vocab_size = 32, 1, 2, 64
        args.base_steps, args.steps, args.eval_every, args.batch = 2, 2, 1, 4

    from nemo_tl.utils.training import quiet_logs

    quiet_logs()
    from nemo.collections.asr.models import ASRModel, EncDecCTCModelBPE, EncDecRNNTBPEModel
    from omegaconf import OmegaConf, open_dict

    from nemo_tl.data.frames import model_encoder_frames
    from nemo_tl.data.synth_corpus import synthesize_corpus
    from nemo_tl.data.validate import check_dataset_config
    from nemo_tl.evaluation import evaluate_manifests, to_strict_json
    from nemo_tl.transfer.model import configured_rnnt_loss, from_base
    from nemo_tl.transfer.tokenizer import train_tokenizer
    from nemo_tl.utils.training import quick_trainer

    out, work = Path(args.out), Path(args.work or args.out)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    src, tgt = args.source, args.target
    size = {"utterances": 12} if args.smoke else None
    corpus = synthesize_corpus(str(work / "corpus_src"), [src], seed=args.seed, text_source=args.text,
                               **(size or {"hours": args.source_hours}))
    corpus.update(synthesize_corpus(str(work / "corpus_tgt"), [tgt], seed=args.seed + 1, text_source=args.text,
                                    **(size or {"hours": args.target_hours})))
    tokenizers = {}
    for lang in (src, tgt):
        directory = work / f"tokenizer_{lang}"
        tokenizers[lang] = str(directory) if directory.is_dir() else train_tokenizer(
            [corpus[lang]["train"]], str(directory), vocab_size=args.vocab_size)
    print(f"corpus and tokenizers in {time.time() - t0:.0f} s", flush=True)
    dev = {src: corpus[src]["dev"], tgt: corpus[tgt]["dev"]}
    workers = 4 if torch.cuda.is_available() else 0
    results = {"args": vars(args), "heads": {}}

    def save() -> str:
        md = report(results, src, tgt, args.target_cer)
        (out / "results.md").write_text(md + "\n", encoding="utf-8")
        (out / "results.json").write_text(to_strict_json(results, indent=1), encoding="utf-8")
        return md

    md = ""
    for head in args.heads:
        nemo_cls = EncDecCTCModelBPE if head == "ctc" else EncDecRNNTBPEModel
        res = results["heads"][head] = {"runs": {}}
        torch.manual_seed(args.seed)
        cfg = fastconformer_config(head, tokenizers[src], d_model=args.d_model, layers=args.layers,
                                   heads=args.heads_attention)
        cfg.update(train_ds=bpe_data(corpus[src]["train"], args.batch, True, workers),
                   validation_ds=bpe_data(dev[src], args.batch, False, 0), optim=adamw(args.base_lr, 0.05))
        curve, timer = DevCurve({src: dev[src]}, max(args.eval_every * 4, 1)), StepTimer()
        trainer = quick_trainer(args.base_steps, [curve, timer], root_dir=str(work))
        base = nemo_cls(cfg=OmegaConf.create(cfg), trainer=trainer)
        trainer.fit(base)
        base_path = str(work / f"base_{head}_{src}.nemo")
        base.save_to(base_path)
        base.eval()
        res["base"] = {"curve": curve.points, **timer.summary(),
                       "dev": dict(zip(dev, evaluate_manifests(base, list(dev.values()), batch_size=64).values()))}
        print(f"{head} base: {res['base']['dev']} ({time.time() - t0:.0f} s)", flush=True)
        md = save()

        for name, transfer in RUNS:
            if time.time() - t0 > args.time_limit:
                res["runs"][name] = {"skipped": f"--time-limit {args.time_limit:g} s reached"}
                print(f"{head} {name}: skipped (time limit)", flush=True)
                continue
            torch.manual_seed(args.seed)
            scratch = transfer is not None and transfer.get("reinitialize", False)
            data = {"train_ds": bpe_data(corpus[tgt]["train"], args.batch, True, workers),
                    "validation_ds": bpe_data(dev[tgt], args.batch, False, 0),
                    "optim": adamw(args.base_lr if scratch else args.lr, 0.05 if scratch else 0.1)}
            curve, timer = DevCurve(dev, args.eval_every), StepTimer()
            trainer = quick_trainer(args.steps, [curve, timer], root_dir=str(work))
            report_line = None
            if transfer is None:  # what NeMo users do today: a fresh output layer for the new tokenizer
                model = ASRModel.restore_from(base_path, map_location="cpu")
                model.change_vocabulary(new_tokenizer_dir=tokenizers[tgt], new_tokenizer_type="bpe")
                if head == "rnnt":
                    configured_rnnt_loss(model)  # a TDT base gets its TDT loss back
                with open_dict(model.cfg):
                    model.cfg.optim = data["optim"]
                model.set_trainer(trainer)
                # the same training lines as the nemo_tl runs (NeMo itself keeps lines CTC cannot align)
                train_ds = check_dataset_config(OmegaConf.create(data["train_ds"]), labels=None, section="train_ds",
                                                tokenizer=model.tokenizer, frames=model_encoder_frames(model))
                model.setup_training_data(train_ds)
                model.setup_validation_data(data["validation_ds"])
            else:
                model = from_base(base_path, tokenizer_dir=tokenizers[tgt], cfg=data, trainer=trainer, **transfer)
                report_line = str(model.transfer_report) if model.transfer_report is not None else None
            trainer.fit(model)
            res["runs"][name] = {"curve": curve.points, **timer.summary(), "transfer_report": report_line,
                                 "steps_to_90": steps_to_90(curve.points, tgt)}
            print(f"{head} {name}: {curve.points[-1]} ({time.time() - t0:.0f} s)", flush=True)
            md = save()
    md = save()
    print(md)
    print(f"total {time.time() - t0:.0f} s")
    return 0


def report(results: dict, src: str, tgt: str, target_cer: float) -> str:
    """Per head: one row per run (final dev CER/WER of both languages, steps to the target CERs)."""
    lines = []
    for head, res in results["heads"].items():
        runs = res["runs"]
        baseline = runs.get("NeMo change_vocabulary", {})
        reference = baseline["curve"][-1][tgt]["cer"] if baseline.get("curve") else None
        ref_text = "n/a" if reference is None else f"{reference:.1f}"
        lines += [f"### {head.upper()}", "",
                  f"| run | {tgt} dev CER % | {tgt} dev WER % | {src} dev CER % | {src} dev WER % "
                  f"| steps to {tgt} CER ≤ {target_cer:g} | steps to {tgt} CER ≤ {ref_text} (change_vocabulary final) "
                  "| step ms |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        if "base" in res:
            d = res["base"]["dev"]
            lines.append(f"| base ({src}, {res['base']['curve'][-1]['step'] if res['base']['curve'] else 0} steps) "
                         f"| {d[tgt]['cer']:.1f} | {d[tgt]['wer']:.1f} | {d[src]['cer']:.1f} | {d[src]['wer']:.1f} "
                         f"| | | {res['base']['step_ms']:.1f} |")
        for name, r in runs.items():
            if "skipped" in r:
                lines.append(f"| {name} | skipped: {r['skipped']} | | | | | | |")
                continue
            last = r["curve"][-1]
            to_cer = first_step_at_or_below(r["curve"], tgt, target_cer)
            to_ref = first_step_at_or_below(r["curve"], tgt, reference)
            r["steps_to_target_cer"], r["steps_to_change_vocabulary_final"] = to_cer, to_ref
            lines.append(f"| {name} | {last[tgt]['cer']:.1f} | {last[tgt]['wer']:.1f} | {last[src]['cer']:.1f} | "
                         f"{last[src]['wer']:.1f} | {to_cer if to_cer is not None else 'not reached'} | "
                         f"{to_ref if to_ref is not None else 'not reached'} | {r['step_ms']:.1f} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
