"""Weight averaging of a base model and its fine-tuned version (arXiv 2210.15282).

    θ = (1 − λ) θ_base + λ θ_tuned

for every parameter and floating-point buffer (BatchNorm running statistics) the two models share
by name and shape. Output rows of labels/tokens both vocabularies hold are averaged row by row,
mapped as ``keep_shared`` maps them (blank with blank); rows only the tuned model has, integer
buffers (``num_batches_tracked``) and parameters only the tuned model has (adapters) come from the
tuned model. λ = 1 returns the tuned model exactly, λ = 0 the base on every shared row.

Usage::

    python -m nemo_tl.transfer.average BASE TUNED --weight 0.5 --out AVG.nemo

The result is the tuned model's class and config with averaged weights: a normal ``.nemo`` that
``ASRModel.restore_from`` reads without the base. Averaging is free (no training), so a sweep over
λ traces the source/target trade-off of one fine-tuning run.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from collections.abc import Sequence

import torch
from nemo.collections.asr.models import ASRModel

from nemo_tl.errors import input_error
from nemo_tl.transfer.vocabulary import mapped_output_rows
from nemo_tl.utils.nemo_file import check_nemo_file

__all__ = ["average_models", "average_state_dicts", "main"]

_WEIGHT_FIX = "give a weight λ in [0, 1]: 0 keeps the base, 1 the fine-tuned model, 0.5 their mean"


def _load(spec: str | ASRModel, *, what: str, where: str) -> ASRModel:
    """A model object, a local ``.nemo`` path or a NeMo pretrained name, on CPU, in eval mode."""
    if isinstance(spec, ASRModel):
        return spec
    if not isinstance(spec, str) or not spec:
        raise input_error(f"{what} must be a .nemo path or a model, got {spec!r}", where=where,
                          fix="give the path of a .nemo file")
    if os.path.exists(spec) or spec.endswith(".nemo"):
        check_nemo_file(spec, what=what, where=where)
        model = ASRModel.restore_from(spec, map_location=torch.device("cpu"))
    else:
        try:
            model = ASRModel.from_pretrained(spec, map_location=torch.device("cpu"))
        except Exception as e:  # NeMo raises many kinds; the user needs the name
            raise input_error(f"could not load {what} {spec!r}: {type(e).__name__}: {e}", where=where,
                              fix="give a local .nemo path, or a NeMo pretrained model name") from e
    return model.eval()


def _copy(model: ASRModel) -> ASRModel:
    """An independent copy of a NeMo model, through a temporary ``.nemo`` (NeMo models do not deepcopy)."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model.nemo")
        model.save_to(path)
        return ASRModel.restore_from(path, map_location=torch.device("cpu"))


def _checked_weight(weight: float, where: str) -> float:
    if isinstance(weight, bool) or not isinstance(weight, int | float) or math.isnan(weight) or not 0 <= weight <= 1:
        raise input_error(f"the averaging weight λ must be in [0, 1], got {weight!r}", where=where, fix=_WEIGHT_FIX)
    return float(weight)


def _check_architectures(base: ASRModel, tuned: ASRModel, mapped: set[str], where: str) -> None:
    """InputError unless every base parameter is in the tuned model with its shape (or is a mapped output)."""
    tuned_params = dict(tuned.named_parameters())
    missing, differ = [], []
    for name, p in base.named_parameters():
        t = tuned_params.get(name)
        if t is None:
            missing.append(name)
        elif t.shape != p.shape and name not in mapped:
            differ.append(f"{name}: base {tuple(p.shape)}, tuned {tuple(t.shape)}")
    if missing or differ:
        listed = [f"only in the base: {n}" for n in missing[:5]] + differ[:5]
        raise input_error(
            "the two models have different architectures; averaging needs the tuned model to be a fine-tuned "
            f"version of the base ({len(missing)} base parameter(s) missing, {len(differ)} of another shape):\n    "
            + "\n    ".join(listed),
            where=where,
            fix="average a model with the base it was fine-tuned from (model.transfer.base_model of the tuned run)",
        )


@torch.no_grad()
def average_state_dicts(
    base: dict[str, torch.Tensor],
    tuned: dict[str, torch.Tensor],
    weight: float,
    rows: Sequence[tuple[str, Sequence[int], Sequence[int]]] = (),
) -> dict[str, torch.Tensor]:
    """(1 − λ) base + λ tuned for every floating-point entry both hold with one shape; the rest from ``tuned``.

    Args:
        base, tuned: state dicts (name -> tensor).
        weight: λ in [0, 1].
        rows: ``(name, base_rows, new_rows)`` for output parameters whose rows map across vocabularies:
            row ``new_rows[i]`` of ``tuned[name]`` is averaged with row ``base_rows[i]`` of ``base[name]``;
            its other rows come from ``tuned``.
    Returns:
        A new state dict with the keys (and dtypes) of ``tuned``.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    mapped = {name: (list(b), list(n)) for name, b, n in rows}
    out = {}
    for name, t in tuned.items():
        b = base.get(name)
        b = None if b is None else b.to(t.device)  # the two models may live on different devices
        if b is None or not t.is_floating_point() or not b.is_floating_point():
            out[name] = t.clone()
        elif name in mapped:
            b_rows, n_rows = mapped[name]
            avg = t.clone()
            avg[n_rows] = ((1.0 - weight) * b[b_rows].to(t) + weight * t[n_rows]).to(t.dtype)
            out[name] = avg
        elif b.shape != t.shape or torch.equal(b, t):
            out[name] = t.clone()
        else:
            out[name] = ((1.0 - weight) * b.to(t) + weight * t).to(t.dtype)
    return out


def average_models(base: str | ASRModel, tuned: str | ASRModel, weight: float, *, where: str = "weight") -> ASRModel:
    """A copy of ``tuned`` with weights θ = (1 − λ) θ_base + λ θ_tuned (see the module docstring).

    Args:
        base: the model fine-tuning started from (model, ``.nemo`` path or pretrained name).
        tuned: the fine-tuned model (model or ``.nemo`` path); its class and config are kept.
        weight: λ in [0, 1].
    Raises:
        InputError: λ outside [0, 1], or models of different architectures.
    """
    weight = _checked_weight(weight, where)
    base_model = _load(base, what="base model", where="BASE")
    tuned_model = _load(tuned, what="tuned model", where="TUNED")
    if tuned_model is tuned:
        tuned_model = _copy(tuned_model)  # the caller's model stays as it was
    rows = mapped_output_rows(base_model, tuned_model)
    _check_architectures(base_model, tuned_model, {name for name, _, _ in rows}, where="BASE, TUNED")
    state = average_state_dicts(base_model.state_dict(), tuned_model.state_dict(), weight, rows)
    tuned_model.load_state_dict(state)
    return tuned_model.eval()


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m nemo_tl.transfer.average BASE TUNED --weight λ --out AVG.nemo``."""
    parser = argparse.ArgumentParser(
        prog="python -m nemo_tl.transfer.average",
        description="Average a base model and its fine-tuned version: θ = (1 − λ) θ_base + λ θ_tuned.",
    )
    parser.add_argument("base", help="the base .nemo (or NeMo pretrained name) fine-tuning started from")
    parser.add_argument("tuned", help="the fine-tuned .nemo")
    parser.add_argument("--weight", type=float, required=True, help="λ in [0, 1] (1: the tuned model)")
    parser.add_argument("--out", required=True, help="the averaged .nemo to write")
    args = parser.parse_args(argv)

    import nemo_tl  # noqa: F401  (registers the nemo_tl target prefix for models written by nemo_tl)
    from nemo_tl.utils.training import quiet_restore_logs

    quiet_restore_logs()
    try:
        averaged = average_models(args.base, args.tuned, args.weight, where="--weight")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    averaged.save_to(args.out)
    print(f"averaged model (λ = {args.weight:g}) written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
