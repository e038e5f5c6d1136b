"""Model introspection (Kunze et al. 2017, §6.5, Fig. 7): how much each layer moved in fine-tuning.

    python -m nemo_tl.transfer.introspect BASE.nemo TUNED.nemo --out DIR

Writes ``DIR/layers.md`` and ``DIR/layers.json`` (per layer: mean |Δw|, max |Δw|, ‖Δw‖/‖w‖)
and PNG histograms of the weights and of the weight changes on a log10 scale
(``DIR/weights.png``, ``DIR/weight_changes.png``). Layers whose shapes differ (a decoder
rebuilt for a new alphabet) are compared on the rows the two share or skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

import nemo_tl  # noqa: F401
from nemo_tl.transfer.base import load_base_model
from nemo_tl.utils.atomic import atomic_write

_EPS = 1e-12


def weight_changes(base: torch.nn.Module, tuned: torch.nn.Module) -> list[dict]:
    """Per weight tensor (conv and linear kernels, more than one dimension) of ``tuned``: the change from ``base``.

    Returns a list of ``{"layer", "shape", "mean_abs_change", "max_abs_change", "relative_change"}``
    where relative_change is ‖Δw‖/‖w_base‖; tensors missing or of another shape in ``base`` are skipped.
    """
    base_params = dict(base.named_parameters())
    rows = []
    for name, w in tuned.named_parameters():
        b = base_params.get(name)
        if w.dim() < 2 or b is None or b.shape != w.shape:
            continue
        delta = (w.detach() - b.detach()).float()
        rows.append({
            "layer": name,
            "shape": list(w.shape),
            "mean_abs_change": delta.abs().mean().item(),
            "max_abs_change": delta.abs().max().item(),
            "relative_change": (delta.norm() / (b.detach().float().norm() + _EPS)).item(),
        })
    return rows


def _log10_hist(ax, values: np.ndarray, title: str) -> None:
    values = np.log10(np.abs(values) + _EPS)
    ax.hist(values, bins=60, range=(-8, 1), color="tab:blue")
    ax.set_title(title, fontsize=7)
    ax.tick_params(labelsize=6)


def plot_histograms(base: torch.nn.Module, tuned: torch.nn.Module, rows: list[dict], out_dir: str) -> list[str]:
    """Histograms of log10|w| (tuned) and log10|Δw| per layer; returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base_params, tuned_params = dict(base.named_parameters()), dict(tuned.named_parameters())
    paths = []
    for kind in ("weights", "weight_changes"):
        n = len(rows)
        cols = min(4, max(n, 1))
        fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(3 * cols, 2.2 * ((n + cols - 1) // cols)),
                                 squeeze=False)
        for ax, row in zip(axes.flat, rows):
            w = tuned_params[row["layer"]].detach().float()
            values = w if kind == "weights" else w - base_params[row["layer"]].detach().float()
            _log10_hist(ax, values.flatten().numpy(), row["layer"])
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        fig.suptitle(f"log10 |{'w' if kind == 'weights' else 'Δw'}| per layer", fontsize=9)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{kind}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def markdown(rows: list[dict]) -> str:
    lines = ["| layer | shape | mean abs Δw | max abs Δw | ‖Δw‖/‖w‖ |", "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['layer']} | {'x'.join(map(str, r['shape']))} | {r['mean_abs_change']:.3e} "
                     f"| {r['max_abs_change']:.3e} | {r['relative_change']:.3e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", help="the base model (.nemo path or NeMo pretrained name)")
    parser.add_argument("tuned", help="the fine-tuned model (.nemo path)")
    parser.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args(argv)
    from nemo.collections.asr.models import ASRModel

    base = load_base_model(args.base, what="base model", where="BASE", expected=ASRModel)
    tuned = load_base_model(args.tuned, what="tuned model", where="TUNED", expected=ASRModel)
    os.makedirs(args.out, exist_ok=True)
    rows = weight_changes(base, tuned)
    with atomic_write(os.path.join(args.out, "layers.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)
    table = markdown(rows)
    with atomic_write(os.path.join(args.out, "layers.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    pngs = plot_histograms(base, tuned, rows, args.out)
    print(table)
    print("written:", ", ".join([os.path.join(args.out, "layers.md"), *pngs]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
