"""The pure terms: L2-SP and EWC penalties and their gradients, LwF's KD losses, and the anchors
(θ_base over the transferred parameters) they are measured from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from nemo.collections.asr.models import ASRModel

from nemo_tl.losses.kd import token_kd_loss
from nemo_tl.transfer.vocabulary import mapped_output_rows


def _check_lists(params: Sequence[torch.Tensor], others: Sequence[torch.Tensor], what: str) -> None:
    if len(params) != len(others):
        raise ValueError(f"{len(params)} parameters but {len(others)} {what}")
    for k, (p, o) in enumerate(zip(params, others)):
        if p.shape != o.shape:
            raise ValueError(f"parameter {k} has shape {tuple(p.shape)}, its {what[:-1]} {tuple(o.shape)}")


class _WeightedSquaredDistance(torch.autograd.Function):
    """(w/2) Σ_k Σ_i F_k,i (θ_k,i − a_k,i)² over many tensors, with fused (``torch._foreach``) kernels.

    A per-tensor loop launches several kernels per parameter (hundreds of parameters in a 15x5);
    the foreach kernels take them in a few launches. The gradient, w F_k (θ_k − a_k), is kept from
    the forward.
    """

    @staticmethod
    def forward(ctx, weight: float, anchors: list, fisher: list | None, *params: torch.Tensor) -> torch.Tensor:
        diffs = torch._foreach_sub([p.detach().float() for p in params], [a.detach().float() for a in anchors])
        scaled = diffs if fisher is None else torch._foreach_mul(diffs, [f.detach().float() for f in fisher])
        total = torch.stack(torch._foreach_norm(torch._foreach_mul(scaled, diffs), 1)).sum()
        ctx.scaled, ctx.weight, ctx.dtypes = scaled, float(weight), [p.dtype for p in params]
        return 0.5 * ctx.weight * total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grads = torch._foreach_mul(ctx.scaled, grad * ctx.weight)
        ctx.scaled = None
        return (None, None, None, *(g.to(d) for g, d in zip(grads, ctx.dtypes)))


def l2sp_penalty(params: Sequence[torch.Tensor], anchors: Sequence[torch.Tensor], weight: float) -> torch.Tensor:
    """L2-SP: (w/2) Σ_k ‖θ_k − θ_base,k‖².

    Args:
        params: the (transferred entries of the) model's parameters θ_k, any shapes, one device.
        anchors: θ_base,k, one per parameter, same shapes; constants.
        weight: w ≥ 0.
    Returns:
        A scalar (float32); its gradient with respect to θ_k is w (θ_k − θ_base,k).
    """
    _check_lists(params, anchors, "anchors")
    if not params:
        return torch.zeros(())
    return _WeightedSquaredDistance.apply(weight, list(anchors), None, *params)


def ewc_penalty(
    params: Sequence[torch.Tensor], anchors: Sequence[torch.Tensor], fisher: Sequence[torch.Tensor], weight: float
) -> torch.Tensor:
    """EWC: (w/2) Σ_k Σ_i F_k,i (θ_k,i − θ_base,k,i)².

    Args:
        params: θ_k, any shapes, one device.
        anchors: θ_base,k, same shapes; constants.
        fisher: F_k ≥ 0, the diagonal Fisher at θ_base, same shapes; constants.
        weight: w ≥ 0.
    Returns:
        A scalar (float32); its gradient with respect to θ_k is w F_k (θ_k − θ_base,k).
    """
    _check_lists(params, anchors, "anchors")
    _check_lists(params, fisher, "fishers")
    if not params:
        return torch.zeros(())
    return _WeightedSquaredDistance.apply(weight, list(anchors), list(fisher), *params)


def lwf_loss(
    log_probs: torch.Tensor,
    base_log_probs: torch.Tensor,
    lengths: torch.Tensor,
    rows: Sequence[int] | torch.Tensor,
    base_rows: Sequence[int] | torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """LwF: token KD from the base over the shared labels plus blank, both sides renormalized over them.

    Args:
        log_probs: (B, T, V+1) the model's log-probabilities (or logits).
        base_log_probs: (B, T', V_base+1) the base's; a constant. T and T' may differ by padding.
        lengths: (B,) valid frames per utterance (≤ min(T, T')).
        rows, base_rows: (R,) the shared labels' (and blank's) columns in each, pairwise
            (:func:`nemo_tl.transfer.vocabulary.shared_label_rows`); index tensors on the outputs'
            device spare a host-to-device copy per call.
        temperature: T > 0 on both softmaxes (the loss is scaled by T²).
    Returns:
        A scalar: per-utterance sums over frames, averaged over the batch.
    """
    if len(rows) != len(base_rows):
        raise ValueError(f"rows ({len(rows)}) and base_rows ({len(base_rows)}) must pair up")
    frames = min(log_probs.shape[1], base_log_probs.shape[1])
    rows = torch.as_tensor(rows, dtype=torch.long, device=log_probs.device)
    base_rows = torch.as_tensor(base_rows, dtype=torch.long, device=base_log_probs.device)
    student = log_probs[:, :frames].index_select(-1, rows)
    teacher = base_log_probs[:, :frames].index_select(-1, base_rows)
    return token_kd_loss(student, teacher, lengths.clamp(max=frames), temperature=temperature)


def lwf_lattice_loss(
    joint: torch.Tensor,
    base_joint: torch.Tensor,
    frames: torch.Tensor,
    target_lengths: torch.Tensor,
    columns: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """LwF for RNN-T: token KD at every node (t, u) of the joint's lattice, over ``columns``.

    Args:
        joint: (B, T, U+1, K) the model's joint outputs (logits or log-probabilities).
        base_joint: (B, T, U+1, K) the base's on the same audio and transcripts; a constant.
        frames: (B,) valid encoder frames; target_lengths: (B,) transcript lengths (u ≤ U_b counts).
        columns: (C,) the output columns compared (tokens and blank; not a TDT joint's durations).
        temperature: T > 0 on both softmaxes (scaled by T²).
    Returns:
        A scalar: per-utterance sums over the valid nodes, averaged over the batch.
    """
    if joint.dim() != 4 or joint.shape != base_joint.shape:
        raise ValueError(f"joint {tuple(joint.shape)} and base joint {tuple(base_joint.shape)} must both be "
                         "(B, T, U+1, K)")
    b, t, u1, _ = joint.shape
    student = joint.index_select(-1, columns).transpose(1, 2).reshape(b * u1, t, -1)
    teacher = base_joint.index_select(-1, columns).transpose(1, 2).reshape(b * u1, t, -1)
    node = torch.arange(u1, device=joint.device)
    lengths = torch.where(node[None, :] <= target_lengths[:, None], frames[:, None], 0).reshape(-1)
    per_node_row = token_kd_loss(student, teacher, lengths, temperature=temperature, reduction="none")
    return per_node_row.view(b, u1).sum(dim=1).mean()


@torch.no_grad()
def rnnt_joint_outputs(
    model: ASRModel, audio: torch.Tensor, audio_len: torch.Tensor, tokens: torch.Tensor, tokens_len: torch.Tensor
) -> torch.Tensor:
    """(B, T, U+1, K) joint outputs of a frozen RNN-T model on audio (B, S) and transcripts (B, U), no gradient."""
    if model.training:
        model.eval()
    encoded, _ = model.forward(input_signal=audio, input_signal_length=audio_len)[:2]
    decoded, _, _ = model.decoder(targets=tokens, target_length=tokens_len)
    return model.joint(encoder_outputs=encoded, decoder_outputs=decoded)


# ---------------------------------------------------------------------------- what was transferred
def transferred_parameters(
    base_model: ASRModel, model: ASRModel, *, output_rows: bool = True
) -> list[tuple[str, list[int] | None, list[int] | None]]:
    """``(name, base_rows, new_rows)`` for every parameter of ``model`` that came from the base.

    Parameters base and model share by name and shape (rows None: all of it), and the output
    parameters with the rows :func:`mapped_output_rows` maps (``output_rows=False`` leaves those out,
    e.g. after ``vocabulary: reinit``).
    """
    mapped = {name: (b, n) for name, b, n in mapped_output_rows(base_model, model)}
    base_params = dict(base_model.named_parameters())
    out = []
    for name, p in model.named_parameters():
        if name in mapped:
            if output_rows:
                out.append((name, *mapped[name]))
        elif name in base_params and base_params[name].shape == p.shape:
            out.append((name, None, None))
    return out


@dataclass
class Anchor:
    """One transferred parameter of the model and its base value.

    Attributes:
        name: the parameter's name in the model.
        param: the model's parameter θ.
        rows: (R,) the model's rows it anchors, or None for all of θ.
        value: θ_base over those entries (θ[rows].shape, or θ.shape).
        base_name, base_rows: where ``value`` came from in the base (for its Fisher).
        fisher: F over those entries, or None before :meth:`set_fisher`.
    """

    name: str
    param: torch.nn.Parameter
    rows: torch.Tensor | None
    value: torch.Tensor
    base_name: str
    base_rows: list[int] | None
    fisher: torch.Tensor | None = None

    def current(self) -> torch.Tensor:
        """θ over the anchored entries (differentiable)."""
        return self.param if self.rows is None else self.param[self.rows]

    def set_fisher(self, fisher: dict[str, torch.Tensor]) -> None:
        f = fisher[self.base_name]
        self.fisher = (f if self.base_rows is None else f[self.base_rows]).to(self.value)


@torch.no_grad()
def anchors_from_base(base_model: ASRModel, model: ASRModel, *, output_rows: bool = True) -> list[Anchor]:
    """An :class:`Anchor` for every trainable transferred parameter of ``model``, on its device."""
    base_params = dict(base_model.named_parameters())
    params = dict(model.named_parameters())
    anchors = []
    for name, base_rows, new_rows in transferred_parameters(base_model, model, output_rows=output_rows):
        p = params[name]
        if not p.requires_grad:
            continue  # frozen: stays at θ_base
        b = base_params[name].detach()
        value = b if base_rows is None else b[base_rows]
        rows = None if new_rows is None else torch.as_tensor(new_rows, dtype=torch.long, device=p.device)
        anchors.append(Anchor(name, p, rows, value.to(device=p.device, dtype=p.dtype).clone(), name, base_rows))
    return anchors


@torch.no_grad()
def add_penalty_gradients(anchors: Sequence[Anchor], weight: float, *, fisher: bool, scale: float = 1.0) -> bool:
    """Add the gradient of (w/2) Σ F (θ − θ_base)² to the anchored parameters' ``.grad``.

    Each anchored parameter θ gets ``θ.grad += scale · w F (θ − θ_base)`` over its anchored entries
    (all of θ, or the rows ``anchor.rows``), F = 1 (L2-SP, ``fisher=False``) or ``anchor.fisher``
    (EWC). The anchors over whole parameters take two fused ``torch._foreach`` kernels (θ − θ_base,
    then one add or addcmul into the gradients); putting the penalty in the loss instead makes
    autograd accumulate one gradient per parameter (hundreds of small kernels and engine calls a
    step). The penalty's value is not computed here: :func:`l2sp_penalty` / :func:`ewc_penalty` give
    it where it is logged.

    Called once per optimizer step, after the backward: DDP gradients already averaged, AMP
    gradients unscaled (``scale`` the loss scale where they are still scaled), before gradient
    clipping, so the optimizer sees exactly the gradient of loss + penalty.

    Args:
        anchors: the parameters and their base values (:func:`anchors_from_base`); with ``fisher``,
            each with its Fisher set.
        weight: w ≥ 0.
        fisher: EWC (F = ``anchor.fisher``) or L2-SP (F = 1).
        scale: multiplies the gradient added.
    Returns:
        False, with nothing added, when no anchored parameter has a gradient (a step the non-finite
        guard skipped); else True. A parameter without a gradient among others that have one gets a
        zero gradient first.
    """
    if all(a.param.grad is None for a in anchors):
        return False
    if fisher and any(a.fisher is None for a in anchors):
        raise ValueError("EWC needs every anchor's Fisher information (Anchor.set_fisher)")
    for a in anchors:
        if a.param.grad is None:
            a.param.grad = torch.zeros_like(a.param)
    alpha = float(weight) * float(scale)
    whole = [a for a in anchors if a.rows is None]
    if whole:
        grads = [a.param.grad for a in whole]
        diffs = torch._foreach_sub([a.param for a in whole], [a.value for a in whole])
        if fisher:
            torch._foreach_addcmul_(grads, diffs, [a.fisher for a in whole], value=alpha)
        else:
            torch._foreach_add_(grads, diffs, alpha=alpha)
    for a in anchors:
        if a.rows is not None:
            diff = a.param[a.rows] - a.value
            a.param.grad.index_add_(0, a.rows, diff * a.fisher if fisher else diff, alpha=alpha)
    return True
