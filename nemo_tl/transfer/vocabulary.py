"""Moving a CTC decoder from one character vocabulary to another (Kunze et al. 2017, §5)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def shared_label_rows(base_labels: Sequence[str], new_labels: Sequence[str]) -> tuple[list[int], list[int]]:
    """Output rows that correspond across two vocabularies, as ``keep_shared`` maps them.

    Returns:
        ``(base_rows, new_rows)``: for every label of ``new_labels`` that ``base_labels`` holds, its
        row in each decoder, then the blank (the last row of each: ``len(labels)``).
    """
    base_index = {label: i for i, label in enumerate(base_labels)}
    pairs = [(base_index[label], i) for i, label in enumerate(new_labels) if label in base_index]
    pairs.append((len(base_labels), len(new_labels)))  # blank stays blank
    return [b for b, _ in pairs], [n for _, n in pairs]


@torch.no_grad()
def transfer_decoder_rows(
    base_decoder: torch.nn.Module,
    base_labels: Sequence[str],
    new_decoder: torch.nn.Module,
    new_labels: Sequence[str],
    new_label_init: str = "zero",
) -> dict[str, int]:
    """Copy the output rows of labels both vocabularies hold from ``base_decoder`` to ``new_decoder``.

    Every parameter whose first dimension is the number of classes with blank (the logit
    projection ``decoder_layers``, and the log σ² projection of an uncertainty decoder) is
    treated alike: row ``i`` of the new decoder gets the base row of the same label and the
    blank (the last row) gets the base blank row. Logit rows of labels the base lacks are set
    to zero (``new_label_init="zero"``) or keep their fresh initialization (``"random"``);
    rows of other heads (log σ²) always keep their fresh initialization, since a zero log σ²
    would mean unit noise variance.

    Returns:
        ``{"shared": n, "new": m}``: how many labels were copied and how many are new.
    """
    rows_new = len(new_labels) + 1
    rows_base = len(base_labels) + 1
    src, dst = shared_label_rows(base_labels, new_labels)
    base_set = set(base_labels)
    new_rows = [i for i, label in enumerate(new_labels) if label not in base_set]

    base_params = dict(base_decoder.named_parameters())
    for name, param in new_decoder.named_parameters():
        base_param = base_params.get(name)
        if base_param is None or param.shape[0] != rows_new or base_param.shape[0] != rows_base:
            continue
        if base_param.shape[1:] != param.shape[1:]:
            continue
        param[dst] = base_param[src].to(param.dtype)
        if new_label_init == "zero" and new_rows and name.startswith("decoder_layers."):
            param[new_rows] = 0.0
    return {"shared": len(src) - 1, "new": len(new_rows)}
