"""Model introspection (Kunze et al. 2017, §6.5, Fig. 7): how much each layer moved in fine-tuning.

    python -m nemo_tl.transfer.introspect BASE.nemo TUNED.nemo --out DIR

Writes ``DIR/layers.md`` and ``DIR/layers.json`` (per layer: mean |Δw|, max |Δw|, ‖Δw‖/‖w‖)
and PNG histograms on a log10 scale of both models' weights (``DIR/weights.png``) and of the
weight changes (``DIR/weight_changes.png``), titled with the two models' paths. An output layer
over another vocabulary (a CTC decoder, an RNN-T prediction embedding or joint output; characters or
SentencePiece pieces) is compared on the rows of the tokens both models hold, the blank and any TDT
duration outputs, mapped by token string as ``keep_shared`` maps them; a layer that cannot be compared
is listed with the reason under the table. Any NeMo ASR model: QuartzNet, Conformer and FastConformer
encoders; CTC, RNN-T, TDT and hybrid heads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

import nemo_tl  # noqa: F401
from nemo_tl.errors import InputError, input_error
from nemo_tl.transfer.base import load_base_model
from nemo_tl.transfer.vocabulary import mapped_output_rows, shared_label_rows
from nemo_tl.utils.atomic import atomic_write

_EPS = 1e-12
_LOG_RANGE = (-12.5, 1.0)  # log10 |x|: 1e-12 (exactly zero, plus _EPS) to 10


def _labels(model: torch.nn.Module) -> list[str] | None:
    vocabulary = getattr(getattr(model, "decoder", None), "vocabulary", None)
    return list(vocabulary) if vocabulary is not None else None


def _token_row_maps(base: torch.nn.Module, tuned: torch.nn.Module) -> tuple[dict[str, tuple[list, list]], int, str]:
    """``({output-row parameter: (base rows, tuned rows)}, tuned token count, "labels"|"tokens")`` for NeMo
    models over different vocabularies (:func:`~nemo_tl.transfer.vocabulary.mapped_output_rows`); empty
    when the vocabularies agree or the models are not NeMo ASR models."""
    from nemo_tl.transfer.tokens import model_tokens

    try:
        base_tokens, tuned_tokens = model_tokens(base), model_tokens(tuned)
        if base_tokens == tuned_tokens:
            return {}, len(tuned_tokens), ""
        maps = {name: (src, dst) for name, src, dst in mapped_output_rows(base, tuned)}
    except ValueError:  # not a NeMo ASR model, or heads that differ beyond their vocabulary
        return {}, 0, ""
    kind = "tokens" if getattr(tuned, "tokenizer", None) is not None else "labels"
    return maps, len(tuned_tokens), kind


def aligned_weights(
    base: torch.nn.Module, tuned: torch.nn.Module
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor, str]], list[dict]]:
    """The weight tensors (more than one dimension) of ``tuned`` and their counterparts in ``base``.

    An output layer over the labels (first dimension = labels + blank: the CTC decoder) of models
    with different vocabularies is compared on the rows of the labels both hold and the blank,
    mapped by label as ``keep_shared`` maps them (:func:`~nemo_tl.transfer.vocabulary.shared_label_rows`);
    other tensors are compared whole when the shapes agree.

    Returns:
        ``({layer: (w_base, w_tuned, compared_on)}, left_out)``, where ``compared_on`` says which
        rows were compared and ``left_out`` lists the tensors that could not be, as
        ``{"layer", "shape", "reason"}``.
    """
    base_params = dict(base.named_parameters())
    row_maps, n_tokens, kind = _token_row_maps(base, tuned)
    base_labels, tuned_labels = _labels(base), _labels(tuned)
    relabelled = base_labels is not None and tuned_labels is not None and base_labels != tuned_labels
    pairs, left_out = {}, []
    for name, w in tuned.named_parameters():
        if w.dim() < 2:
            continue
        b = base_params.get(name)
        w = w.detach().float()
        if b is None:
            left_out.append({"layer": name, "shape": list(w.shape), "reason": "not in the base model"})
            continue
        b = b.detach().float()
        if name in row_maps:
            base_rows, tuned_rows = row_maps[name]
            tail = w.shape[0] - n_tokens  # blank, then TDT durations
            extra = "blank" if tail == 1 else f"blank + {tail - 1} durations"
            note = f"{len(tuned_rows) - tail} shared {kind} + {extra} ({len(tuned_rows)} of {w.shape[0]} rows)"
            pairs[name] = (b[base_rows], w[tuned_rows], note)
            continue
        label_rows = (
            relabelled
            and w.shape[0] == len(tuned_labels) + 1
            and b.shape[0] == len(base_labels) + 1
            and w.shape[1:] == b.shape[1:]
        )
        if label_rows:
            base_rows, tuned_rows = shared_label_rows(base_labels, tuned_labels)
            note = f"{len(tuned_rows) - 1} shared labels + blank ({len(tuned_rows)} of {w.shape[0]} rows)"
            pairs[name] = (b[base_rows], w[tuned_rows], note)
        elif b.shape == w.shape:
            pairs[name] = (b, w, "all")
        else:
            left_out.append({"layer": name, "shape": list(w.shape),
                             "reason": f"shape {'x'.join(map(str, w.shape))} against the base's "
                                       f"{'x'.join(map(str, b.shape))}, and no label mapping applies"})
    return pairs, left_out


def weight_changes(base: torch.nn.Module, tuned: torch.nn.Module) -> list[dict]:
    """Per weight tensor (conv and linear kernels, more than one dimension) of ``tuned``: the change from ``base``.

    Returns a list of ``{"layer", "shape", "compared_on", "mean_abs_change", "max_abs_change",
    "relative_change"}`` where relative_change is ‖Δw‖/‖w_base‖, over the tensors (or, for a
    decoder over another vocabulary, the shared-label rows) that :func:`aligned_weights` pairs;
    the tensors it leaves out are not in the list.
    """
    shapes = {name: list(w.shape) for name, w in tuned.named_parameters()}
    rows = []
    for name, (b, w, compared_on) in aligned_weights(base, tuned)[0].items():
        delta = w - b
        rows.append({
            "layer": name,
            "shape": shapes[name],
            "compared_on": compared_on,
            "mean_abs_change": delta.abs().mean().item(),
            "max_abs_change": delta.abs().max().item(),
            "relative_change": (delta.norm() / (b.norm() + _EPS)).item(),
        })
    return rows


def _log10_hist(ax, series: list[tuple[np.ndarray, str, str]], title: str, xlabel: str) -> None:
    """Histograms of log10|x| of each (values, label, colour) on ``ax``."""
    for values, label, color in series:
        ax.hist(np.log10(np.abs(values) + _EPS), bins=60, range=_LOG_RANGE, histtype="step", color=color,
                label=label)
    if all(not np.any(values) for values, _, _ in series):
        ax.text(0.5, 0.5, "all exactly 0\n(unchanged)", transform=ax.transAxes, ha="center", va="center",
                fontsize=7)
    ax.set_title(title, fontsize=7)
    ax.set_xlabel(xlabel, fontsize=6)
    ax.set_ylabel("count", fontsize=6)
    ax.tick_params(labelsize=6)


def plot_histograms(base: torch.nn.Module, tuned: torch.nn.Module, rows: list[dict], out_dir: str,
                    names: tuple[str, str] = ("base", "tuned")) -> list[str]:
    """Histograms per layer of ``rows``: log10|w| of both models (``weights.png``) and log10|Δw| of
    tuned against base (``weight_changes.png``); ``names`` (base, tuned: e.g. their paths) go into
    the titles. Returns the PNG paths."""
    from nemo_tl.utils.extras import require

    require("matplotlib", "plots").use("Agg")
    import matplotlib.pyplot as plt

    pairs = aligned_weights(base, tuned)[0]
    base_params, tuned_params = dict(base.named_parameters()), dict(tuned.named_parameters())
    base_name, tuned_name = names
    titles = {
        "weights": f"log10 |w| per layer: base {base_name} (grey), tuned {tuned_name} (blue)",
        "weight_changes": f"log10 |Δw| per layer, Δw = w(tuned {tuned_name}) − w(base {base_name})",
    }
    paths = []
    for kind in ("weights", "weight_changes"):
        n = len(rows)
        cols = min(4, max(n, 1))
        fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(3 * cols, 2.4 * ((n + cols - 1) // cols)),
                                 squeeze=False)
        for ax, row in zip(axes.flat, rows):
            layer = row["layer"]
            if kind == "weights":  # every row of both tensors
                series = [(base_params[layer].detach().float().flatten().numpy(), "base", "tab:gray"),
                          (tuned_params[layer].detach().float().flatten().numpy(), "tuned", "tab:blue")]
                _log10_hist(ax, series, layer, "log10 |w|  (0 at -12)")
            else:  # the compared rows only
                b, w, compared_on = pairs[layer]
                title = layer if compared_on == "all" else f"{layer}\n({compared_on})"
                _log10_hist(ax, [((w - b).flatten().numpy(), "Δw", "tab:blue")], title, "log10 |Δw|  (0 at -12)")
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        if kind == "weights" and n:
            axes.flat[0].legend(fontsize=6)
        fig.suptitle(titles[kind], fontsize=9)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{kind}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def markdown(rows: list[dict], left_out: list[dict] | tuple = ()) -> str:
    """The per-layer table of :func:`weight_changes`, then the layers left out and why."""
    lines = ["| layer | shape | compared on | mean abs Δw | max abs Δw | ‖Δw‖/‖w‖ |", "|---|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['layer']} | {'x'.join(map(str, r['shape']))} | {r.get('compared_on', 'all')} "
                     f"| {r['mean_abs_change']:.3e} | {r['max_abs_change']:.3e} | {r['relative_change']:.3e} |")
    if left_out:
        lines += ["", "Left out (not comparable with the base):"]
        lines += [f"- {r['layer']}: {r['reason']}" for r in left_out]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", help="the base model (.nemo path or NeMo pretrained name)")
    parser.add_argument("tuned", help="the fine-tuned model (.nemo path)")
    parser.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args(argv)
    from nemo.collections.asr.models import ASRModel

    from nemo_tl.utils.training import quiet_restore_logs

    quiet_restore_logs()

    try:
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            raise input_error(
                f"{args.out!r} is an existing file, not a directory",
                where="--out",
                fix="give a directory path for the table and the histograms",
            )
        base = load_base_model(args.base, what="base model", where="BASE", expected=ASRModel, vocabulary="any")
        tuned = load_base_model(args.tuned, what="tuned model", where="TUNED", expected=ASRModel, vocabulary="any")
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    rows = weight_changes(base, tuned)
    with atomic_write(os.path.join(args.out, "layers.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)
    table = markdown(rows, aligned_weights(base, tuned)[1])
    with atomic_write(os.path.join(args.out, "layers.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    try:
        pngs = plot_histograms(base, tuned, rows, args.out, names=(args.base, args.tuned))
    except ImportError as e:  # without nemo_tl[plots] the table is still written
        pngs = []
        print(f"histograms not written: {e}", file=sys.stderr)
    print(table)
    print("written:", ", ".join([os.path.join(args.out, "layers.md"), *pngs]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
