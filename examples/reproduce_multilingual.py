"""Joshi et al. 2021 Tables 2, 4, 5, 7 on synthesized speech, in one run.

    python examples/reproduce_multilingual.py --out runs/ms_cldr

(the defaults: ``--langs en,de,ru,hi --hours 1.4 --text cldr --encoder conf --pretrain-ctc-steps 1200
--steps 1200 --aux-ctc-weight 0.3 --architectures multisoftmax,vanilla``; docs/RESULTS.md, setting G).
CLDR sentences; ``conf/multisoftmax_rnnt.yaml``'s Conformer (8 layers, 4x subsampling) is pre-trained as
one CTC model over the union alphabet on every language pooled (same preprocessor and encoder), then
each multilingual model starts from it (``MultiSoftmaxRNNTModel.from_base``;
``--freeze-encoder-blocks k``) and trains with an auxiliary CTC loss over the union labels on the
shared encoder (``model.aux_ctc``, started from the pre-trained CTC decoder). About 4 minutes per
model on one H200, pre-training included. ``--save`` also writes that start to ``OUT/pooled_ctc.nemo``;
``--base PATH_OR_NAME`` starts every model from such a file, or from any pretrained NeMo ASR model,
instead of pre-training. Every training manifest is checked first, its transcripts
counted in CTC frames: a line the encoder cannot align (a few synthesized sentences are spoken
faster than one 40 ms frame per character) is left out of training through ``skip_invalid`` and
printed with the count; the files are never changed, and the test sets are kept whole. Digit words with a BatchNorm QuartzNet from scratch (docs/RESULTS.md,
setting C):

    python examples/reproduce_multilingual.py --out runs/ms --hours 0.3 --steps 1500 --text digits \
        --encoder quartznet --freeze-bn-after 300 --pretrain-ctc-steps 0 --aux-ctc-weight 0 \
        --architectures multisoftmax,vanilla,onehot --per-batch 1

Results are written to ``--out`` as each model finishes.

1. Synthesizes one corpus per language (``nemo_tl.data.synth_corpus``; ``lang`` on every line).
2. Trains ``conf/multisoftmax_rnnt.yaml`` once per ``--architectures`` entry on the same manifests
   with the same sampler (languages mixed in every batch, drawn ∝ hours; ``--per-batch 1``: one language
   per batch, the paper's): ``multisoftmax`` (with the LID
   head), and the paper's baselines ``vanilla`` (one union softmax) and ``onehot`` (union softmax,
   language one-hot at the encoder input).
3. Scores them on the test sets: the pooled CTC start (greedy, its own union softmax); multi-softmax
   known-language, LID-free and oracle; vanilla
   (LID-free by construction); onehot (known language). Per-language WER and CER, word- and
   character-weighted averages, WERR and CERR against vanilla, utterance LID accuracy, T_avg; then the (τ, s_th) sweep of the
   multi-softmax model (one decoding serves every point), and with ``--save`` the same sweep of the model
   restored from ``multisoftmax.nemo``. Writes ``results.md``, ``results.json`` and ``sweep.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

# ``--encoder quartznet``: a QuartzNet-style BatchNorm encoder (2x subsampling), 256 channels.
QUARTZNET_BLOCKS = [
    (1, 33, 1, 0.0, False),
    (3, 33, 1, 0.1, True),
    (3, 39, 1, 0.1, True),
    (3, 51, 1, 0.1, True),
    (3, 63, 1, 0.1, True),
    (1, 87, 2, 0.1, False),
]  # repeat, kernel, dilation, dropout, residual


def quartznet_encoder(features: int, hidden: int) -> dict:
    blocks = [
        {
            "filters": 256,
            "repeat": r,
            "kernel": [k],
            "stride": [2 if i == 0 else 1],
            "dilation": [d],
            "dropout": p,
            "residual": res,
            "separable": True,
        }
        for i, (r, k, d, p, res) in enumerate(QUARTZNET_BLOCKS)
    ]
    blocks.append(
        {
            "filters": hidden,
            "repeat": 1,
            "kernel": [1],
            "stride": [1],
            "dilation": [1],
            "dropout": 0.0,
            "residual": False,
            "separable": False,
        }
    )
    return {
        "_target_": "nemo.collections.asr.modules.ConvASREncoder",
        "feat_in": features,
        "activation": "relu",
        "conv_mask": True,
        "jasper": blocks,
    }


def timed_fit(build, steps: int):
    """``build(trainer)``'s model trained ``steps`` steps, in eval mode, and its training seconds."""
    from nemo_tl.utils.training import TrainingTimer, quick_trainer

    timer = TrainingTimer()
    trainer = quick_trainer(steps, callbacks=[timer])
    model = build(trainer)
    trainer.fit(model)
    model.eval()
    return model, timer.seconds


def train(cfg, steps: int):
    from nemo_tl.models import MultiSoftmaxRNNTModel

    return timed_fit(lambda trainer: MultiSoftmaxRNNTModel(cfg=cfg, trainer=trainer), steps)


def ctc_config(cfg, manifests: list[str]):
    """The config of a NeMo CTC model over the union of ``cfg``'s languages' labels, trained on ``manifests`` pooled.

    Same sample rate, preprocessor, spec_augment, encoder and optimizer as the multilingual ``cfg``.
    """
    from omegaconf import OmegaConf

    from nemo_tl.multilingual.config import MultilingualConfig

    labels = MultilingualConfig.from_model_config(cfg).union_labels
    ds = {
        "manifest_filepath": manifests, "labels": labels, "sample_rate": cfg.sample_rate, "parser": "base",
        "batch_size": cfg.train_ds.batch_size, "shuffle": True, "num_workers": cfg.train_ds.num_workers,
        "max_duration": cfg.train_ds.get("max_duration"), "trim_silence": False,
    }
    return OmegaConf.create({
        "sample_rate": cfg.sample_rate, "labels": labels, "train_ds": ds,
        "preprocessor": cfg.preprocessor, "spec_augment": cfg.get("spec_augment"), "encoder": cfg.encoder,
        "decoder": {"_target_": "nemo.collections.asr.modules.ConvASRDecoder",
                    "feat_in": cfg.model_defaults.enc_hidden, "num_classes": len(labels), "vocabulary": labels},
        "optim": cfg.optim,
    })


def ctc_alignable(cfg, manifests: list[str], out_dir: Path) -> list[str]:
    """``manifests``, each line checked with its transcript counted in CTC frames of ``cfg``'s encoder.

    NeMo's CTC loss would be 0, silently, for a line the encoder cannot align: such lines are left out
    (``skip_invalid``), each manifest that loses lines is printed with the count and its filtered copy written to
    ``out_dir/train_manifests/`` (the files given are never changed). Any other problem of a line is an error,
    as in training.
    """
    import shutil

    from nemo_tl.data.frames import config_encoder_frames
    from nemo_tl.data.manifest import iter_manifest_lines
    from nemo_tl.data.validate import check_dataset_config

    ctc_cfg = ctc_config(cfg, manifests)
    check_dataset_config(ctc_cfg.train_ds, labels=ctc_cfg.labels, section="train_ds", parser="base")  # the rest
    ctc_cfg.train_ds.skip_invalid = True
    checked = check_dataset_config(ctc_cfg.train_ds, labels=ctc_cfg.labels, section="train_ds", parser="base",
                                   frames=config_encoder_frames(ctc_cfg))
    used = []
    for i, (given, kept) in enumerate(zip(manifests, checked.manifest_filepath)):
        if kept != given:
            target = out_dir / "train_manifests" / f"{i:02d}_{Path(given).name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(kept, target)
            n_given, n_kept = (sum(1 for _ in iter_manifest_lines(x)) for x in (given, kept))
            print(f"{given}: {n_given - n_kept} of {n_given} lines left out of training: CTC cannot align them at "
                  f"this encoder's frame rate (`python -m nemo_tl.data.validate {given} --labels MODEL` lists them); "
                  f"the rest: {target}", flush=True)
            kept = str(target)
        used.append(kept)
    return used


def pretrain_ctc(cfg, manifests: list[str], steps: int):
    """A NeMo CTC model (:func:`ctc_config`) trained ``steps`` steps on ``manifests`` (see :func:`ctc_alignable`)."""
    from nemo.collections.asr.models import EncDecCTCModel

    ctc_cfg = ctc_config(cfg, manifests)
    return timed_fit(lambda trainer: EncDecCTCModel(cfg=ctc_cfg, trainer=trainer), steps)


def train_from_base(base, cfg, steps: int, freeze_encoder_blocks: int):
    """``MultiSoftmaxRNNTModel.from_base(base, ...)`` with ``cfg``'s other keys, trained ``steps`` steps."""
    from omegaconf import OmegaConf

    from nemo_tl.models import MultiSoftmaxRNNTModel

    rest = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items()
            if k not in ("languages", "architecture", "sample_rate", "preprocessor", "encoder")}
    return timed_fit(lambda trainer: MultiSoftmaxRNNTModel.from_base(
        base, languages=OmegaConf.to_container(cfg.languages), architecture=cfg.architecture,
        freeze_encoder_blocks=freeze_encoder_blocks, cfg=rest, trainer=trainer,
    ), steps)


def corpus_record(corpus_dir: str) -> dict:
    """The synthesis backend and the audio's sha256 per manifest, as ``corpus.json`` records them: runs on
    different machines compare their corpora by it."""
    from nemo_tl.data.synth_corpus import recorded_audio_sha256

    summary = json.loads((Path(corpus_dir) / "corpus.json").read_text(encoding="utf-8"))
    return {"backend": summary.get("backend"), "audio_sha256": recorded_audio_sha256(corpus_dir)}


def sweep_points(spec: str) -> list[tuple[float, float]]:
    """``"inf:inf,30:0.5"`` → [(inf, inf), (30.0, 0.5)]: the (τ, s_th) points of ``--sweep``."""
    points = []
    for item in (x.strip() for x in spec.split(",") if x.strip()):
        tau, _, s_th = item.partition(":")
        try:
            points.append((float(tau), float(s_th)))
        except ValueError:
            raise SystemExit(f"--sweep: {item!r} is not τ:s_th (e.g. 30:0.5 or inf:inf)") from None
    return points


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--langs", default="en,de,ru,hi")
    p.add_argument("--hours", type=float, default=1.4)
    p.add_argument("--corpus", default=None, help="where the synthesized corpus goes (default OUT/corpus)")
    p.add_argument("--text", default="cldr", help="digits, cldr (sentences) or mixed (nemo_tl.data.texts)")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=None, help="default: conf/multisoftmax_rnnt.yaml optim.lr")
    p.add_argument("--layers", type=int, default=None, help="encoder layers (default: the config's)")
    p.add_argument(
        "--encoder",
        choices=("conf", "quartznet"),
        default="conf",
        help="quartznet: a QuartzNet-style BatchNorm encoder; conf: conf/multisoftmax_rnnt.yaml's Conformer",
    )
    p.add_argument(
        "--freeze-bn-after",
        type=int,
        default=300,
        help="model.freeze_batch_norm_after (steps; -1: never; ignored by --encoder conf, which has no BatchNorm)",
    )
    p.add_argument("--architectures", default="multisoftmax,vanilla", help="of multisoftmax, vanilla, onehot")
    p.add_argument("--eval-batch", type=int, default=64, help="utterances per decoding batch in evaluation")
    p.add_argument(
        "--sweep", default="inf:inf,30:0.5,20:0.5,10:0.5,10:0.2,5:0.5",
        help="the (τ, s_th) points of the LID-free sweep, τ:s_th comma-separated (τ in encoder frames: 40 ms at "
        "the default 4x subsampling; inf: never stop)",
    )
    p.add_argument("--per-batch", type=int, default=0,
                   help="0: languages mixed in every batch (the recipe), 1: one language per batch (the paper)")
    p.add_argument("--lid-weight", type=float, default=None,
                   help="model.lid.weight: loss = RNN-T + weight * frame-level LID CE (default: the config's)")
    p.add_argument("--save", action="store_true",
                   help="also write the multi-softmax model to OUT/multisoftmax.nemo and the pooled CTC start to "
                   "OUT/pooled_ctc.nemo (a --base for later runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup-ratio", type=float, default=None, help="optim.sched.warmup_ratio (default: the config's)")
    p.add_argument(
        "--pretrain-ctc-steps", type=int, default=1200,
        help="N > 0: pre-train a CTC model over the union alphabet on all languages pooled for N steps, then start "
        "every model from it (from_base); 0: from scratch",
    )
    p.add_argument(
        "--base", default=None,
        help="start every model from this pretrained NeMo ASR model instead (a .nemo path or a NeMo model name: CTC, "
        "RNN-T or hybrid, characters or subwords; e.g. OUT/pooled_ctc.nemo of an earlier --save run); "
        "--pretrain-ctc-steps is then not used",
    )
    p.add_argument("--freeze-encoder-blocks", type=int, default=0,
                   help="with --pretrain-ctc-steps or --base: encoder blocks kept frozen")
    p.add_argument(
        "--aux-ctc-weight", type=float, default=0.3,
        help="model.aux_ctc.ctc_loss_weight w: loss = (1 - w) RNN-T + w CTC over the union labels (0: off)",
    )
    args = p.parse_args(argv)

    from nemo_tl.utils.training import quiet_logs

    quiet_logs()
    from omegaconf import OmegaConf

    from nemo_tl.data.synth_corpus import synthesize_corpus
    from nemo_tl.data.texts import labels_for
    from nemo_tl.decoding.multilingual_eval import evaluate, format_table
    from nemo_tl.evaluation import to_strict_json

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    langs = args.langs.split(",")
    corpus_dir = args.corpus or str(out / "corpus")
    corpus = synthesize_corpus(corpus_dir, langs, hours=args.hours, seed=args.seed, text_source=args.text)
    print(f"corpus in {time.time() - t0:.0f} s", flush=True)
    test = [corpus[lang]["test"] for lang in langs]

    base = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "multisoftmax_rnnt.yaml"), resolve=True)["model"]
    from nemo_tl.utils.environment import environment

    results: dict = {"args": vars(args), "environment": environment(),
                     "corpus": corpus_record(corpus_dir), "train_seconds": {}, "rows": {}}
    rows = {}
    pretrained = None
    if args.base:
        from nemo_tl.multilingual.pretrained import load_multilingual_base

        pretrained = load_multilingual_base(args.base, where="--base")
    train_manifests: list[str] | None = None

    sweep_md = ""

    def write(extra_md: str = "") -> str:
        """results.md and results.json as they stand (written after every model), ``extra_md`` after the table."""
        table = format_table(rows, langs, rows.get("vanilla (LID-free)"))
        if extra_md:
            table += "\n\n" + extra_md
        results["rows"] = {
            name: {"mode": r.mode, "wers": r.wers, "cers": r.cers, "lid_accuracy": r.lid_accuracy, "t_avg": r.t_avg}
            for name, r in rows.items()
        }
        (out / "results.md").write_text(table + "\n", encoding="utf-8")
        # strict JSON: a τ or s_th of null in the sweep is ∞ (never switch a decoder off)
        plain = json.loads(json.dumps(results, default=float))  # numpy and torch numbers as Python floats
        (out / "results.json").write_text(to_strict_json(plain, indent=1), encoding="utf-8")
        return table

    for architecture in args.architectures.split(","):
        cfg = OmegaConf.create(base)
        cfg.languages = {lang: {"labels": labels_for(lang)} for lang in langs}
        cfg.architecture = architecture
        cfg.lid.enabled = architecture == "multisoftmax"
        if args.lid_weight is not None:
            cfg.lid.weight = args.lid_weight
        cfg.train_ds.batch_size = args.batch
        cfg.train_ds.mixing = {"per_batch": bool(args.per_batch), "weights": "hours", "seed": args.seed}
        cfg.validation_ds.manifest_filepath = None
        if args.lr is not None:
            cfg.optim.lr = args.lr
        if args.layers is not None:
            cfg.encoder.n_layers = args.layers
        if args.encoder == "quartznet":
            cfg.encoder = quartznet_encoder(cfg.preprocessor.features, cfg.model_defaults.enc_hidden)
            cfg.optim = {
                "name": "novograd",
                "lr": 0.01,
                "betas": [0.8, 0.25],
                "weight_decay": 0.001,
                "sched": {"name": "CosineAnnealing", "warmup_ratio": 0.12, "min_lr": 1e-5},
            }
        if args.encoder == "quartznet":  # τ is in encoder frames: setting C's 30 frames are 0.6 s at its 2x
            cfg.lid_free = {"min_frames": 30, "threshold": 0.5}
        if args.encoder == "quartznet" and args.freeze_bn_after >= 0:
            cfg.freeze_batch_norm_after = args.freeze_bn_after
        if args.warmup_ratio is not None:
            cfg.optim.sched.warmup_ratio = args.warmup_ratio
        if args.aux_ctc_weight > 0:
            cfg.aux_ctc = {"ctc_loss_weight": args.aux_ctc_weight}
        if train_manifests is None:  # the lines CTC (pre-training, aux_ctc) cannot align are left out once, printed
            train_manifests = [corpus[lang]["train"] for lang in langs]
            if pretrained is not None and args.aux_ctc_weight > 0:  # frames of the base's own encoder
                check_cfg = cfg.copy()
                check_cfg.preprocessor, check_cfg.encoder = pretrained.cfg.preprocessor, pretrained.cfg.encoder
                train_manifests = ctc_alignable(check_cfg, train_manifests, out)
            elif pretrained is None and (args.pretrain_ctc_steps > 0 or args.aux_ctc_weight > 0):
                train_manifests = ctc_alignable(cfg, train_manifests, out)
        cfg.train_ds.manifest_filepath = train_manifests
        torch.manual_seed(args.seed)
        if args.pretrain_ctc_steps > 0 and pretrained is None:
            pretrained, seconds = pretrain_ctc(cfg, train_manifests, args.pretrain_ctc_steps)
            results["train_seconds"]["ctc_pretrain"] = seconds
            print(f"pooled CTC: trained {args.pretrain_ctc_steps} steps in {seconds:.0f} s", flush=True)
            # the start every model gets: its CER tells an under-trained start from a weak multilingual model
            rows["pooled CTC start (greedy)"] = evaluate(pretrained, test, "known", args.eval_batch)
            if args.save:
                from nemo_tl.utils.atomic import atomic_save_to

                atomic_save_to(pretrained, str(out / "pooled_ctc.nemo"))
        if pretrained is not None:
            model, seconds = train_from_base(pretrained, cfg, args.steps, args.freeze_encoder_blocks)
        else:
            model, seconds = train(cfg, args.steps)
        results["train_seconds"][architecture] = seconds
        print(f"{architecture}: trained {args.steps} steps in {seconds:.0f} s", flush=True)
        if architecture == "vanilla":
            rows["vanilla (LID-free)"] = evaluate(model, test, "lid_free", args.eval_batch)
        elif architecture == "onehot":
            rows["onehot (known language)"] = evaluate(model, test, "known", args.eval_batch)
        else:
            sweep_md = evaluate_multisoftmax(model, test, args, out, rows, results)
        print(write(sweep_md), f"\nevaluated in {time.time() - t0:.0f} s", flush=True)
        del model
    print(f"total {time.time() - t0:.0f} s")
    return 0


def evaluate_multisoftmax(model, test: list[str], args, out: Path, rows: dict, results: dict) -> str:
    """Known-language, LID-free (default τ, s_th), oracle and the (τ, s_th) sweep of the multi-softmax ``model``.

    The LID-free rows come from one decoding of every language (``evaluate_modes``), also written per
    utterance to ``lid_free_outputs.jsonl``. With ``--save``: the model is saved, restored and swept again (its
    decoding in ``lid_free_outputs_restored.jsonl``).
    Returns the sweep's markdown table.
    """
    from nemo_tl.decoding.multilingual_eval import decode_all_languages, evaluate_modes, plot_sweep, sweep

    if args.save:
        from nemo_tl.utils.atomic import atomic_save_to

        atomic_save_to(model, str(out / "multisoftmax.nemo"))
    found, every = evaluate_modes(model, test, ("known", "lid_free", "oracle"), args.eval_batch)
    rows.update({f"multisoftmax ({mode})": r for mode, r in found.items()})
    every.write_jsonl(str(out / "lid_free_outputs.jsonl"))
    points = sweep(model, every, sweep_points(args.sweep))
    results["sweep"] = points
    plot_sweep(points, str(out / "sweep.png"))
    md = ["| τ (frames) | s_th | WER % | CER % | T_avg | LID acc % |", "|---:|---:|---:|---:|---:|---:|"]
    md += [f"| {q['tau']:g} | {q['s_th']:g} | {q['wer']:.2f} | {q['cer']:.2f} | {q['t_avg']:.2f} | "
           f"{q['lid_accuracy']:.1f} |" for q in points]
    if args.save:  # the saved model, restored, must decode as the trained one did
        from nemo_tl.models import MultiSoftmaxRNNTModel

        restored = MultiSoftmaxRNNTModel.restore_from(str(out / "multisoftmax.nemo"), map_location=model.device)
        every_restored = decode_all_languages(restored.eval(), test, args.eval_batch)
        every_restored.write_jsonl(str(out / "lid_free_outputs_restored.jsonl"))
        results["sweep_restored"] = sweep(restored, every_restored, sweep_points(args.sweep))
        changed = [(q["tau"], q["s_th"]) for p_, q in zip(points, results["sweep_restored"]) if p_ != q]
        verdict = "the same sweep" if not changed else f"other results at (τ, s_th) = {changed} (sweep_restored)"
        md.append(f"\nThe model restored from multisoftmax.nemo: {verdict}.")
    return "\n".join(md)


if __name__ == "__main__":
    raise SystemExit(main())
