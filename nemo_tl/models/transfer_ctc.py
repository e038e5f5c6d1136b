"""TransferCTCModel: a NeMo EncDecCTCModel fine-tuned from a pretrained base (Huang et al. 2020).

The preprocessor and encoder come from the base model; the decoder is rebuilt for the
target vocabulary (``model.labels``) and, with ``vocabulary: keep_shared``, starts from the
base decoder's rows of every label both vocabularies hold (Kunze et al. 2017). The k lowest
encoder blocks can be frozen. Restoring a saved model needs neither the base nor a network.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import Trainer
from nemo.collections.asr.models import ASRModel, EncDecCTCModel
from omegaconf import DictConfig, OmegaConf, open_dict

from nemo_tl.compat import decoder_input_width, optimizer_param_groups, set_optimizer_param_groups
from nemo_tl.data.texts import expand_labels
from nemo_tl.errors import input_error
from nemo_tl.models.mixins import ManifestDataMixin
from nemo_tl.training import AtomicSaveMixin, ResumeRNGState, SkipNonFiniteStepMixin
from nemo_tl.transfer.base import load_base_model
from nemo_tl.transfer.config import TransferConfig, describe_model, merge_base_architecture
from nemo_tl.transfer.freezing import freeze_encoder_blocks
from nemo_tl.transfer.recipe import finetune_optim
from nemo_tl.transfer.vocabulary import transfer_decoder_rows

__all__ = ["TransferCTCModel"]

FINETUNE_OPTIM = finetune_optim()  # the recipe's optim section at lr 0.001 (nemo_tl.transfer.recipe)


def _resolved(cfg: DictConfig | dict) -> DictConfig:
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    return OmegaConf.create(cfg)


_DATASET_SECTIONS = ("train_ds", "validation_ds", "test_ds")


def _expand_label_codes(cfg: DictConfig | dict) -> DictConfig:
    """``cfg`` with a language code in ``labels`` (and a data section's ``labels``) expanded to its alphabet.

    Done before interpolations are resolved, so that ``train_ds.labels: ${model.labels}`` gets the list.
    A DictConfig is changed in place (its parent, e.g. Hydra's root config, keeps resolving).
    """
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    places = [(cfg, "labels", "model.labels")]
    places += [(cfg[s], "labels", f"model.{s}.labels") for s in _DATASET_SECTIONS
               if isinstance(cfg.get(s), DictConfig)]
    for node, key, where in places:
        if key in node and not OmegaConf.is_missing(node, key) and isinstance(node[key], str):
            with open_dict(node):
                node[key] = expand_labels(node[key], where=where)
    return cfg


def _decoder_from_labels(cfg: DictConfig) -> DictConfig:
    """Set ``decoder.num_classes`` and ``decoder.vocabulary`` from ``model.labels`` (built without a base).

    A value the config gives that disagrees with the labels is an InputError, not overwritten.
    """
    if cfg.get("labels") is None or not isinstance(cfg.get("decoder"), DictConfig):
        return cfg
    labels = _check_labels(cfg.labels)
    decoder = cfg.decoder
    vocabulary = decoder.get("vocabulary")
    if vocabulary is not None and list(vocabulary) != labels:
        raise input_error(
            f"decoder.vocabulary ({len(vocabulary)} labels) differs from model.labels ({len(labels)} labels)",
            where="model.decoder.vocabulary",
            fix="remove model.decoder.vocabulary (nemo_tl sets it from model.labels), or write ${model.labels}",
        )
    classes = decoder.get("num_classes")
    if classes is not None and classes != len(labels):
        raise input_error(
            f"num_classes={classes}, but model.labels has {len(labels)} labels",
            where="model.decoder.num_classes",
            fix="remove model.decoder.num_classes (nemo_tl sets it from model.labels)",
        )
    with open_dict(decoder):
        decoder.vocabulary = labels
        decoder.num_classes = len(labels)
    return cfg


def _check_labels(labels: Any, where: str = "model.labels") -> list[str]:
    if labels is None or labels == "???":
        raise input_error(
            "the target vocabulary is missing",
            where=where,
            fix="set model.labels (or labels= in from_base) to the list of target characters, "
            "e.g. the base model's labels for an accent or domain transfer",
        )
    labels = list(labels)
    bad = [x for x in labels if not isinstance(x, str) or len(x) != 1]
    if bad or not labels:
        raise input_error(
            f"labels must be a non-empty list of single characters; bad entries: {bad[:5]!r}",
            where=where,
            fix="list each character once, e.g. [' ', 'a', 'b', ..., \"'\"]",
        )
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise input_error(f"labels repeat {dupes!r}", where=where, fix="list each character once")
    return labels


class TransferCTCModel(SkipNonFiniteStepMixin, AtomicSaveMixin, ManifestDataMixin, EncDecCTCModel):
    """A character CTC model fine-tuned from a pretrained base, configured by ``model.transfer``.

    ``model.transfer`` keys: ``base_model`` (.nemo path or NeMo pretrained name),
    ``vocabulary`` (keep_shared | same | reinit), ``new_label_init`` (zero | random),
    ``freeze_encoder_blocks`` (k lowest entries of ``encoder.encoder``, C1 included) and
    ``reinitialize`` (base architecture, fresh weights: the from-scratch control).
    Without a ``transfer`` section (or with ``base_model: null``) it is a plain EncDecCTCModel
    built from ``cfg`` that still honours ``freeze_encoder_blocks``.

    ``base_model`` (keyword only) is a loaded base model to start from instead of loading
    ``transfer.base_model`` (what :meth:`from_base` passes); a restored model needs no base.
    """

    def __init__(self, cfg: DictConfig, trainer: Trainer | None = None, *, base_model: ASRModel | None = None):
        restoring = self._is_model_being_restored()
        cfg = _resolved(cfg if restoring else _expand_label_codes(cfg))
        transfer = TransferConfig.from_section(cfg.get("transfer"))
        base = None
        if not restoring and base_model is not None:
            base = load_base_model(base_model)  # checks it is a character CTC model
            if transfer.base_model is None:
                transfer = dataclasses.replace(transfer, base_model=describe_model(base))
        elif not restoring and transfer.base_model is not None:
            base = load_base_model(transfer.base_model)
        if base is not None:
            cfg = self._config_from_base(cfg, base, transfer)
        elif not restoring:
            cfg = _decoder_from_labels(cfg)
        with open_dict(cfg):
            cfg.transfer = transfer.as_section()
            cfg.target = f"{type(self).__module__}.{type(self).__qualname__}"
        super().__init__(cfg=cfg, trainer=trainer)
        if base is not None and not transfer.reinitialize:
            self._load_base_weights(base, transfer)
        self._frozen_blocks = freeze_encoder_blocks(self.encoder, transfer.freeze_encoder_blocks)

    def configure_callbacks(self) -> list:
        """Every fit keeps the RNG states in its checkpoints, for an exact mid-epoch resume."""
        return [ResumeRNGState()]

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _config_from_base(cfg: DictConfig, base: EncDecCTCModel, transfer: TransferConfig) -> DictConfig:
        labels = _check_labels(cfg.get("labels"))
        base_labels = list(base.decoder.vocabulary)
        if transfer.vocabulary == "same" and labels != base_labels:
            only_new = [x for x in labels if x not in base_labels]
            only_base = [x for x in base_labels if x not in labels]
            raise input_error(
                "vocabulary: same needs model.labels equal to the base model's labels (same order); "
                f"labels only in the config: {only_new!r}, only in the base: {only_base!r}"
                + ("" if only_new or only_base else " (the order differs)"),
                where="model.transfer.vocabulary",
                fix="use vocabulary: keep_shared to copy the shared labels' rows, or set model.labels to "
                f"the base labels {base_labels!r}",
            )
        return merge_base_architecture(cfg, base.cfg, labels, decoder_feat_in=decoder_input_width(base.decoder))

    @torch.no_grad()
    def _load_base_weights(self, base: EncDecCTCModel, transfer: TransferConfig) -> None:
        self.preprocessor.load_state_dict(base.preprocessor.state_dict())
        self.encoder.load_state_dict(base.encoder.state_dict())
        if transfer.vocabulary == "reinit":
            return
        if transfer.vocabulary == "same":
            missing, unexpected = self.decoder.load_state_dict(base.decoder.state_dict(), strict=False)
            if unexpected:
                raise input_error(
                    f"the base decoder has parameters the new decoder lacks: {unexpected}",
                    where="model.decoder._target_",
                    fix="use a decoder class compatible with the base model's",
                )
            return
        transfer_decoder_rows(
            base.decoder, list(base.decoder.vocabulary), self.decoder, list(self.decoder.vocabulary),
            new_label_init=transfer.new_label_init,
        )

    @classmethod
    def from_base(
        cls,
        base: str | ASRModel,
        labels: Sequence[str] | None = None,
        *,
        vocabulary: str = "keep_shared",
        new_label_init: str = "zero",
        freeze_encoder_blocks: int = 0,
        reinitialize: bool = False,
        cfg: DictConfig | dict | None = None,
        trainer: Trainer | None = None,
    ) -> TransferCTCModel:
        """Build a transfer model from ``base`` (a model object, a ``.nemo`` path or a pretrained name).

        Args:
            labels: the target characters (for an accent or domain transfer, the base's labels), or a
                language code known to :mod:`nemo_tl.data.texts` (``"de"``: its alphabet).
            vocabulary, new_label_init, freeze_encoder_blocks, reinitialize: the ``transfer`` keys.
            cfg: further ``model`` config keys (``train_ds``, ``validation_ds``, ``optim``,
                ``spec_augment``...); the optimizer defaults to the fine-tuning recipe
                (NovoGrad, lr 0.001, betas (0.95, 0.25), cosine annealing, 12% warmup).
        """
        model_obj = load_base_model(base)
        base_cfg = _resolved(model_obj.cfg)
        full = OmegaConf.create(
            {
                "sample_rate": base_cfg.get("sample_rate", 16000),
                "labels": None if labels is None else list(expand_labels(labels, where="labels")),
                "optim": finetune_optim(),
                "decoding": base_cfg.get("decoding"),
                "spec_augment": base_cfg.get("spec_augment"),
            }
        )
        full = OmegaConf.merge(full, _resolved(cfg or {}))
        with open_dict(full):
            full.transfer = {  # validated once, by __init__
                "base_model": base if isinstance(base, str) else describe_model(model_obj),
                "vocabulary": vocabulary,
                "new_label_init": new_label_init,
                "freeze_encoder_blocks": freeze_encoder_blocks,
                "reinitialize": reinitialize,
            }
            if full.get("decoding") is None:
                full.pop("decoding")
        return cls(cfg=full, trainer=trainer, base_model=model_obj)

    # ------------------------------------------------------------------ freezing
    @property
    def frozen_blocks(self) -> list[torch.nn.Module]:
        """The frozen encoder blocks, lowest first."""
        return list(self._frozen_blocks)

    def train(self, mode: bool = True):
        super().train(mode)
        for block in getattr(self, "_frozen_blocks", ()):
            block.eval()
        return self

    def unfreeze(self, *args, **kwargs) -> None:
        super().unfreeze(*args, **kwargs)
        self._frozen_blocks = freeze_encoder_blocks(self.encoder, len(self._frozen_blocks))

    def setup_optimizer_param_groups(self):
        """NeMo's parameter groups without the frozen parameters (so no optimizer state or decay touches them)."""
        super().setup_optimizer_param_groups()
        if optimizer_param_groups(self) is None:
            return
        frozen = {id(p) for block in self._frozen_blocks for p in block.parameters()}
        groups = []
        for group in optimizer_param_groups(self):
            params = [p for p in group["params"] if id(p) not in frozen]
            if params:
                groups.append({**group, "params": params})
        set_optimizer_param_groups(self, groups)
