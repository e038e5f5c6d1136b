"""Training-step cost of the forgetting regularizers (LwF cached and online, L2-SP, EWC) vs plain fine-tuning.

    python bench/bench_forgetting.py [--device cuda] [--out forgetting.json] [--smoke]

QuartzNet 15x5 (``conf/quartznet_15x5.yaml``, random weights) is the base, saved to a temporary
``.nemo``; every variant is a TransferCTCModel fine-tuned from it (same labels), built through the
config path with its ``model.transfer.regularization`` section: plain (no section), LwF online (the
frozen base runs on every batch), LwF cached (the base's outputs arrive with the batch, as the
teacher-cache loader delivers them), L2-SP and EWC (Fisher from a small tone manifest, computed
before timing). Batch 32 of 10 s random audio, 150-character transcripts; one step is
``on_train_batch_start``, ``training_step`` under autocast, ``backward``, ``on_before_optimizer_step``
(where L2-SP and EWC add their gradients), NovoGrad step, variants interleaved (bench/common.py). ``base forward`` times the frozen base alone on the batch.
``LwF online, 20% named`` is online LwF with ``lwf.manifests`` on replayed source data that makes up 20% of
the batch (mixed training data): the base runs on the whole batch and the other utterances' terms
are masked, so its goal is online LwF's.

Goals (issue 19): LwF cached ≤ 1.10x plain; LwF online ≤ 1 + base forward / plain step + 0.05;
L2-SP and EWC ≤ 1.05x.
"""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_transfer_ctc import quartznet_cfg  # noqa: E402
from common import (  # noqa: E402
    NOVOGRAD,
    ROOT,
    Results,
    Variant,
    attach_step_trainer,
    autocast,
    base_parser,
    finish_args,
    fmt,
    markdown_table,
    measure,
    random_batch,
    run_section,
    setup_optimizer,
    training_step_variant,
    verdict,
)

GOALS = {"LwF cached": 1.10, "L2-SP": 1.05, "EWC": 1.05}
NAMED_SHARE = 0.2  # "LwF online, 20% named": the replayed source's share of the batch
SECTIONS = {
    "plain": None,
    "LwF online": {"lwf": {"weight": 1.0, "temperature": 2.0}},
    "LwF cached": {"lwf": {"weight": 1.0, "temperature": 2.0}},
    "LwF online, 20% named": {"lwf": {"weight": 1.0, "temperature": 2.0, "manifests": None}},
    "L2-SP": {"l2sp": {"weight": 0.01}},
    "EWC": {"ewc": {"weight": 10.0, "manifest": None, "batches": 2, "batch_size": 2}},
}


def build(args, workdir: str):
    """The base (saved to ``workdir``), one model per variant on ``args.device``, and their optimizers."""
    import torch
    from nemo.collections.asr.models import EncDecCTCModel
    from omegaconf import OmegaConf

    import nemo_tl  # noqa: F401
    from nemo_tl.data.synthetic import make_tone_manifest
    from nemo_tl.models import TransferCTCModel

    cfg = quartznet_cfg(os.path.join(ROOT, args.config))
    base = EncDecCTCModel(cfg=cfg)
    base_path = os.path.join(workdir, "base.nemo")
    base.save_to(base_path)
    manifest = make_tone_manifest(workdir, ["one two", "three four", "five six", "seven eight"], name="source")
    # the mixed training data of the named-manifests variant: long enough for the config's SpecCutout
    sentences = ["one two three four five six seven eight nine", "ten eleven twelve thirteen fourteen fifteen"]
    target = make_tone_manifest(workdir, sentences, name="target")
    replayed = make_tone_manifest(workdir, sentences, name="replayed", seed=2)
    models, optimizers = {}, {}
    for name, section in SECTIONS.items():
        if section is not None and "ewc" in section:
            section = {"ewc": {**section["ewc"], "manifest": manifest}}
        if section is not None and "manifests" in section.get("lwf", {}):
            section = {"lwf": {**section["lwf"], "manifests": [replayed]}}
        full = OmegaConf.merge(cfg, {"transfer": {"base_model": base_path, "regularization": section}})
        model = TransferCTCModel(cfg=full, base_model=base).to(args.device).train()
        attach_step_trainer(model)
        model.trainer.default_root_dir = workdir  # where EWC caches its Fisher
        if name == "LwF online, 20% named":  # replay: the target data and the replayed source, mixed
            model.setup_training_data({"manifest_filepath": [target, replayed], "sample_rate": 16000,
                                       "labels": list(model.decoder.vocabulary), "batch_size": 2,
                                       "mixing": {"weights": [0.8, 0.2]}})
        model._prepare_regularization()  # what on_fit_start does: load the base, anchors, Fisher
        optimizers[name] = setup_optimizer(model, NOVOGRAD)
        models[name] = model
    torch.manual_seed(args.seed)
    return models, optimizers, base.to(args.device).eval()


def cached_batch(batch, base, precision: str, device: str):
    """``batch`` as the teacher-cache loader delivers it: with the base's outputs on it."""
    from nemo_tl.data.batches import AudioTextBatch
    from nemo_tl.distill.cache import CachedTeacherBatch
    from nemo_tl.distill.teachers import teacher_outputs

    with autocast(device, precision):
        outputs = teacher_outputs(base, batch[0], batch[1])
    outputs.log_probs = outputs.log_probs.float()
    return AudioTextBatch(*batch, teacher=CachedTeacherBatch([outputs]))


def replayed_share(batch, share: float):
    """``batch`` as a mixed loader delivers it, the last ``share`` of its utterances from the replayed manifest (1)."""
    import torch

    from nemo_tl.data.batches import AudioTextBatch

    ids = torch.zeros(len(batch[0]), dtype=torch.long, device=batch[0].device)
    ids[len(ids) - max(1, round(share * len(ids))):] = 1
    return AudioTextBatch(*batch, manifest_ids=ids)


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="default conf/quartznet_15x5.yaml (smoke: conf/quartznet_tiny.yaml)")
    p.add_argument("--batch-size", type=int, default=None, help="default 32 (smoke: 2)")
    p.add_argument("--seconds", type=float, default=None, help="audio length; default 10 (smoke: 1.5)")
    p.add_argument("--chars", type=int, default=None, help="transcript length; default 15 per second")
    args = p.parse_args(argv)
    finish_args(args, precisions=("fp32", "bf16"), warmup=3, steps=20)
    args.config = args.config or ("conf/quartznet_tiny.yaml" if args.smoke else "conf/quartznet_15x5.yaml")
    args.batch_size = args.batch_size or (2 if args.smoke else 32)
    args.seconds = args.seconds or (1.5 if args.smoke else 10.0)
    args.chars = args.chars or int(15 * args.seconds)

    results = Results("bench_forgetting", args)
    with tempfile.TemporaryDirectory() as workdir:
        models, optimizers, base = build(args, workdir)
        batch = random_batch(args.batch_size, args.seconds, args.chars, len(models["plain"].decoder.vocabulary),
                             args.device)
        named_batch = replayed_share(batch, NAMED_SHARE)
        results.data["setup"] = {
            "config": args.config,
            "parameters_m": round(sum(q.numel() for q in base.parameters()) / 1e6, 2),
            "batch": args.batch_size,
            "seconds": args.seconds,
            "chars": args.chars,
            "optimizer": NOVOGRAD,
            "sections": {k: v for k, v in SECTIONS.items()},
        }

        def table():
            rows, out = [], {}
            for precision in args.precisions:
                variants = []
                for name, model in models.items():
                    b = cached_batch(batch, base, precision, args.device) if name == "LwF cached" else batch
                    b = named_batch if name == "LwF online, 20% named" else b
                    variants.append(training_step_variant(name, model, optimizers[name], b, args.device, precision,
                                                          also_resident=model._forgetting_base))

                def forward(precision=precision):
                    from nemo_tl.distill.teachers import teacher_outputs

                    with autocast(args.device, precision):
                        teacher_outputs(base, batch[0], batch[1])

                variants.append(Variant("base forward", forward))
                r = measure(variants, args.device, warmup=args.warmup, steps=args.steps)
                plain = r["plain"]["median_ms"]
                forward_share = r["base forward"]["median_ms"] / plain
                online = 1.0 + forward_share + 0.05  # the base runs on the whole batch in both
                goals = {**GOALS, "LwF online": online, "LwF online, 20% named": online}
                out[precision] = {"by_variant": r, "goals": goals,
                                  "ratios": {n: r[n]["median_ms"] / plain for n in models}}
                results.add("step_time", out)
                for name in [*models, "base forward"]:
                    ratio = r[name]["median_ms"] / plain
                    goal = goals.get(name)
                    rows.append([precision, name, fmt(r[name]["median_ms"]), f"{ratio:.3f}",
                                 "" if goal is None else f"≤ {goal:.2f}", "" if goal is None else verdict(ratio, goal),
                                 fmt(r[name].get("peak_gib"), ".2f")])
            print(f"\n### Regularized fine-tuning step vs plain ({args.steps} interleaved steps)\n")
            print(markdown_table(["precision", "variant", "ms", "vs plain", "goal", "", "peak GiB"], rows))

        run_section(results, "step_time", table)
    results.finish()
    return results.data


if __name__ == "__main__":
    main()
