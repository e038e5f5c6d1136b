"""Encoder adapters for a new language (task-specific adapters, arXiv 2203.16082), through NeMo's own adapter mixins.

``model.transfer.adapters: {dim: 32}`` turns the base encoder into NeMo's adapter-capable class
(``ConvASREncoder`` → ``ConvASREncoderAdapter``, ``ConformerEncoder`` → ``ConformerEncoderAdapter``),
adds one NeMo ``LinearAdapter`` (LayerNorm → Linear(C, dim) → swish → Linear(dim, C), last layer
zero-initialized, added residually) after every encoder block, and freezes everything else in the
encoder, BatchNorm statistics included. The adapters and the new decoder (rows of shared labels
copied from the base, as ``keep_shared`` does) are what train: a new language costs
:func:`adapter_parameter_share` of the model.

NeMo's adapters keep the vocabulary; the vocabulary transfer lifts that limit. The base head is
kept in the model, frozen and saved in the ``.nemo`` with its config: ``base_decoder`` (the CTC
decoder, or the RNN-T prediction network) and, for RNN-T, ``base_joint`` (config sections
``model.base_decoder`` / ``model.base_joint``); a subword model also keeps the base SentencePiece
tokenizer (``base_tokenizer``, a ``.nemo`` artifact under ``model.base_tokenizer.model_path``). So one
file serves both languages::

    model.set_enabled_adapters(enabled=False)   # NeMo's switch
    model.use_base_decoder(True)                # the base model, exactly (eval mode)
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from nemo.collections.asr.parts.mixins import ASRBPEMixin
from nemo.core.classes.mixins import adapter_mixins
from omegaconf import DictConfig, OmegaConf, open_dict

from nemo_tl.compat import optimizer_param_groups, set_optimizer_param_groups
from nemo_tl.config_checks import checked_choice, checked_int, checked_number, checked_section
from nemo_tl.errors import input_error
from nemo_tl.transfer.tokens import _sentencepiece

__all__ = [
    "AdapterConfig", "AdapterTransferMixin", "adapter_encoder_config", "adapter_parameter_share",
    "attach_adapters", "freeze_outside_adapters", "head_attributes",
]

WHERE = "model.transfer.adapters"
ADAPTER_LAYER = "adapter_layer"  # the ModuleDict NeMo's AdapterModuleMixin adds to each adapted block
_LINEAR_ADAPTER = "nemo.collections.common.parts.adapter_modules.LinearAdapter"
_ACTIVATIONS = ("swish", "silu", "relu", "gelu", "selu", "hardtanh", "identity")  # NeMo's activation_registry
_FROZEN_FLAG = "_nemo_tl_adapter_frozen"
_HOLDS_ADAPTERS = "_nemo_tl_holds_adapters"


@dataclass(frozen=True)
class AdapterConfig:
    """The ``model.transfer.adapters`` section: one NeMo ``LinearAdapter`` per encoder block.

    ``dim`` is the adapter's hidden width; ``name`` the adapter's name in NeMo's adapter API
    (``set_enabled_adapters(name=...)``).
    """

    dim: int
    name: str = "target"
    activation: str = "swish"
    norm_position: str = "pre"
    dropout: float = 0.0

    @classmethod
    def from_section(cls, section: Any, where: str = WHERE) -> AdapterConfig | None:
        """Validate an ``adapters`` section (dict, DictConfig or None: no adapters)."""
        if section is None:
            return None
        fix = "write adapters: {dim: 32} (optional: name, activation, norm_position, dropout)"
        section = checked_section(section, where, ["dim", "name", "activation", "norm_position", "dropout"], fix=fix)
        if "dim" not in section:
            raise input_error("the adapter's hidden width is missing", where=f"{where}.dim", fix=fix)
        name = section.get("name", cls.name)
        if not isinstance(name, str) or not name.isidentifier():
            raise input_error(f"must be a name such as 'de', got {name!r}", where=f"{where}.name",
                              fix="use letters, digits and underscores")
        return cls(
            dim=checked_int(section["dim"], f"{where}.dim", minimum=1, fix="use a hidden width such as 32"),
            name=name,
            activation=checked_choice(section.get("activation", cls.activation), _ACTIVATIONS,
                                      f"{where}.activation", what="activation"),
            norm_position=checked_choice(section.get("norm_position", cls.norm_position), ("pre", "post"),
                                         f"{where}.norm_position", what="norm_position"),
            dropout=_checked_dropout(section.get("dropout", cls.dropout), f"{where}.dropout"),
        )

    def as_section(self) -> dict:
        return {"dim": self.dim, "name": self.name, "activation": self.activation,
                "norm_position": self.norm_position, "dropout": self.dropout}

    def linear_adapter_cfg(self, in_features: int) -> DictConfig:
        """NeMo's ``LinearAdapter`` config (NeMo sets ``in_features`` per block of a ConvASREncoder)."""
        return OmegaConf.create({
            "_target_": _LINEAR_ADAPTER, "in_features": in_features, "dim": self.dim,
            "activation": self.activation, "norm_position": self.norm_position, "dropout": self.dropout,
        })


def _checked_dropout(value: Any, where: str) -> float:
    value = checked_number(value, where, finite=True, fix="use a probability in [0, 1)")
    if value >= 1:
        raise input_error(f"must be below 1, got {value!r}", where=where, fix="use a probability in [0, 1)")
    return value


def head_attributes(model: Any) -> tuple[str, ...]:
    """The attributes of a transfer model's (or class's) head: ``("decoder", "joint")`` for RNN-T, else the CTC decoder's."""
    if getattr(model, "has_rnnt_head", False):
        return ("decoder", "joint")
    return (getattr(model, "ctc_decoder_attr", None) or "decoder",)


def _base_heads(model: Any) -> list[torch.nn.Module]:
    """The kept base head modules (``base_decoder``, ``base_joint``, wherever selected) of ``model``; empty without adapters."""
    prefix = "" if getattr(model, "_base_decoder_selected", False) else "base_"
    heads = [getattr(model, f"{prefix}{attr}", None) for attr in head_attributes(model)]
    return [m for m in heads if isinstance(m, torch.nn.Module)]


# ----------------------------------------------------------------------------- config
def adapter_encoder_config(
    cfg: DictConfig, base: Any | None, adapters: AdapterConfig | None, *, model: type
) -> DictConfig:
    """``cfg`` (a merged transfer config) with NeMo's adapter class as the encoder and the base head kept.

    The encoder ``_target_`` becomes the adapter class NeMo registered for it (what NeMo's
    ``train_asr_adapter.py`` does); ``model.base_decoder`` (and ``model.base_joint`` for RNN-T) get
    the base model's head sections. ``model`` is the transfer class being built: it must have
    :class:`AdapterTransferMixin`.

    Raises:
        InputError: no base model, a transfer class without adapter support, a subword base whose
            tokenizer is not SentencePiece, or an encoder NeMo registers no adapter class for.
    """
    if adapters is None:
        return cfg
    if base is None:
        raise input_error(
            "adapters are added to a pretrained base model's encoder, and this model has no base model",
            where=WHERE,
            fix="set model.transfer.base_model (a .nemo path or a pretrained name), or remove model.transfer.adapters",
        )
    if not issubclass(model, AdapterTransferMixin):
        raise input_error(
            f"{model.__name__} does not support adapters (they keep the base head to recover the base model, "
            "which nemo_tl does for CTC and RNN-T models, character or subword, but not for hybrid RNN-T/CTC ones)",
            where=WHERE,
            fix="use a CTC or RNN-T base (TransferCTCModel, TransferCTCBPEModel, TransferRNNTModel, "
            "TransferRNNTBPEModel), or remove model.transfer.adapters and fine-tune with freeze_encoder_blocks "
            "or replay",
        )
    if getattr(base, "tokenizer", None) is not None and _sentencepiece(base.tokenizer) is None:
        raise input_error(
            f"the base model's tokenizer is {type(base.tokenizer).__name__}; adapters keep the base tokenizer in "
            "the .nemo to decode the base language, which nemo_tl does for SentencePiece (bpe) tokenizers only",
            where=WHERE,
            fix="start from a base with a SentencePiece tokenizer, or remove model.transfer.adapters and fine-tune "
            "(freeze_encoder_blocks, replay) instead",
        )
    target = cfg.encoder.get("_target_")
    info = adapter_mixins.get_registered_adapter(target) if target else None
    if info is None:
        raise input_error(
            f"NeMo has no adapter-capable version of the base model's encoder {target!r} "
            "(NeMo's adapter mixins support ConvASREncoder, e.g. QuartzNet/Jasper/Citrinet, and ConformerEncoder)",
            where=WHERE,
            fix="remove model.transfer.adapters and fine-tune (freeze_encoder_blocks, replay) instead, "
            "or start from a QuartzNet or Conformer base model",
        )
    with open_dict(cfg):
        cfg.encoder._target_ = info.adapter_class_path
        for attr in head_attributes(model):
            cfg[f"base_{attr}"] = OmegaConf.create(OmegaConf.to_container(base.cfg[attr], resolve=True))
        if getattr(base, "tokenizer", None) is not None:
            cfg.base_tokenizer = {"model_path": None}  # set by attach_adapters, an artifact of the .nemo
    return cfg


# ----------------------------------------------------------------------------- freezing
def _keep_frozen(module: torch.nn.Module, args) -> None:
    """Forward pre-hook: none of the module's own parameters requires grad; one holding no adapter runs in eval mode."""
    if module.training and not getattr(module, _HOLDS_ADAPTERS, False):
        module.eval()
    for p in module.parameters(recurse=False):
        if p.requires_grad:
            p.requires_grad_(False)


def _split_by_adapters(root: torch.nn.Module) -> tuple[list[torch.nn.Module], list[torch.nn.Module]]:
    """The modules of ``root`` outside its adapters: those holding no adapter, and those holding one (ancestors)."""
    names = dict(root.named_modules())
    adapter_roots = [n for n in names if n.split(".")[-1] == ADAPTER_LAYER]
    plain, holders = [], []
    for name, m in names.items():
        if any(name == r or name.startswith(r + ".") for r in adapter_roots):
            continue  # an adapter or a part of one
        if any(name == "" or r.startswith(name + ".") for r in adapter_roots):
            holders.append(m)
        else:
            plain.append(m)
    return plain, holders


def freeze_outside_adapters(module: torch.nn.Module) -> int:
    """Freeze every parameter and normalization statistic of ``module`` outside its adapters; return their count.

    The guarantee of :func:`nemo_tl.transfer.freezing.freeze_encoder_blocks`, at the level of the
    modules around the adapters: each frozen module gets a forward pre-hook that keeps it in eval
    mode (BatchNorm statistics fixed, no dropout) with no gradient, so it holds after ``.train()``,
    ``.unfreeze()`` and a restore. A module that holds an adapter (a block) keeps its mode, so
    that the adapters inside it train; its own parameters are frozen all the same.
    """
    plain, holders = _split_by_adapters(module)
    count = 0
    for m in plain + holders:
        for p in m.parameters(recurse=False):
            p.requires_grad_(False)
            count += p.numel()
        setattr(m, _HOLDS_ADAPTERS, any(m is h for h in holders))
        if not getattr(m, _HOLDS_ADAPTERS):
            m.eval()
        if not getattr(m, _FROZEN_FLAG, False):
            m.register_forward_pre_hook(_keep_frozen)
            setattr(m, _FROZEN_FLAG, True)
    return count


# ----------------------------------------------------------------------------- the model side
class _BaseTokenizer(ASRBPEMixin):
    """NeMo's own tokenizer set-up (``ASRBPEMixin._setup_tokenizer``) for the kept base tokenizer.

    Its SentencePiece model is registered on ``model`` as ``base_tokenizer.model_path`` (so it is
    saved in and restored from the ``.nemo``); the vocabulary text files NeMo also looks for are
    not needed to decode and are not kept.
    """

    def __init__(self, model: Any, model_path: str):
        self._model = model
        self._setup_tokenizer(OmegaConf.create({"dir": os.path.dirname(model_path), "type": "bpe",
                                                "model_path": model_path}))

    def register_artifact(self, config_path: str, src: str, verify_src_exists: bool = True) -> str:
        if config_path == "tokenizer.model_path":
            return self._model.register_artifact("base_tokenizer.model_path", src)
        return src


def _attach_base_tokenizer(model: Any, base: Any | None) -> None:
    """``model.base_tokenizer``: the base's SentencePiece tokenizer, kept as a ``.nemo`` artifact.

    A fresh model writes the base tokenizer's model (``serialized_model_proto``) to a directory that
    lives as long as ``model``; a restored one reads it from the ``.nemo`` (NeMo's ``register_artifact``).
    """
    if model.cfg.get("base_tokenizer") is None:
        return
    src = model.cfg.base_tokenizer.get("model_path")
    if base is not None:
        directory = tempfile.mkdtemp(prefix="nemo_tl_base_tokenizer_")
        weakref.finalize(model, shutil.rmtree, directory, True)
        src = os.path.join(directory, "tokenizer.model")
        with open(src, "wb") as f:
            f.write(_sentencepiece(base.tokenizer).serialized_model_proto())
    holder = _BaseTokenizer(model, src)
    if base is not None:  # a restored model's config keeps NeMo's artifact name
        with open_dict(model.cfg):
            model.cfg.base_tokenizer.model_path = holder.model_path
    model.base_tokenizer = holder.tokenizer


def attach_adapters(model: Any, adapters: AdapterConfig | None, base: Any | None = None) -> None:
    """Add the adapters and the frozen base head to ``model`` (built from :func:`adapter_encoder_config`'s config).

    Called at the end of a transfer model's construction. A fresh model (``base`` given) gets
    NeMo's adapters added and enabled and the base head's weights (and tokenizer); a restored one
    already has its adapters (NeMo's ``setup_adapters``) and gets its base head from the ``.nemo``.
    """
    if adapters is None:
        return
    for attr in head_attributes(model):
        head = model.from_config_dict(model.cfg[f"base_{attr}"])
        if base is not None:
            head.load_state_dict(getattr(base, attr).state_dict())
        setattr(model, f"base_{attr}", head)
    _attach_base_tokenizer(model, base)
    if base is not None and not model.is_adapter_available():  # a config with `adapters` (a checkpoint) has them
        in_features = model.cfg.encoder.get("d_model") or model.cfg.encoder.jasper[-1].filters
        model.add_adapter(name=adapters.name, cfg=adapters.linear_adapter_cfg(in_features))
        model.set_enabled_adapters(enabled=False)
        model.set_enabled_adapters(name=adapters.name, enabled=True)
    freeze_outside_adapters(model.encoder)
    for head in _base_heads(model):
        freeze_outside_adapters(head)


def adapter_parameter_share(model: torch.nn.Module) -> dict[str, float]:
    """What a new language costs: adapter and new head parameters against the whole model.

    Returns ``{"adapters": n, "decoder": m, "total": t, "share": (n + m) / t}``: ``decoder`` counts the
    new head (the CTC decoder; for RNN-T the prediction network and joint); the base head, kept for
    the source language, counts in ``total`` only.
    """
    adapter = sum(p.numel() for n, p in model.named_parameters() if f".{ADAPTER_LAYER}." in f".{n}")
    decoder = sum(p.numel() for attr in head_attributes(model) for p in getattr(model, attr).parameters())
    total = sum(p.numel() for p in model.parameters())
    return {"adapters": adapter, "decoder": decoder, "total": total, "share": (adapter + decoder) / total}


class AdapterTransferMixin:
    """``use_base_decoder``: a transfer model with adapters is also its base model, exactly.

    With the adapters disabled (NeMo's ``set_enabled_adapters(enabled=False)``) and the base head
    selected (the CTC decoder, or the RNN-T prediction network and joint; a subword model's
    tokenizer too), the model computes the base model's outputs bit for bit in eval mode (the
    encoder and its statistics are frozen). Saving always writes the target head as ``decoder``
    (and ``joint``).
    """

    _base_decoder_selected = False

    @property
    def base_decoder_selected(self) -> bool:
        return self._base_decoder_selected

    def use_base_decoder(self, enabled: bool = True) -> None:
        """Decode with the base model's head and labels or tokenizer (True) or the target's (False)."""
        if not isinstance(getattr(self, "base_decoder", None), torch.nn.Module):
            raise input_error(
                "this model keeps no base decoder (it was built without adapters)",
                where=WHERE,
                fix="build the model with model.transfer.adapters: {dim: ...} to keep the base decoder",
            )
        if bool(enabled) == self._base_decoder_selected:
            return
        for attr in head_attributes(self):
            own, kept = getattr(self, attr), getattr(self, f"base_{attr}")
            setattr(self, attr, kept)
            setattr(self, f"base_{attr}", own)
        if getattr(self, "base_tokenizer", None) is not None:
            self.tokenizer, self.base_tokenizer = self.base_tokenizer, self.tokenizer
        self._base_decoder_selected = bool(enabled)
        self.change_decoding_strategy(self.cfg.decoding, verbose=False)

    def unfreeze(self, *args, **kwargs) -> None:
        """NeMo's unfreeze (``transcribe()`` calls it), then the base encoder and base head frozen again."""
        super().unfreeze(*args, **kwargs)
        heads = _base_heads(self)
        if heads:
            for module in (self.encoder, *heads):
                freeze_outside_adapters(module)

    def setup_optimizer_param_groups(self):
        """NeMo's parameter groups without the frozen base encoder and base head (no optimizer state for them)."""
        super().setup_optimizer_param_groups()
        groups = optimizer_param_groups(self)
        heads = _base_heads(self)
        if groups is None or not heads:
            return
        frozen = {id(p) for m in (self.encoder, *heads) for p in m.parameters() if not p.requires_grad}
        kept = [{**g, "params": [p for p in g["params"] if id(p) not in frozen]} for g in groups]
        set_optimizer_param_groups(self, [g for g in kept if g["params"]])

    def save_to(self, save_path: str) -> None:
        selected = self._base_decoder_selected
        if selected:
            self.use_base_decoder(False)
        try:
            super().save_to(save_path)
        finally:
            if selected:
                self.use_base_decoder(True)
