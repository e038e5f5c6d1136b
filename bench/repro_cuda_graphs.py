"""Plain NeMo: two CUDA-graph greedy RNN-T decoders, replayed in turn, per NeMo graph mode.

    python bench/repro_cuda_graphs.py [--modes full_graph no_while_loops] [--out repro.json]

Why MultiSoftmaxRNNTModel decodes with NeMo's ``no_while_loops`` graphs and not ``full_graph``
(docs/PERFORMANCE.md, section 4). Two NeMo ``EncDecRNNTModel``s (nemo_tl only writes their
config: bench_multisoftmax.py's encoder at 4 layers, the En-IN and Hi-IN label sets), nothing of
nemo_tl in the decoding. Both decode the same encoder output: first without graphs (the
reference texts), then with NeMo's label-looping decoder forced into the graph mode, in the order
A, B, A, B, A, B. Each mode runs in its own process, as a crash leaves the CUDA context unusable.
It prints, per mode, whether every call finished and gave the reference texts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ORDER = "ABABAB"


def child(mode: str) -> None:
    import bench_multisoftmax as bm
    import torch
    from common import base_parser, finish_args
    from nemo.collections.asr.models import EncDecRNNTModel
    from omegaconf import open_dict

    from nemo_tl.compat import force_cuda_graphs_mode

    p = base_parser("repro")
    bm.add_model_args(p)
    args = p.parse_args(["--device", "cuda", "--layers", "4"])
    finish_args(args, precisions=("fp32",), warmup=1, steps=1)
    bm.finish_model_args(args)
    vocabularies = bm.synthetic_vocabularies({lang: n for lang, (n, _) in bm.LANGUAGES.items()})

    def build(labels):
        cfg = bm.nemo_rnnt_cfg(args, labels=labels)
        with open_dict(cfg):
            cfg.decoding.strategy = "greedy_batch"
            cfg.decoding.greedy.loop_labels = True
            cfg.decoding.greedy.use_cuda_graph_decoder = True
        return EncDecRNNTModel(cfg=cfg).to("cuda").eval()

    models = {"A": build(vocabularies["en"]), "B": build(vocabularies["hi"])}
    audio, audio_len = bm.language_batches(args, vocabularies)["en"]["own"][:2]
    with torch.inference_mode():
        encoded, encoded_len = models["A"].forward(input_signal=audio, input_signal_length=audio_len)

    def texts(name):
        with torch.inference_mode():
            hyps = models[name].decoding.rnnt_decoder_predictions_tensor(encoded, encoded_len, return_hypotheses=True)
        torch.cuda.synchronize()
        return [h.text for h in hyps]

    reference = {}
    for name, model in models.items():
        force_cuda_graphs_mode(model.decoding.decoding, "no_graphs")
        reference[name] = texts(name)
        force_cuda_graphs_mode(model.decoding.decoding, mode)
    for i, name in enumerate(ORDER):
        differing = sum(a != b for a, b in zip(texts(name), reference[name]))
        print(json.dumps({"call": i, "decoder": name, "differing_texts": differing}), flush=True)


def run_mode(mode: str) -> dict:
    r = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", mode], capture_output=True, text=True, timeout=300
    )
    calls = [json.loads(line) for line in r.stdout.splitlines() if line.startswith('{"call"')]
    errors = [line for line in (r.stdout + r.stderr).splitlines() if "Error: " in line]
    return {
        "mode": mode,
        "returncode": r.returncode,
        "calls_finished": len(calls),
        "calls": len(ORDER),
        "differing_texts": sum(c["differing_texts"] for c in calls),
        "error": errors[-1] if r.returncode else None,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--modes", nargs="+", choices=("full_graph", "no_while_loops"), default=["full_graph", "no_while_loops"]
    )
    p.add_argument("--out", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child)
        return []
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU (CUDA graphs)")
    results = [run_mode(mode) for mode in args.modes]
    print("| NeMo graph mode | calls finished | texts differing from no graphs | error |")
    print("|---|---|---|---|")
    for r in results:
        print(f"| {r['mode']} | {r['calls_finished']} of {r['calls']} | {r['differing_texts']} | {r['error'] or ''} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "results": results}, f, indent=1
            )
    return results


if __name__ == "__main__":
    main()
