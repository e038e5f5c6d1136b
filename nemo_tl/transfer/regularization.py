"""Fine-tuning that forgets less: L2-SP, EWC and LwF against the base model (``model.transfer.regularization``).

For a model θ fine-tuned from a base θ_base, with the task loss L (CTC):

- L2-SP (Li et al. 2018):  L + (w/2) ‖θ − θ_base‖²
- EWC (Kirkpatrick et al. 2017):  L + (w/2) Σ F (θ − θ_base)², F the empirical diagonal Fisher at
  θ_base: the mean over ``batches`` source batches of the squared gradient of the base's training
  loss (eval mode: no SpecAugment, dither or dropout).
- LwF (Li & Hoiem 2016):  L + w · L_tok(θ, θ_base; T), the token KD loss of
  :func:`nemo_tl.losses.kd.token_kd_loss` between the model and the frozen base on the current
  batch, over the labels both vocabularies hold plus blank (each side's distribution renormalized
  over those), at temperature T. CTC models compare the decoder's frames (the base online or from the
  teacher cache); RNN-T models, whose base must have the same vocabulary, compare the joint's outputs
  at every node of the lattice (:func:`lwf_lattice_loss`; the base runs online).

L2-SP and EWC act on the gradients: once per optimizer step, after the backward (and before
gradient clipping), :func:`add_penalty_gradients` adds their gradient w F (θ − θ_base) to every
anchored parameter's ``.grad`` with two fused kernels, so the optimizer sees the gradient of the
objective above; their values are computed only on the steps Lightning logs. LwF is part of the loss.

The sums run over the *transferred* parameters: every parameter the base and the model share by
name and shape, plus the output rows ``keep_shared`` maps (:func:`mapped_output_rows`); frozen
parameters do not move and are left out. All three are off by default (weight 0) and combine
freely (with replay too). A weight of 0 leaves training exactly as without the section.

Config::

    model:
      transfer:
        base_model: base_en.nemo
        regularization:
          lwf: {weight: 1.0, temperature: 2.0, cache: null}   # cache: a teacher-cache directory
          l2sp: {weight: 0.01}
          ewc: {weight: 100.0, manifest: en_train.json, batches: 50, batch_size: 8, cache: null}

Where θ_base lives: the base is loaded from ``transfer.base_model`` when training starts (also
for a restored model trained further) and held outside the module tree, like the distillation
teachers: it is not in the ``state_dict``, the checkpoints or the ``.nemo``, which restores
without it. The Fisher is cached in ``ewc.cache`` or the run's directory (``<log_dir>/ewc_fisher``), with a
fingerprint of the base's weights, the manifest's content, its audio files' sizes and
modification times, ``batches`` and ``batch_size`` (:func:`nemo_tl.distill.cache.cache_fingerprint`);
a second identical run reuses it, a changed base or manifest recomputes it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from nemo.collections.asr.models import ASRModel
from nemo.utils import logging
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from nemo_tl.compat import attached_trainer, logs_this_step
from nemo_tl.config_checks import checked_int, checked_number, checked_section
from nemo_tl.errors import input_error
from nemo_tl.losses.kd import token_kd_loss
from nemo_tl.transfer.tokens import model_tokens
from nemo_tl.transfer.vocabulary import mapped_output_rows, shared_label_rows

__all__ = [
    "Anchor",
    "EWCConfig",
    "ForgettingRegularizationMixin",
    "L2SPConfig",
    "LwFConfig",
    "RegularizationConfig",
    "add_penalty_gradients",
    "anchors_from_base",
    "empirical_fisher",
    "ewc_penalty",
    "fisher_for_run",
    "l2sp_penalty",
    "lwf_lattice_loss",
    "lwf_loss",
    "rnnt_joint_outputs",
    "training_loss",
    "transferred_parameters",
]

WHERE = "model.transfer.regularization"
FISHER_DIR = "ewc_fisher"
_SECTION_FIX = "write regularization: {lwf: {weight: 1.0, temperature: 2.0}, l2sp: {weight: 0.01}, " \
    "ewc: {weight: 100.0, manifest: source.json, batches: 50}}"


# ---------------------------------------------------------------------------- config
def _weight(section: dict, where: str) -> float:
    return checked_number(section.get("weight", 0.0), f"{where}.weight", finite=True,
                          fix="give a weight ≥ 0 (0 turns the term off)")


def _directory(value: Any, where: str, what: str) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise input_error(f"must be a directory path or null, got {value!r}", where=where, fix=f"give {what}")
    return value


@dataclass(frozen=True)
class LwFConfig:
    """``lwf: {weight w, temperature T, cache, manifests}``: KD from the frozen base.

    ``cache``: a teacher-cache directory (None: the base runs online). ``manifests``: the training
    manifests whose utterances LwF distils (None: every utterance); with replay, the source's, so that
    the base's outputs pull only on the source audio and never on the target's.
    """

    weight: float = 0.0
    temperature: float = 1.0
    cache: str | None = None
    manifests: tuple[str, ...] | None = None

    @classmethod
    def from_section(cls, value: Any, where: str) -> LwFConfig:
        s = checked_section(value, where, ("weight", "temperature", "cache", "manifests"),
                            fix="write lwf: {weight: 1.0, temperature: 2.0}")
        return cls(
            weight=_weight(s, where),
            temperature=checked_number(s.get("temperature", 1.0), f"{where}.temperature", positive=True, finite=True),
            cache=_directory(s.get("cache"), f"{where}.cache",
                             "a directory for the base model's cached outputs, or null to run it online"),
            manifests=_manifest_list(s.get("manifests"), f"{where}.manifests"),
        )


def _manifest_list(value: Any, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    paths = [value] if isinstance(value, str) else value
    if not isinstance(paths, (list, tuple, ListConfig)) or not paths or not all(isinstance(p, str) and p for p in paths):
        raise input_error(f"must be a list of training manifest paths or null, got {value!r}", where=where,
                          fix="list the train_ds manifests whose utterances LwF distils (e.g. [source_train.json]), "
                          "or null for every utterance")
    return tuple(paths)


@dataclass(frozen=True)
class L2SPConfig:
    """``l2sp: {weight w}``: (w/2) ‖θ − θ_base‖² over the transferred parameters."""

    weight: float = 0.0

    @classmethod
    def from_section(cls, value: Any, where: str) -> L2SPConfig:
        s = checked_section(value, where, ("weight",), fix="write l2sp: {weight: 0.01}")
        return cls(weight=_weight(s, where))


@dataclass(frozen=True)
class EWCConfig:
    """``ewc: {weight w, manifest, batches, batch_size, cache}``: (w/2) Σ F (θ − θ_base)², F from source data.

    ``cache``: the directory of the Fisher (None: ``ewc_fisher`` in the run's directory); several runs
    from one base can share one.
    """

    weight: float = 0.0
    manifest: str | None = None
    batches: int = 50
    batch_size: int = 8
    cache: str | None = None

    @classmethod
    def from_section(cls, value: Any, where: str) -> EWCConfig:
        s = checked_section(value, where, ("weight", "manifest", "batches", "batch_size", "cache"),
                            fix="write ewc: {weight: 100.0, manifest: source.json, batches: 50}")
        weight = _weight(s, where)
        manifest = s.get("manifest")
        if weight > 0 and (not isinstance(manifest, str) or not manifest):
            raise input_error(
                f"EWC needs source data for its Fisher information, got manifest {manifest!r}",
                where=f"{where}.manifest",
                fix="give a NeMo manifest of the base model's (source) training data",
            )
        return cls(
            weight=weight,
            manifest=manifest,
            batches=checked_int(s.get("batches", cls.batches), f"{where}.batches", minimum=1),
            batch_size=checked_int(s.get("batch_size", cls.batch_size), f"{where}.batch_size", minimum=1),
            cache=_directory(s.get("cache"), f"{where}.cache", "a directory for the Fisher information, or null "
                             "for ewc_fisher in the run's directory"),
        )


@dataclass(frozen=True)
class RegularizationConfig:
    """The ``model.transfer.regularization`` section (all terms off by default)."""

    lwf: LwFConfig = field(default_factory=LwFConfig)
    l2sp: L2SPConfig = field(default_factory=L2SPConfig)
    ewc: EWCConfig = field(default_factory=EWCConfig)

    @classmethod
    def from_section(cls, section: Any, where: str = WHERE) -> RegularizationConfig:
        """Validate a ``regularization`` section (DictConfig, dict or None) and fill defaults."""
        s = checked_section(section, where, ("lwf", "l2sp", "ewc"), fix=_SECTION_FIX)
        return cls(
            lwf=LwFConfig.from_section(s.get("lwf"), f"{where}.lwf"),
            l2sp=L2SPConfig.from_section(s.get("l2sp"), f"{where}.l2sp"),
            ewc=EWCConfig.from_section(s.get("ewc"), f"{where}.ewc"),
        )

    @property
    def active(self) -> bool:
        """Whether any term has a weight > 0 (else training is exactly unregularized)."""
        return self.lwf.weight > 0 or self.l2sp.weight > 0 or self.ewc.weight > 0

    @property
    def needs_anchors(self) -> bool:
        return self.l2sp.weight > 0 or self.ewc.weight > 0

    def as_section(self) -> dict:
        return {
            "lwf": {"weight": self.lwf.weight, "temperature": self.lwf.temperature, "cache": self.lwf.cache,
                    "manifests": None if self.lwf.manifests is None else list(self.lwf.manifests)},
            "l2sp": {"weight": self.l2sp.weight},
            "ewc": {"weight": self.ewc.weight, "manifest": self.ewc.manifest, "batches": self.ewc.batches,
                    "batch_size": self.ewc.batch_size, "cache": self.ewc.cache},
        }


# ---------------------------------------------------------------------------- penalties (pure)
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


# ---------------------------------------------------------------------------- EWC's Fisher
def training_loss(
    model: ASRModel, audio: torch.Tensor, audio_len: torch.Tensor, tokens: torch.Tensor, tokens_len: torch.Tensor
) -> torch.Tensor:
    """A NeMo ASR model's training loss on a batch: CTC, or RNN-T for a model with a joint (hybrids too).

    audio (B, S), audio_len (B,), tokens (B, U), tokens_len (B,); NeMo's loss reduction.
    """
    joint = getattr(model, "joint", None)
    if joint is None:
        log_probs, encoded_len, _ = model.forward(input_signal=audio, input_signal_length=audio_len)
        return model.loss(log_probs=log_probs, targets=tokens, input_lengths=encoded_len, target_lengths=tokens_len)
    encoded, encoded_len = model.forward(input_signal=audio, input_signal_length=audio_len)[:2]
    decoded, target_len, _ = model.decoder(targets=tokens, target_length=tokens_len)
    if joint.fuse_loss_wer:
        return joint(encoder_outputs=encoded, decoder_outputs=decoded, encoder_lengths=encoded_len,
                     transcripts=tokens, transcript_lengths=target_len, compute_wer=False)[0]
    log_probs = joint(encoder_outputs=encoded, decoder_outputs=decoded)
    return model.loss(log_probs=log_probs, targets=tokens, input_lengths=encoded_len, target_lengths=target_len)


def empirical_fisher(model: ASRModel, loader: Iterable, batches: int) -> dict[str, torch.Tensor]:
    """Empirical diagonal Fisher at the model's current weights: the mean over ``batches`` batches of (∇L)².

    L is :func:`training_loss` on a batch ``(audio, audio_len, tokens, tokens_len, ...)``; the model
    runs in eval mode (no SpecAugment, dither or dropout; BatchNorm uses its statistics). Returns
    name -> F (the parameter's shape, float32, on its device). Weights, ``requires_grad`` flags and
    the train/eval mode are left as they were.
    """
    params = dict(model.named_parameters())
    flags = {n: p.requires_grad for n, p in params.items()}
    was_training = model.training
    device = next(model.parameters()).device
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    seen = 0
    model.eval()
    try:
        for p in params.values():
            p.requires_grad_(True)
        with torch.enable_grad():
            for batch in loader:
                if seen == batches:
                    break
                loss = training_loss(model, *(t.to(device) for t in batch[:4]))
                grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
                for (n, _), g in zip(params.items(), grads):
                    if g is not None:
                        fisher[n] += g.detach().float().pow(2)
                seen += 1
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])
        model.train(was_training)
    if seen == 0:
        raise ValueError("the EWC loader gave no batches")
    return {n: f / seen for n, f in fisher.items()}


def _fisher_loader(base_model: ASRModel, ewc: EWCConfig, sample_rate: int) -> torch.utils.data.DataLoader:
    """The EWC manifest's batches for the base, in order; a character base's alphabet is checked first."""
    from nemo.collections.asr.data.audio_to_text import AudioToBPEDataset, AudioToCharDataset

    from nemo_tl.data.validate import check_manifests, default_parser

    where = f"{WHERE}.ewc.manifest"
    tokenizer = getattr(base_model, "tokenizer", None)
    if tokenizer is not None:
        check_manifests([ewc.manifest], sample_rate=sample_rate, where=where)
        dataset = AudioToBPEDataset(manifest_filepath=ewc.manifest, tokenizer=tokenizer, sample_rate=sample_rate)
    else:
        labels = model_tokens(base_model)
        try:
            check_manifests([ewc.manifest], labels=labels, sample_rate=sample_rate, where=where)
        except ValueError as e:
            raise input_error(
                f"the EWC manifest does not fit the base model ({e})", where=where,
                fix="give a manifest of the base model's own (source) language: its Fisher information measures "
                "what the base needs to keep recognizing it",
            ) from e
        dataset = AudioToCharDataset(manifest_filepath=ewc.manifest, labels=labels, sample_rate=sample_rate,
                                     parser=default_parser(labels))
    return torch.utils.data.DataLoader(dataset, batch_size=ewc.batch_size, shuffle=False,
                                       collate_fn=dataset.collate_fn)


def fisher_for_run(base_model: ASRModel, ewc: EWCConfig, directory: str, *, sample_rate: int) -> dict[str, torch.Tensor]:
    """The base's Fisher for ``ewc``: read from ``directory`` when its fingerprint matches, else computed there.

    The manifest is checked first (every transcript within the base's alphabet: InputError otherwise).
    Files: ``fisher.pt`` and ``fingerprint.json`` (written last, so an interrupted write is recomputed).
    """
    from nemo_tl.distill.cache import cache_fingerprint

    if not os.path.isfile(ewc.manifest):
        raise input_error(f"manifest {ewc.manifest!r} does not exist", where=f"{WHERE}.ewc.manifest",
                          fix="give the path of an existing NeMo manifest of the source (base) data")
    loader = _fisher_loader(base_model, ewc, sample_rate)  # checks the manifest
    expected = cache_fingerprint(base_model, [ewc.manifest], sample_rate=sample_rate)
    expected.update({"kind": "ewc_fisher", "batches": ewc.batches, "batch_size": ewc.batch_size})
    expected = json.loads(json.dumps(expected))
    stamp, weights = os.path.join(directory, "fingerprint.json"), os.path.join(directory, "fisher.pt")
    try:
        with open(stamp, encoding="utf-8") as f:
            found = json.load(f)
    except (OSError, ValueError):
        found = None
    if found == expected and os.path.isfile(weights):
        logging.info(f"EWC: reusing the Fisher information in {directory}")
        return torch.load(weights, map_location="cpu", weights_only=True)
    if found is not None:
        logging.info(f"EWC: the Fisher information in {directory} was computed for another base or manifest; "
                     "recomputing it")
    fisher = empirical_fisher(base_model, loader, ewc.batches)
    os.makedirs(directory, exist_ok=True)
    if os.path.exists(stamp):
        os.remove(stamp)
    tmp = f"{weights}.tmp{os.getpid()}"
    torch.save({n: f.cpu() for n, f in fisher.items()}, tmp)
    os.replace(tmp, weights)
    with open(f"{stamp}.tmp{os.getpid()}", "w", encoding="utf-8") as f:
        json.dump(expected, f, indent=1)
    os.replace(f"{stamp}.tmp{os.getpid()}", stamp)
    return fisher


def _keep_first(store: dict, key: str, pick: Any) -> Any:
    """A forward hook that keeps ``pick(output)`` of the module's first call in ``store[key]`` (and returns None,
    so the output is left as it is)."""

    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        if key not in store:
            store[key] = pick(output)

    return hook


def run_directory(trainer: Any) -> str:
    """The directory a run writes to: exp_manager's log dir, else the trainer's default_root_dir."""
    return str(getattr(trainer, "log_dir", None) or trainer.default_root_dir)


def _lwf_manifest_indices(manifests: Sequence[str], train_ds: Any, loader: Any) -> torch.Tensor:
    """The indices, among ``train_ds.manifest_filepath``, of the manifests ``lwf.manifests`` names.

    The batches must say which manifest each utterance comes from: the training data is mixed
    (``train_ds.mixing``), whose loader numbers the manifests in ``manifest_filepath``'s order.
    """
    from nemo_tl.data.mixing import MixedDataset, mixed_manifest_paths

    where = f"{WHERE}.lwf.manifests"
    if not isinstance(loader.dataset, MixedDataset):
        raise input_error(
            "LwF on some training manifests only needs batches that say which manifest each utterance comes "
            "from, but train_ds is not mixed",
            where=where,
            fix="list the target and source manifests in train_ds.manifest_filepath with train_ds.mixing "
            "(e.g. mixing: {weights: [0.8, 0.2]}), or set lwf.manifests: null",
        )
    paths = mixed_manifest_paths(train_ds)
    index = {os.path.realpath(p): i for i, p in reversed(list(enumerate(paths)))}  # the first of equal paths
    indices = []
    for manifest in manifests:
        i = index.get(os.path.realpath(manifest))
        if i is None:
            raise input_error(
                f"{manifest} is not one of the training manifests {paths}",
                where=where,
                fix="name manifests of train_ds.manifest_filepath (the source data replayed), as written there",
            )
        indices.append(i)
    return torch.tensor(indices, dtype=torch.long)


# ---------------------------------------------------------------------------- the model mixin
class ForgettingRegularizationMixin:
    """Adds ``model.transfer.regularization``'s terms to a transfer model's training.

    List it before the NeMo class. ``training_step`` calls ``super().training_step`` (NeMo's step)
    and adds w · L_tok (LwF) to the loss, logged as ``lwf_loss``; LwF reads the model's outputs from
    that same forward (hooks on the encoder and on the CTC decoder, or the RNN-T joint), so nothing
    of the model is computed twice. L2-SP's (w/2)‖θ − θ_base‖² and EWC's (w/2) Σ F (θ − θ_base)² are
    not in the loss: ``on_before_optimizer_step`` (once per optimizer step, after the backward of
    every accumulated batch) adds their gradients to the gradients (:func:`add_penalty_gradients`);
    ``on_train_batch_end`` logs their values as ``l2sp_penalty``, ``ewc_penalty`` on the steps
    Lightning sends to the loggers (``log_every_n_steps``). With every weight 0 the step is NeMo's,
    untouched.
    """

    _forgetting_base: list  # [the frozen base model] for online LwF, outside the module tree (not saved)
    _forgetting_anchors: list
    _regularization_ready: bool = False
    _regularization_config: RegularizationConfig | None = None
    _forgetting_rows: tuple[torch.Tensor, torch.Tensor] | None = None  # LwF: (model columns, base columns)
    _lwf_manifest_ids: torch.Tensor | None = None  # LwF: the training manifests' indices lwf.manifests names

    @property
    def regularization(self) -> RegularizationConfig:
        """The validated ``model.transfer.regularization`` section."""
        parsed = getattr(self, "_regularization_config", None)
        if parsed is None:
            transfer = self.cfg.get("transfer") if self.cfg is not None else None
            parsed = RegularizationConfig.from_section(transfer.get("regularization") if transfer is not None else None)
            self._regularization_config = parsed
        return parsed

    # -- setup
    def _regularization_base(self) -> ASRModel:
        from nemo_tl.distill.teachers import freeze_teacher
        from nemo_tl.transfer.base import load_base_model

        load = getattr(type(self), "_load_base", None) or load_base_model  # a transfer model checks the base's kind
        transfer = self.cfg.transfer
        spec = transfer.get("base_model")
        if transfer.get("reinitialize"):
            raise input_error(
                "regularization pulls the model towards the base's weights, but reinitialize: true starts "
                "from fresh weights",
                where=WHERE,
                fix="set model.transfer.reinitialize: false, or remove model.transfer.regularization",
            )
        if not isinstance(spec, str) or spec.startswith("<in-memory"):
            raise input_error(
                f"regularization needs the base model when training starts, but transfer.base_model is {spec!r}",
                where="model.transfer.base_model",
                fix="save the base with base.save_to('base.nemo') and build the model from that path "
                "(TransferCTCModel.from_base('base.nemo', ...))",
            )
        return freeze_teacher(load(spec))

    def _prepare_regularization(self) -> None:
        """Load the base, build the anchors and (EWC) the Fisher; called when training starts."""
        reg = self.regularization
        self._forgetting_base, self._forgetting_anchors, self._forgetting_rows = [], [], None
        self._regularization_ready = True
        if not reg.active:
            return
        if reg.lwf.weight > 0 and reg.lwf.manifests is not None and self._lwf_manifest_ids is None:
            raise input_error(
                "lwf.manifests needs the model's own training loader, whose batches say which manifest each "
                "utterance comes from, but the model has none",
                where=f"{WHERE}.lwf.manifests",
                fix="give the data as model.train_ds (with mixing) instead of a DataLoader passed to trainer.fit, "
                "or set lwf.manifests: null",
            )
        if self._lwf_manifest_ids is not None:  # on the device once, not copied from the host every step
            self._lwf_manifest_ids = self._lwf_manifest_ids.to(self.device)
        base = self._regularization_base().to(self.device)
        if reg.lwf.weight > 0 and self._lwf_on_joint:
            self._check_rnnt_lwf(base, reg.lwf)
        if reg.lwf.weight > 0 and reg.lwf.cache is None:
            self._forgetting_base = [base]  # kept only where it runs every step
        output_rows = self.cfg.transfer.get("vocabulary") != "reinit"
        if reg.needs_anchors:
            self._forgetting_anchors = anchors_from_base(base, self, output_rows=output_rows)
        if reg.ewc.weight > 0:
            directory = reg.ewc.cache or os.path.join(run_directory(self.trainer), FISHER_DIR)
            fisher = fisher_for_run(base, reg.ewc, directory, sample_rate=int(self.cfg.get("sample_rate", 16000)))
            for anchor in self._forgetting_anchors:
                anchor.set_fisher(fisher)
        if reg.lwf.weight > 0:
            base_rows, rows = shared_label_rows(model_tokens(base), model_tokens(self))
            self._forgetting_rows = tuple(torch.tensor(r, dtype=torch.long, device=self.device) for r in (rows, base_rows))
            # RNN-T: equal vocabularies, so the columns are the tokens and blank, in order
            if reg.lwf.cache is not None:
                self._prepare_lwf_cache(base, reg.lwf.cache)

    @property
    def _lwf_on_joint(self) -> bool:
        """LwF compares the RNN-T joint's outputs (a model with a joint), else the CTC decoder's."""
        return getattr(self, "joint", None) is not None

    def _check_rnnt_lwf(self, base: ASRModel, lwf: LwFConfig) -> None:
        where = f"{WHERE}.lwf"
        if model_tokens(base) != model_tokens(self):
            raise input_error(
                "LwF on an RNN-T model needs the base's vocabulary: the joint's outputs at each lattice node depend "
                "on the transcript's tokens, which the base cannot read in another vocabulary",
                where=f"{where}.weight",
                fix="keep the base's vocabulary (vocabulary: same), or use l2sp / ewc (they work for RNN-T models)",
            )
        if lwf.cache is not None:
            raise input_error("the teacher cache holds CTC outputs; an RNN-T base runs online",
                              where=f"{where}.cache", fix="set lwf.cache: null")
        if self.joint.fuse_loss_wer:
            raise input_error(
                "LwF compares the joint's outputs, which a fused joint (fuse_loss_wer: true) never materializes",
                where="model.joint.fuse_loss_wer", fix="set model.joint.fuse_loss_wer: false, or lwf.weight: 0",
            )

    def _prepare_lwf_cache(self, base: ASRModel, directory: str) -> None:
        from nemo_tl.distill.cache import build_cache, manifest_list, utterance_datasets

        if self._train_dl is None:
            return
        train_ds = self.cfg.train_ds
        build_cache(
            base, manifest_list(train_ds.manifest_filepath), directory,
            sample_rate=train_ds.get("sample_rate", self.cfg.get("sample_rate")),
            trim_silence=bool(train_ds.get("trim_silence", False)),
            datasets=utterance_datasets(self._train_dl.dataset, where=f"{WHERE}.lwf.cache"),
            where=f"{WHERE}.lwf.cache",
        )

    def on_fit_start(self) -> None:
        self._prepare_regularization()
        super().on_fit_start()

    def setup_training_data(self, train_data_config: DictConfig | dict | None):
        """NeMo's training data; with ``lwf.cache``, its batches carry the base's cached outputs; with
        ``lwf.manifests``, each utterance's manifest index (a mixed loader's)."""
        lwf = self.regularization.lwf
        cache = lwf.cache if lwf.weight > 0 else None
        if train_data_config is not None and cache:
            train_data_config = OmegaConf.create(OmegaConf.to_container(OmegaConf.create(train_data_config)))
            with open_dict(train_data_config):
                train_data_config.return_sample_id = True
        super().setup_training_data(train_data_config)
        if self._train_dl is None:
            return
        some_manifests = lwf.weight > 0 and lwf.manifests is not None
        if some_manifests:
            self._lwf_manifest_ids = _lwf_manifest_indices(lwf.manifests, train_data_config, self._train_dl)
        if cache:
            from nemo_tl.distill.cache import cached_teacher_loader

            self._train_dl = cached_teacher_loader(self._train_dl, [cache], where=f"{WHERE}.lwf.cache")
        elif some_manifests:
            from nemo_tl.data.batches import NamedCollate, with_collate

            self._train_dl = with_collate(self._train_dl, NamedCollate(self._train_dl.collate_fn.collate_fn, mixed=True))

    # -- training
    def training_step(self, batch, batch_nb):
        reg = self.regularization
        if reg.active and not self._regularization_ready:
            self._prepare_regularization()
        if reg.lwf.weight <= 0:  # NeMo's step; L2-SP and EWC act in on_before_optimizer_step
            return super().training_step(batch, batch_nb)
        from nemo_tl.data.batches import AudioTextBatch

        named = AudioTextBatch.from_nemo(batch)
        captured: dict[str, torch.Tensor] = {}
        head = self.joint if self._lwf_on_joint else self.decoder
        handles = [self.encoder.register_forward_hook(_keep_first(captured, "lengths", lambda out: out[1])),
                   head.register_forward_hook(_keep_first(captured, "outputs", lambda out: out))]
        try:
            result = super().training_step(tuple(named[:4]), batch_nb)
        finally:
            for h in handles:
                h.remove()
        term = self._lwf_term(named, captured, reg.lwf)
        self.log("lwf_loss", term.detach(), on_step=True)
        return {**result, "loss": result["loss"] + reg.lwf.weight * term}

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Add the L2-SP and EWC gradients to the gradients (:func:`add_penalty_gradients`)."""
        super().on_before_optimizer_step(optimizer)
        reg = self.regularization
        if not (self._regularization_ready and reg.needs_anchors):
            return
        scale = self._gradient_scale(optimizer)
        for weight, fisher in ((reg.l2sp.weight, False), (reg.ewc.weight, True)):
            if weight > 0:
                add_penalty_gradients(self._forgetting_anchors, weight, fisher=fisher, scale=scale)

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        """Log ``l2sp_penalty`` / ``ewc_penalty`` on the steps Lightning sends to the loggers.

        The value is the penalty at the weights the step ends with (those the next step starts from).
        Only those steps compute it (``trainer.log_every_n_steps``): the gradients need no value.
        """
        super().on_train_batch_end(*args, **kwargs)
        reg = self.regularization
        if not (self._regularization_ready and reg.needs_anchors and logs_this_step(attached_trainer(self))):
            return
        anchors = self._forgetting_anchors
        with torch.no_grad():
            current, values = [a.current() for a in anchors], [a.value for a in anchors]
            if reg.l2sp.weight > 0:
                self.log("l2sp_penalty", l2sp_penalty(current, values, reg.l2sp.weight), on_step=True)
            if reg.ewc.weight > 0:
                fisher = [a.fisher for a in anchors]
                self.log("ewc_penalty", ewc_penalty(current, values, fisher, reg.ewc.weight), on_step=True)

    def _gradient_scale(self, optimizer: torch.optim.Optimizer) -> float:
        """The factor the gradients still carry at ``on_before_optimizer_step``: 1, or fp16 AMP's loss scale
        when the optimizer unscales inside its own step (fused Adam: Lightning then skips ``scaler.unscale_``)."""
        scaler = getattr(getattr(attached_trainer(self), "precision_plugin", None), "scaler", None)
        if scaler is None or not getattr(optimizer, "_step_supports_amp_scaling", False):
            return 1.0
        return float(scaler.get_scale())

    def _lwf_term(self, batch: Any, captured: dict[str, torch.Tensor], lwf: LwFConfig) -> torch.Tensor:
        from nemo_tl.distill.teachers import teacher_outputs

        frames = captured["lengths"]
        if lwf.manifests is not None:  # the other utterances' terms are 0 (no valid frame); the mean stays over B
            frames = torch.where(torch.isin(batch.manifest_ids, self._lwf_manifest_ids.to(frames.device)), frames, 0)
        if self._lwf_on_joint:
            base_joint = rnnt_joint_outputs(self._forgetting_base[0], *batch[:4])
            joint = captured["outputs"]
            columns = self._forgetting_rows[0][: joint.shape[-1]]
            return lwf_lattice_loss(joint, base_joint, frames, batch.token_lens, columns, lwf.temperature)
        if batch.teacher is not None:
            base = batch.teacher.on_device(batch.audio.device)[0]
        elif not self._forgetting_base:
            raise input_error(
                "lwf.cache is set, but the training batches carry no cached base outputs",
                where=f"{WHERE}.lwf.cache",
                fix="let the model build its training data (setup_training_data), or set cache: null",
            )
        else:
            base = teacher_outputs(self._forgetting_base[0], batch.audio, batch.audio_lens)
        rows, base_rows = self._forgetting_rows
        lengths = torch.minimum(frames, base.lengths)
        return lwf_loss(captured["outputs"], base.log_probs, lengths, rows, base_rows, lwf.temperature)
