"""Training throughput of each nemo_tl model on 1 and on N GPUs (Lightning DDP over NCCL).

    python bench/bench_ddp_scaling.py --prepare --workdir /tmp/ddp      # audio, manifests, base .nemo
    python bench/bench_ddp_scaling.py --workdir /tmp/ddp --model transfer --devices 1 --out one.json
    python bench/bench_ddp_scaling.py --workdir /tmp/ddp --model transfer --devices 2 --out two.json

``--model distill``: a QuartzNet 5x3 student (conf/distill_ctc.yaml, without the uncertainty
term) taught online by the 15x5 base as teacher. ``--model multisoftmax``: conf/multisoftmax_rnnt.yaml
(en and hi, one language per batch) on the same audio with random text of each alphabet.

A real Lightning run (``Trainer(devices=N, strategy="ddp")``), not a hand-driven step: QuartzNet
15x5 (``--config``) fine-tuned from a base saved as ``.nemo`` with the 4 lowest blocks frozen (frozen blocks
under DDP must neither crash nor move), batch ``--batch`` per GPU of 10 s noise utterances,
bf16-mixed, NeMo's data loader with 4 workers. Throughput is utterances per second over the
steps after ``--warmup`` (rank 0's wall clock); the JSON also says whether the frozen blocks are
unchanged at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EN = [" ", *"abcdefghijklmnopqrstuvwxyz", "'"]


def prepare(workdir: str, utterances: int, seconds: float, config: str) -> None:
    import soundfile as sf
    import torch
    from nemo.collections.asr.models import EncDecCTCModel
    from omegaconf import OmegaConf

    os.makedirs(os.path.join(workdir, "wav"), exist_ok=True)
    rng = np.random.default_rng(0)
    with open(os.path.join(workdir, "train.json"), "w") as f:
        for i in range(utterances):
            path = os.path.join(workdir, "wav", f"{i:05d}.wav")
            sf.write(path, (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32), 16000)
            text = " ".join("".join(rng.choice(EN[1:27], 5)) for _ in range(25))[:150]
            f.write(json.dumps({"audio_filepath": path, "duration": seconds, "text": text}) + "\n")
    languages = OmegaConf.to_container(OmegaConf.load(os.path.join(ROOT, "conf", "multisoftmax_rnnt.yaml")).model.languages)
    half = utterances // 2
    for lang, (first, last) in zip(languages, ((0, half), (half, utterances))):
        letters = [c for c in languages[lang]["labels"] if c != " "]
        with open(os.path.join(workdir, f"{lang}.json"), "w") as f:
            for i in range(first, last):
                path = os.path.join(workdir, "wav", f"{i:05d}.wav")
                text = " ".join("".join(rng.choice(letters, 5)) for _ in range(25))[:150]
                f.write(json.dumps({"audio_filepath": path, "duration": seconds, "text": text, "lang": lang}) + "\n")
    cfg = OmegaConf.load(os.path.join(ROOT, "conf", f"{config}.yaml")).model
    cfg.train_ds.manifest_filepath = None
    cfg.validation_ds.manifest_filepath = None
    torch.manual_seed(0)
    EncDecCTCModel(cfg=OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))).save_to(
        os.path.join(workdir, "base.nemo")
    )


def build_model(args: argparse.Namespace, train: dict, trainer):
    """The model ``--model`` names, with ``train`` as its training data."""
    from omegaconf import OmegaConf

    from nemo_tl.models import DistillCTCModel, MultiSoftmaxRNNTModel, TransferCTCModel

    base = os.path.join(args.workdir, "base.nemo")
    if args.model == "transfer":
        return TransferCTCModel.from_base(base, labels=EN, freeze_encoder_blocks=4, cfg={"train_ds": train},
                                          trainer=trainer)
    if args.model == "distill":
        cfg = OmegaConf.to_container(OmegaConf.load(os.path.join(ROOT, "conf", "distill_ctc.yaml")), resolve=True)
        cfg = OmegaConf.create(cfg["model"])
        cfg.distillation.teachers = [{"model": base, "weight": 1.0}]
        cfg.distillation.uncertainty = False
        cfg.decoder._target_ = "nemo.collections.asr.modules.ConvASRDecoder"
        cfg.train_ds = train
        cfg.validation_ds = {**train, "manifest_filepath": None}
        return DistillCTCModel(cfg=cfg, trainer=trainer)
    cfg = OmegaConf.to_container(OmegaConf.load(os.path.join(ROOT, "conf", "multisoftmax_rnnt.yaml")), resolve=True)
    cfg = OmegaConf.create(cfg["model"])
    langs = list(cfg.languages)
    cfg.train_ds.manifest_filepath = [os.path.join(args.workdir, f"{lang}.json") for lang in langs]
    cfg.train_ds.batch_size = args.batch
    cfg.train_ds.num_workers = 4
    for key in ("validation_ds", "test_ds"):
        if key in cfg:
            cfg[key].manifest_filepath = None
    return MultiSoftmaxRNNTModel(cfg=cfg, trainer=trainer)


def run(args: argparse.Namespace) -> None:
    import lightning.pytorch as pl
    import torch

    import nemo_tl  # noqa: F401
    class Timer(pl.Callback):
        def __init__(self):
            self.t0, self.t1 = None, None

        def on_train_batch_start(self, trainer, *a):
            if trainer.global_step == args.warmup:
                sync()
                self.t0 = time.perf_counter()

        def on_train_end(self, trainer, *a):
            sync()
            self.t1 = time.perf_counter()

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    timer = Timer()
    trainer = pl.Trainer(
        devices=args.devices, accelerator=args.accelerator, strategy="ddp" if args.devices > 1 else "auto",
        precision="bf16-mixed" if args.accelerator == "gpu" else 32, max_steps=args.warmup + args.steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        callbacks=[timer],
    )
    train = {"manifest_filepath": os.path.join(args.workdir, "train.json"), "sample_rate": 16000, "labels": EN,
             "batch_size": args.batch, "shuffle": True, "num_workers": 4, "pin_memory": True, "max_duration": 20.0}
    model = build_model(args, train, trainer)
    frozen = {}
    if args.model == "transfer":
        frozen = {k: v.detach().clone() for k, v in model.encoder.encoder[:4].state_dict().items()}
    trainer.fit(model)
    if trainer.global_rank != 0:
        return
    seconds = timer.t1 - timer.t0
    result = {
        "model": type(model).__name__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "devices": args.devices, "batch_per_gpu": args.batch,
        "steps": args.steps, "seconds": seconds, "utterances_per_s": args.devices * args.batch * args.steps / seconds,
    }
    if frozen:
        result["frozen_blocks_unchanged"] = all(
            torch.equal(frozen[k], v.cpu()) for k, v in model.encoder.encoder[:4].state_dict().items()
        )
    print(json.dumps(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--prepare", action="store_true")
    p.add_argument("--utterances", type=int, default=512)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--model", default="transfer", choices=["transfer", "distill", "multisoftmax"])
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out")
    p.add_argument("--config", default="quartznet_15x5", help="base model config (quartznet_tiny for a CPU smoke run)")
    p.add_argument("--accelerator", default="gpu")
    args = p.parse_args()
    if args.prepare:
        prepare(args.workdir, args.utterances, args.seconds, args.config)
    else:
        run(args)


if __name__ == "__main__":
    main()
