"""The multilingual config keys of :class:`~nemo_tl.models.MultiSoftmaxRNNTModel` (Joshi et al. 2021).

``model.languages`` ({lang: {labels}}, order = LID index), ``architecture``,
``language_specific_prediction``, ``lid`` {enabled, weight}, ``lid_free`` {min_frames τ, threshold s_th},
``freeze_batch_norm_after``, ``cuda_graphs_mode``, ``aux_ctc`` {ctc_loss_weight} and ``transfer`` (the pretrained start, the keys of
:class:`~nemo_tl.transfer.config.TransferConfig` that apply), validated once into a :class:`MultilingualConfig`;
:meth:`MultilingualConfig.apply` derives from them what NeMo's RNN-T model builds from.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, open_dict

from nemo_tl.config_checks import checked_choice, checked_flag, checked_int, checked_number, checked_section, to_plain
from nemo_tl.data.texts import expand_labels
from nemo_tl.errors import input_error
from nemo_tl.modules.multisoftmax import MultiSoftmaxDecoder, MultiSoftmaxJoint
from nemo_tl.multilingual.pretrained import check_transfer
from nemo_tl.transfer.config import TransferConfig

__all__ = [
    "ARCHITECTURES",
    "GRAPHS_MODES",
    "LIDConfig",
    "LIDFreeConfig",
    "MULTILINGUAL_KEYS",
    "TRANSFER_KEYS",
    "MultilingualConfig",
    "prepare_multilingual_config",
]

ARCHITECTURES = ("multisoftmax", "vanilla", "onehot")
GRAPHS_MODES = ("no_while_loops", "full_graph")
# The model keys this module owns (a plain NeMo model has none of them).
MULTILINGUAL_KEYS = (
    "languages", "architecture", "language_specific_prediction", "lid", "lid_free", "freeze_batch_norm_after",
    "cuda_graphs_mode", "aux_ctc", "transfer",
)
# The model.transfer keys of TransferConfig that a multilingual model uses (and saves).
TRANSFER_KEYS = ("base_model", "vocabulary", "new_label_init", "freeze_encoder_blocks", "reinitialize")
NEMO_DECODER = "nemo.collections.asr.modules.RNNTDecoder"
NEMO_JOINT = "nemo.collections.asr.modules.RNNTJoint"
_MS_DECODER = f"{MultiSoftmaxDecoder.__module__}.{MultiSoftmaxDecoder.__name__}"
_MS_JOINT = f"{MultiSoftmaxJoint.__module__}.{MultiSoftmaxJoint.__name__}"


@dataclass(frozen=True)
class LIDConfig:
    """``model.lid``: the LID head and the weight of its frame-level CE in the loss."""

    enabled: bool = True
    weight: float = 1.0


@dataclass(frozen=True)
class LIDFreeConfig:
    """``model.lid_free``: early stopping of LID-free decoding (τ in encoder frames, s_th; ``inf``: never).

    The default τ = 5 frames (0.2 s at 4x subsampling) was chosen by the (τ, s_th) sweep in docs/RESULTS.md
    (setting G): T_avg 1.62 of 4 at the CER of no early stopping.
    """

    min_frames: float = 5.0
    threshold: float = 0.5


@dataclass(frozen=True)
class MultilingualConfig:
    """The validated multilingual keys of the model config."""

    vocabularies: dict[str, tuple[str, ...]]  # {lang: labels}, in LID order
    architecture: str = "multisoftmax"
    language_specific_prediction: bool = False
    lid: LIDConfig = field(default_factory=LIDConfig)
    lid_free: LIDFreeConfig = field(default_factory=LIDFreeConfig)
    freeze_batch_norm_after: int | None = None
    cuda_graphs_mode: str = "no_while_loops"
    aux_ctc_weight: float = 0.0  # model.aux_ctc.ctc_loss_weight w: loss = (1 − w) RNN-T + w CTC (+ LID)
    transfer: TransferConfig | None = None  # model.transfer: the pretrained start (None: from scratch)

    @classmethod
    def from_model_config(cls, cfg: DictConfig | Mapping) -> MultilingualConfig:
        """Validate the multilingual keys of ``cfg`` (InputError naming the key) and fill defaults."""
        vocabularies = _languages_from_config(cfg.get("languages"))
        architecture = checked_choice(
            cfg.get("architecture", "multisoftmax"), ARCHITECTURES, "model.architecture", what="architecture"
        )
        lsp = bool(cfg.get("language_specific_prediction", False))
        if lsp and architecture != "multisoftmax":
            raise input_error(
                f"language_specific_prediction needs architecture multisoftmax, not {architecture}",
                where="model.language_specific_prediction",
                fix="set it to false, or use architecture: multisoftmax",
            )
        lid = {"enabled": True, "weight": 1.0}
        lid.update(checked_section(cfg.get("lid"), "model.lid", lid, fix=f"write lid: {lid}"))
        lid_free = {"min_frames": LIDFreeConfig.min_frames, "threshold": LIDFreeConfig.threshold}
        lid_free.update(checked_section(cfg.get("lid_free"), "model.lid_free", lid_free, fix=f"write lid_free: {lid_free}"))
        freeze_after = cfg.get("freeze_batch_norm_after")
        if freeze_after is not None:
            checked_int(
                freeze_after, "model.freeze_batch_norm_after",
                fix="e.g. 300 (the encoder's BatchNorm layers use running statistics from step 300 on), or null",
            )
        return cls(
            vocabularies={lang: tuple(labels) for lang, labels in vocabularies.items()},
            architecture=architecture,
            language_specific_prediction=lsp,
            lid=LIDConfig(
                enabled=checked_flag(lid["enabled"], "model.lid.enabled"),
                weight=checked_number(lid["weight"], "model.lid.weight",
                                      fix="give the weight of the LID cross entropy, e.g. 1.0"),
            ),
            lid_free=LIDFreeConfig(
                min_frames=checked_number(lid_free["min_frames"], "model.lid_free.min_frames",
                                          fix="give τ in encoder frames, e.g. 5 (.inf: never)"),
                threshold=checked_number(lid_free["threshold"], "model.lid_free.threshold",
                                         fix="give s_th, e.g. 0.5 (.inf: never)"),
            ),
            freeze_batch_norm_after=freeze_after,
            cuda_graphs_mode=checked_choice(
                cfg.get("cuda_graphs_mode", "no_while_loops"), GRAPHS_MODES, "model.cuda_graphs_mode",
                what="CUDA-graph mode",
                fix="no_while_loops (default), or full_graph; decoding.greedy.use_cuda_graph_decoder: false turns "
                "graphs off",
            ),
            aux_ctc_weight=_aux_ctc_weight(cfg.get("aux_ctc")),
            transfer=_transfer_from_config(cfg.get("transfer"), architecture),
        )

    @property
    def languages(self) -> list[str]:
        """Language codes in LID order."""
        return list(self.vocabularies)

    @property
    def union_labels(self) -> list[str]:
        """The union of the languages' labels, in first-seen order (the vanilla/onehot softmax)."""
        return list(dict.fromkeys(c for labels in self.vocabularies.values() for c in labels))

    @property
    def token_vocabularies(self) -> dict[str, list[str]]:
        """The labels a language's transcripts are tokenized with: its own (multisoftmax), or the union (vanilla/onehot)."""
        if self.architecture == "multisoftmax":
            return {lang: list(labels) for lang, labels in self.vocabularies.items()}
        union = self.union_labels
        return {lang: union for lang in self.vocabularies}

    def apply(self, cfg: DictConfig) -> DictConfig:
        """A copy of ``cfg`` with these keys normalized and what NeMo's RNN-T model builds from derived.

        ``languages`` becomes ``{lang: {labels: [...]}}``; sets ``labels`` (the union), the ``_target_``
        and per-language sizes of ``decoder`` and ``joint`` and, for ``onehot``, ``encoder.feat_in`` =
        features + L. Checks the fused-joint keys of ``model.joint``.
        """
        _check_fused_joint(to_plain(cfg.get("joint")))
        cfg = copy.deepcopy(cfg)
        vocabularies = {lang: list(labels) for lang, labels in self.vocabularies.items()}
        with open_dict(cfg):
            cfg.languages = {lang: {"labels": labels} for lang, labels in vocabularies.items()}
            cfg.architecture = self.architecture
            cfg.language_specific_prediction = self.language_specific_prediction
            cfg.lid = {"enabled": self.lid.enabled, "weight": self.lid.weight}
            cfg.lid_free = {"min_frames": self.lid_free.min_frames, "threshold": self.lid_free.threshold}
            cfg.freeze_batch_norm_after = self.freeze_batch_norm_after
            cfg.cuda_graphs_mode = self.cuda_graphs_mode
            cfg.aux_ctc = {"ctc_loss_weight": self.aux_ctc_weight}
            if self.transfer is not None:  # the keys that apply to a multilingual model
                cfg.transfer = {key: getattr(self.transfer, key) for key in TRANSFER_KEYS}
            cfg.labels = self.union_labels
            decoder = cfg.decoder
            joint = cfg.joint
            for key in ("vocab_sizes", "language_specific_prediction", "vocabularies"):
                decoder.pop(key, None)
                joint.pop(key, None)
            if self.architecture == "multisoftmax":
                decoder._target_ = _MS_DECODER
                decoder.vocab_sizes = {lang: len(labels) for lang, labels in vocabularies.items()}
                decoder.language_specific_prediction = self.language_specific_prediction
                joint._target_ = _MS_JOINT
                joint.vocabularies = vocabularies
            else:
                decoder._target_ = NEMO_DECODER
                joint._target_ = NEMO_JOINT
            if self.architecture == "onehot":
                features = cfg.preprocessor.get("features")
                if features is None:
                    raise input_error(
                        "onehot needs the feature size to size the encoder input",
                        where="model.preprocessor.features",
                        fix="set preprocessor.features (the number of mel bands)",
                    )
                cfg.encoder.feat_in = int(features) + len(vocabularies)
        return cfg


def prepare_multilingual_config(cfg: DictConfig) -> DictConfig:
    """Validate the multilingual keys of ``cfg`` and derive what NeMo's RNN-T model builds from.

    :meth:`MultilingualConfig.from_model_config` then :meth:`MultilingualConfig.apply`. Idempotent
    (runs again on restore).
    """
    return MultilingualConfig.from_model_config(cfg).apply(cfg)


def _aux_ctc_weight(section: Any) -> float:
    """``model.aux_ctc.ctc_loss_weight`` as a number in [0, 1) (0: no auxiliary CTC head)."""
    section = checked_section(section, "model.aux_ctc", ["ctc_loss_weight"], fix="write aux_ctc: {ctc_loss_weight: 0.3}")
    fix = "give the CTC share of the loss in [0, 1), e.g. 0.3 (0: off)"
    weight = checked_number(section.get("ctc_loss_weight", 0.0), "model.aux_ctc.ctc_loss_weight", finite=True, fix=fix)
    if weight >= 1:
        raise input_error(f"must be < 1 (the RNN-T keeps 1 − w of the loss), got {weight}",
                          where="model.aux_ctc.ctc_loss_weight", fix=fix)
    return weight


def _transfer_from_config(section: Any, architecture: str) -> TransferConfig | None:
    """``model.transfer`` validated (TransferConfig's checks, then what applies to a multilingual model), or None."""
    if section is None:
        return None
    transfer = TransferConfig.from_section(section)
    check_transfer(transfer, architecture)
    return transfer


def _languages_from_config(value: Any) -> dict[str, list[str]]:
    """``model.languages`` as an ordered ``{lang: labels}``; raises InputError on bad input.

    Accepts the mapping form ``{en: {labels: [...]}}`` and the list form
    ``[{name: en, labels: [...]}, ...]`` (where a language can be given twice by mistake).
    """
    value = to_plain(value)
    if not value:
        raise input_error(
            "no languages given",
            where="model.languages",
            fix="list the languages in LID order, e.g. languages: {en: {labels: [' ', a, b]}, hi: {labels: [...]}}",
        )
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, Sequence) and not isinstance(value, str):
        items = []
        for i, item in enumerate(value):
            if not isinstance(item, Mapping) or "name" not in item:
                raise input_error(
                    f"entry {i} is {item!r}, not {{name: ..., labels: [...]}}",
                    where=f"model.languages[{i}]",
                    fix="give each language as {name: <code>, labels: [...]}",
                )
            items.append((item["name"], item))
    else:
        raise input_error(
            f"must be a mapping of languages, got {value!r}",
            where="model.languages",
            fix="write languages: {en: {labels: [...]}, hi: {labels: [...]}}",
        )
    out: dict[str, list[str]] = {}
    for name, spec in items:
        key = str(name)
        where = f"model.languages.{key}"
        if key in out or key.strip().lower() in {k.strip().lower() for k in out}:
            raise input_error(
                f"language {key!r} is given twice",
                where="model.languages",
                fix="give every language once (the order is the LID class index)",
            )
        labels = spec.get("labels") if isinstance(spec, Mapping) else spec
        labels = expand_labels(labels, where=f"{where}.labels")  # a language code: its alphabet
        if labels is not None and not isinstance(labels, (list, tuple)):
            raise input_error(
                f"labels of {key!r} must be a list of characters, got {labels!r}",
                where=f"{where}.labels",
                fix="list the language's characters, e.g. labels: [' ', a, b, c]",
            )
        if not labels:
            raise input_error(
                f"language {key!r} has an empty label list",
                where=f"{where}.labels",
                fix="list the language's characters, e.g. labels: [' ', a, b, c]",
            )
        labels = [str(c) for c in labels]
        dups = sorted({c for c in labels if labels.count(c) > 1})
        if dups:
            raise input_error(
                f"labels given twice: {', '.join(repr(c) for c in dups)}",
                where=f"{where}.labels",
                fix="list every label once",
            )
        out[key] = labels
    return out


def _check_fused_joint(joint: Mapping[str, Any] | None) -> None:
    """NeMo's fused joint (``joint.fuse_loss_wer``) needs ``joint.fused_batch_size`` ≥ 1; InputError otherwise."""
    joint = joint or {}
    fused = joint.get("experimental_fuse_loss_wer")  # NeMo's deprecated name wins when given
    fused = joint.get("fuse_loss_wer", False) if fused is None else fused
    if checked_flag(fused, "model.joint.fuse_loss_wer", fix="false"):
        checked_int(
            joint.get("fused_batch_size"), "model.joint.fused_batch_size", minimum=1,
            fix="set fused_batch_size: 4 (utterances per joint sub-batch), or fuse_loss_wer: false",
        )
