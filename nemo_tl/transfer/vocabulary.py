"""Moving output rows from one vocabulary to another (Kunze et al. 2017, §5): CTC decoders, RNN-T heads.

``keep_shared`` maps tokens by their string (a character label, or a SentencePiece piece with its
word-boundary mark '▁' as it is). A head's output-row parameters hold one row per token, then a
*tail* of rows that belong to no token: the blank (CTC decoder: the last row; RNN-T prediction
embedding: row V, NeMo's ``padding_idx``; RNN-T joint output: row V) and a TDT joint's duration
outputs after it. Token rows are copied by string and the tail is copied whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "NEW_ROW_INITS", "mapped_output_rows", "output_row_parameters", "shared_label_rows", "shared_token_rows",
    "transfer_decoder_rows", "transfer_rnnt_rows",
]

NEW_ROW_INITS = ("zero", "random", "compose")


def shared_token_rows(base_tokens: Sequence[str], new_tokens: Sequence[str]) -> tuple[list[int], list[int]]:
    """``(base_rows, new_rows)``: for every token of ``new_tokens`` that ``base_tokens`` holds, its index in each."""
    base_index = {token: i for i, token in enumerate(base_tokens)}
    pairs = [(base_index[token], i) for i, token in enumerate(new_tokens) if token in base_index]
    return [b for b, _ in pairs], [n for _, n in pairs]


def shared_label_rows(base_labels: Sequence[str], new_labels: Sequence[str]) -> tuple[list[int], list[int]]:
    """Output rows of a CTC decoder that correspond across two vocabularies, as ``keep_shared`` maps them.

    Returns:
        ``(base_rows, new_rows)``: for every label of ``new_labels`` that ``base_labels`` holds, its
        row in each decoder, then the blank (the last row of each: ``len(labels)``).
    """
    src, dst = shared_token_rows(base_labels, new_labels)
    return [*src, len(base_labels)], [*dst, len(new_labels)]  # blank stays blank


def _row_map(
    base_tokens: Sequence[str], base_rows: int, new_tokens: Sequence[str], new_rows: int
) -> tuple[list[int], list[int]]:
    """Token rows by string, then the tail rows (blank, durations) pairwise; ValueError if the tails differ."""
    tail_base, tail_new = base_rows - len(base_tokens), new_rows - len(new_tokens)
    if tail_base != tail_new or tail_base < 0:
        raise ValueError(
            f"the heads differ beyond their tokens: {base_rows} rows for {len(base_tokens)} base tokens, "
            f"{new_rows} rows for {len(new_tokens)} new tokens (blank/duration rows {tail_base} vs {tail_new})"
        )
    src, dst = shared_token_rows(base_tokens, new_tokens)
    return src + list(range(len(base_tokens), base_rows)), dst + list(range(len(new_tokens), new_rows))


def _check_init(new_label_init: str, compose_sources: Mapping[int, Sequence[int]] | None) -> None:
    if new_label_init not in NEW_ROW_INITS:
        raise ValueError(f"new_label_init must be one of {NEW_ROW_INITS}, got {new_label_init!r}")
    if new_label_init == "compose" and compose_sources is None:
        raise ValueError("new_label_init='compose' needs compose_sources (new token index -> base token indices)")


def _set_rows(
    param: torch.Tensor,
    base_param: torch.Tensor,
    src: list[int],
    dst: list[int],
    new_only: list[int],
    new_label_init: str,
    compose_sources: Mapping[int, Sequence[int]] | None,
) -> None:
    """Copy rows ``src`` of ``base_param`` to rows ``dst`` of ``param``; initialize the rows ``new_only``."""
    if base_param.shape[1:] != param.shape[1:]:
        raise ValueError(f"row shapes differ: base {tuple(base_param.shape)}, new {tuple(param.shape)}")
    param[dst] = base_param[src].to(param)  # the base may sit on another device (a model just trained on a GPU)
    if not new_only or new_label_init == "random":
        return
    for i in new_only:
        sources = list((compose_sources or {}).get(i, ())) if new_label_init == "compose" else []
        param[i] = base_param[sources].mean(0).to(param) if sources else 0.0


def _copy_whole(base_module: torch.nn.Module, new_module: torch.nn.Module, skip: set[str]) -> None:
    """Copy every parameter not in ``skip`` from ``base_module``; ValueError when one is missing or differs."""
    base_params = dict(base_module.named_parameters())
    for name, param in new_module.named_parameters():
        if name in skip:
            continue
        base_param = base_params.get(name)
        if base_param is None or base_param.shape != param.shape:
            got = None if base_param is None else tuple(base_param.shape)
            raise ValueError(f"parameter {name}: new shape {tuple(param.shape)}, base shape {got}")
        param.copy_(base_param)


@torch.no_grad()
def transfer_decoder_rows(
    base_decoder: torch.nn.Module,
    base_labels: Sequence[str],
    new_decoder: torch.nn.Module,
    new_labels: Sequence[str],
    new_label_init: str = "zero",
    compose_sources: Mapping[int, Sequence[int]] | None = None,
) -> dict[str, int]:
    """Copy the output rows of tokens both vocabularies hold from a CTC ``base_decoder`` to ``new_decoder``.

    Every parameter whose first dimension is the number of classes with blank (the logit
    projection ``decoder_layers``, weight ``(V+1, D, 1)`` and bias ``(V+1,)``, and the log σ²
    projection of an uncertainty decoder) is treated alike: row ``i`` of the new decoder gets the
    base row of the same token and the blank (the last row) gets the base blank row. Logit rows of
    tokens the base lacks are set to zero (``new_label_init="zero"``), keep their fresh
    initialization (``"random"``) or get the mean of the base rows ``compose_sources[i]``
    (``"compose"``; zero when it lists none). Rows of other heads (log σ²) always keep their fresh
    initialization, since a zero log σ² would mean unit noise variance.

    Returns:
        ``{"shared": n, "new": m}``: how many tokens were copied and how many are new.
    """
    _check_init(new_label_init, compose_sources)
    rows_new, rows_base = len(new_labels) + 1, len(base_labels) + 1
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
        logits = name.startswith("decoder_layers.")
        _set_rows(param, base_param, src, dst, new_rows if logits else [],
                  new_label_init if logits else "random", compose_sources)
    return {"shared": len(src) - 1, "new": len(new_rows)}


def _embedding(decoder: torch.nn.Module) -> torch.nn.Embedding:
    prediction = getattr(decoder, "prediction", None)
    embed = prediction["embed"] if isinstance(prediction, torch.nn.ModuleDict) and "embed" in prediction else None
    if not isinstance(embed, torch.nn.Embedding):
        raise ValueError(f"{type(decoder).__name__} has no prediction['embed'] Embedding (an RNNTDecoder has one)")
    return embed


def _joint_output(joint: torch.nn.Module) -> torch.nn.Linear:
    net = getattr(joint, "joint_net", None)
    last = net[-1] if isinstance(net, torch.nn.Sequential) and len(net) else None
    if not isinstance(last, torch.nn.Linear):
        raise ValueError(f"{type(joint).__name__} has no joint_net ending in a Linear (an RNNTJoint has one)")
    return last


def _joint_output_name(joint: torch.nn.Module) -> str:
    return f"joint_net.{len(joint.joint_net) - 1}"


@torch.no_grad()
def transfer_rnnt_rows(
    base_decoder: torch.nn.Module,
    base_joint: torch.nn.Module,
    base_tokens: Sequence[str],
    new_decoder: torch.nn.Module,
    new_joint: torch.nn.Module,
    new_tokens: Sequence[str],
    new_label_init: str = "zero",
    compose_sources: Mapping[int, Sequence[int]] | None = None,
) -> dict[str, int]:
    """Start an RNN-T head (NeMo ``RNNTDecoder`` + ``RNNTJoint``) for ``new_tokens`` from a base head.

    Works on plain NeMo modules. Every vocabulary-independent parameter (the prediction LSTM,
    the joint's encoder and prediction projections) is copied whole. The output-row parameters are
    mapped by token string:

    - the prediction embedding ``prediction['embed'].weight``, ``(V+1, H)`` with the blank (its
      ``padding_idx``) at row V (``(V, H)`` without ``blank_as_pad``);
    - the joint's output layer ``joint_net[-1]`` weight ``(V+1+E, J)`` and bias ``(V+1+E,)``: tokens,
      blank at row V, then E extra outputs (a TDT joint's durations), copied whole.

    Rows of tokens the base lacks are zero (``"zero"``), keep their fresh initialization
    (``"random"``) or get the mean of the base rows ``compose_sources[i]`` (``"compose"``, the
    base indices of the pieces the base tokenizer splits new token ``i`` into; zero when none).

    Raises:
        ValueError: the two heads differ in anything but the vocabulary size (prediction or joint
            widths, blank handling, number of extra outputs), or a bad ``new_label_init``.

    Returns:
        ``{"shared": n, "new": m}``: target tokens found in the base vocabulary, and new ones.
    """
    _check_init(new_label_init, compose_sources)
    base_set = set(base_tokens)
    new_only = [i for i, token in enumerate(new_tokens) if token not in base_set]
    heads = (
        (base_decoder, new_decoder, _embedding(base_decoder), _embedding(new_decoder), "prediction.embed"),
        (base_joint, new_joint, _joint_output(base_joint), _joint_output(new_joint), _joint_output_name(new_joint)),
    )
    for base_module, new_module, base_layer, new_layer, prefix in heads:
        rows = {f"{prefix}.{n}" for n, _ in new_layer.named_parameters()}
        _copy_whole(base_module, new_module, skip=rows)
        base_layer_params = dict(base_layer.named_parameters())
        for name, param in new_layer.named_parameters():
            base_param = base_layer_params[name]
            src, dst = _row_map(base_tokens, base_param.shape[0], new_tokens, param.shape[0])
            _set_rows(param, base_param, src, dst, new_only, new_label_init, compose_sources)
    return {"shared": len(new_tokens) - len(new_only), "new": len(new_only)}


def output_row_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """``(name, parameter)`` of every output-row parameter of a NeMo ASR model (names as ``named_parameters``).

    CTC decoders (``decoder`` of a CTC model, ``ctc_decoder`` of a hybrid): every parameter whose
    first dimension is the number of classes with blank; an RNN-T head: ``decoder.prediction.embed.weight``
    and the joint output layer's weight and bias.
    """
    out: list[tuple[str, torch.nn.Parameter]] = []
    for attr in ("decoder", "ctc_decoder"):
        module = getattr(model, attr, None)
        if module is None:
            continue
        if hasattr(module, "decoder_layers"):  # a ConvASRDecoder (CTC)
            classes = module.num_classes_with_blank
            out += [(f"{attr}.{n}", p) for n, p in module.named_parameters() if p.shape[0] == classes]
        elif attr == "decoder":
            try:
                out.append((f"{attr}.prediction.embed.weight", _embedding(module).weight))
            except ValueError:
                pass
    joint = getattr(model, "joint", None)
    if joint is not None:
        layer, prefix = _joint_output(joint), f"joint.{_joint_output_name(joint)}"
        out += [(f"{prefix}.{n}", p) for n, p in layer.named_parameters()]
    return out


def mapped_output_rows(base_model: Any, model: Any) -> list[tuple[str, list[int], list[int]]]:
    """The rows ``keep_shared`` maps between ``base_model`` and ``model``, for each output-row parameter.

    Tokens are matched by string (:func:`nemo_tl.transfer.tokens.model_tokens`); blank and TDT
    duration rows are matched by position after the tokens. Parameters are those of
    :func:`output_row_parameters` that both models have, named as in ``model.named_parameters()``.
    The map does not depend on how ``model`` was initialized (``keep_shared``, ``reinit``...).

    Returns:
        ``[(name, base_rows, new_rows), ...]``: ``model``'s ``name`` rows ``new_rows[j]`` correspond to
        ``base_model``'s rows ``base_rows[j]``.
    """
    from nemo_tl.transfer.tokens import model_tokens

    base_tokens, new_tokens = model_tokens(base_model), model_tokens(model)
    base_params = dict(output_row_parameters(base_model))
    out = []
    for name, param in output_row_parameters(model):
        base_param = base_params.get(name)
        if base_param is None:
            continue
        src, dst = _row_map(base_tokens, base_param.shape[0], new_tokens, param.shape[0])
        out.append((name, src, dst))
    return out
