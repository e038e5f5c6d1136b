"""One construction for every transfer model: :class:`TransferModelMixin`, and :func:`from_base`.

Load the base → merge its preprocessor, encoder (and RNN-T head) config → build the NeMo model for
the target vocabulary → load the base weights → copy the shared token rows (``keep_shared``) →
freeze the k lowest encoder blocks → report what was kept (``model.transfer_report``).

Each transfer class lists the mixin first, then the package's training mixins, then its NeMo class
(``class TransferCTCBPEModel(TransferModelMixin, ForgettingRegularizationMixin, SkipNonFiniteStepMixin, AtomicSaveMixin,
ManifestDataMixin, EncDecCTCModelBPE)``), and states its head with three class attributes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from lightning.pytorch import Trainer
from nemo.collections.asr.models import ASRModel
from nemo.utils import logging
from omegaconf import DictConfig, OmegaConf, open_dict

from nemo_tl.compat import decoder_input_width, optimizer_param_groups, set_optimizer_param_groups
from nemo_tl.config_checks import to_plain
from nemo_tl.data.texts import expand_labels
from nemo_tl.errors import input_error
from nemo_tl.training import ResumeRNGState
from nemo_tl.transfer.adapters import adapter_encoder_config, attach_adapters
from nemo_tl.transfer.base import load_base_model
from nemo_tl.transfer.config import (
    TransferConfig,
    describe_model,
    merge_base_ctc_head,
    merge_base_encoder,
    merge_base_rnnt_head,
)
from nemo_tl.transfer.freezing import freeze_encoder_blocks, frozen_parameters
from nemo_tl.transfer.recipe import finetune_optim
from nemo_tl.transfer.tokens import (
    VocabularyReport,
    check_tokenizer_dir,
    compose_sources,
    model_tokens,
    vocabulary_kind,
)
from nemo_tl.transfer.vocabulary import transfer_decoder_rows, transfer_rnnt_rows

__all__ = ["TransferModelMixin", "check_labels", "configured_rnnt_loss", "from_base", "resolved", "transfer_class"]


def resolved(cfg: DictConfig | dict) -> DictConfig:
    """A resolved copy of ``cfg`` as a DictConfig."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    return OmegaConf.create(cfg)


_DATASET_SECTIONS = ("train_ds", "validation_ds", "test_ds")


def expand_label_codes(cfg: DictConfig | dict) -> DictConfig:
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


def check_labels(labels: Any, where: str = "model.labels") -> list[str]:
    """The target characters ``labels`` as a list; InputError when missing, not single characters, or repeated."""
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


def configured_rnnt_loss(model: Any) -> None:
    """Rebuild ``model.loss`` from ``model.cfg.loss`` the way NeMo's RNN-T ``__init__`` does.

    NeMo 3.0's ``change_vocabulary`` replaces a TDT (or multi-blank) loss with a plain RNN-T loss;
    call this after it to get the configured loss back (works on any NeMo RNN-T model).
    """
    from nemo.collections.asr.losses.rnnt import RNNTLoss

    loss_name, loss_kwargs = model.extract_rnnt_loss_cfg(model.cfg.get("loss", None))
    num_classes = model.joint.num_classes_with_blank - 1
    if loss_name == "tdt":
        num_classes -= model.joint.num_extra_outputs
    model.loss = RNNTLoss(
        num_classes=num_classes, loss_name=loss_name, loss_kwargs=loss_kwargs,
        reduction=model.cfg.get("rnnt_reduction", "mean_batch"),
    )
    if model.joint.fuse_loss_wer:
        model.joint.set_loss(model.loss)


class TransferModelMixin:
    """A NeMo ASR model fine-tuned from a pretrained base, configured by ``model.transfer``; put first.

    ``model.transfer`` keys: ``base_model`` (.nemo path or NeMo pretrained name), ``vocabulary``
    (keep_shared | same | reinit), ``new_label_init`` (zero | random | compose),
    ``freeze_encoder_blocks`` (k lowest encoder blocks) and ``reinitialize`` (base architecture,
    fresh weights: the from-scratch control). The target vocabulary is ``model.labels`` (character
    classes) or NeMo's ``model.tokenizer`` section (``dir``, ``type: bpe | wpe``; subword classes).
    Without a base (``base_model: null``) it is the plain NeMo model built from ``cfg``, still
    honouring ``freeze_encoder_blocks``.

    ``base_model`` (keyword only) is a loaded base model to start from instead of loading
    ``transfer.base_model`` (what :meth:`from_base` passes); a restored model needs no base.
    """

    #: The NeMo classes a base may be (isinstance), and its vocabulary kind: "chars" or "subword".
    base_family: ClassVar[tuple[type, ...]] = ()
    vocabulary_type: ClassVar[str] = "chars"
    #: The CTC decoder's attribute (None: no CTC head), and whether the model has an RNN-T head.
    ctc_decoder_attr: ClassVar[str | None] = None
    has_rnnt_head: ClassVar[bool] = False

    transfer_report: VocabularyReport | None = None

    def __init__(self, cfg: DictConfig, trainer: Trainer | None = None, *, base_model: ASRModel | None = None):
        restoring = self._is_model_being_restored()
        if self.vocabulary_type == "chars" and not restoring:
            cfg = expand_label_codes(cfg)
        cfg = resolved(cfg)
        transfer = TransferConfig.from_section(cfg.get("transfer"))
        base = None
        if not restoring and (base_model is not None or transfer.base_model is not None):
            base = self._load_base(base_model if base_model is not None else transfer.base_model)
            if transfer.base_model is None:
                transfer = dataclasses.replace(transfer, base_model=describe_model(base))
        if not restoring:
            self._check_target_vocabulary(cfg, base, transfer)
            cfg = self._config_from_base(cfg, base) if base is not None else self._config_without_base(cfg)
            cfg = adapter_encoder_config(cfg, base, transfer.adapters, model=type(self))
        with open_dict(cfg):
            cfg.transfer = transfer.as_section()
            cfg.target = f"{type(self).__module__}.{type(self).__qualname__}"
        super().__init__(cfg=cfg, trainer=trainer)
        if base is not None:
            self._check_same_vocabulary(base, transfer)
            if not transfer.reinitialize:
                self.transfer_report = self._load_base_weights(base, transfer)
                logging.info(f"{type(self).__name__}: {self.transfer_report}")
        self._frozen_blocks = freeze_encoder_blocks(self.encoder, transfer.freeze_encoder_blocks)
        attach_adapters(self, transfer.adapters, None if transfer.reinitialize else base)

    def configure_callbacks(self) -> list:
        """Every fit keeps the RNG states in its checkpoints, for an exact mid-epoch resume."""
        return [ResumeRNGState()]

    # ------------------------------------------------------------------ construction
    @classmethod
    def _load_base(cls, spec: str | ASRModel) -> ASRModel:
        return load_base_model(spec, expected=cls.base_family, vocabulary=cls.vocabulary_type)

    def _check_target_vocabulary(self, cfg: DictConfig, base: ASRModel | None, transfer: TransferConfig) -> None:
        """InputError for a target vocabulary of the wrong kind, or one ``transfer`` cannot map onto the base's."""
        labels, tokenizer = cfg.get("labels"), cfg.get("tokenizer")
        if self.vocabulary_type == "subword":
            if labels is not None and base is not None:
                raise input_error(
                    f"labels are given, but {type(self).__name__} takes its target vocabulary from a tokenizer "
                    "(the base model is a subword model)",
                    where="model.labels", fix="remove model.labels (labels= in from_base) and set model.tokenizer.dir "
                    "(tokenizer_dir= in from_base) to the target tokenizer",
                )
            tokenizer = tokenizer or {}
            check_tokenizer_dir(tokenizer.get("dir"), tokenizer.get("type"))
            target_kind = tokenizer.get("type")
        else:
            if tokenizer is not None:
                raise input_error(
                    f"a tokenizer is given, but {type(self).__name__} takes its target vocabulary from model.labels "
                    "(the base model is a character model)",
                    where="model.tokenizer", fix="remove model.tokenizer (tokenizer_dir= in from_base) and set "
                    "model.labels (labels= in from_base) to the target characters",
                )
            if base is not None or labels is not None:
                check_labels(labels)
            target_kind = "chars"
        if transfer.new_label_init == "compose" and target_kind != "bpe":
            raise input_error(
                f"new_label_init: compose splits new SentencePiece pieces into base pieces; this target "
                f"vocabulary is {'characters' if target_kind == 'chars' else 'a WordPiece (wpe) tokenizer'}",
                where="model.transfer.new_label_init", fix="use zero or random",
            )
        if base is None or transfer.reinitialize or transfer.vocabulary == "reinit":
            return
        base_kind = vocabulary_kind(base)
        if transfer.new_label_init == "compose" and base_kind != "bpe":
            raise input_error(
                f"new_label_init: compose needs a SentencePiece (bpe) base tokenizer; the base's is {base_kind}",
                where="model.transfer.new_label_init", fix="use zero or random",
            )
        if base_kind != target_kind:
            raise input_error(
                f"the base model's tokenizer is {base_kind} and the target's {target_kind}: their pieces are "
                f"written differently (SentencePiece marks a word start with '▁', WordPiece a continuation with "
                f"'##'), so {transfer.vocabulary} would map almost nothing",
                where="model.tokenizer.type",
                fix=f"train the target tokenizer as {base_kind} (python -m nemo_tl.transfer.tokenizer), or use "
                "vocabulary: reinit",
            )

    def _config_from_base(self, cfg: DictConfig, base: ASRModel) -> DictConfig:
        """``cfg`` with the base's preprocessor, encoder and heads, sized for the target vocabulary by NeMo."""
        base_cfg = resolved(base.cfg)
        cfg = merge_base_encoder(cfg, base_cfg)
        if self.has_rnnt_head:
            cfg = merge_base_rnnt_head(cfg, base_cfg)
        attr = self.ctc_decoder_attr
        if attr is not None:
            labels = check_labels(cfg.labels) if self.vocabulary_type == "chars" else None
            cfg = merge_base_ctc_head(cfg, base_cfg, decoder_input_width(getattr(base, attr)), labels,
                                      section=None if attr == "decoder" else "aux_ctc")
        if self.vocabulary_type == "chars":
            with open_dict(cfg):
                cfg.labels = check_labels(cfg.labels)
        return cfg

    def _config_without_base(self, cfg: DictConfig) -> DictConfig:
        """The config of a model built without a base (a plain NeMo model); override to fill vocabulary keys."""
        return cfg

    def _check_same_vocabulary(self, base: ASRModel, transfer: TransferConfig) -> None:
        if transfer.vocabulary != "same":
            return
        tokens, base_tokens = model_tokens(self), model_tokens(base)
        if tokens == base_tokens:
            return
        only_new = [x for x in tokens if x not in set(base_tokens)]
        only_base = [x for x in base_tokens if x not in set(tokens)]
        what = "model.labels" if self.vocabulary_type == "chars" else "the target tokenizer's tokens"
        raise input_error(
            f"vocabulary: same needs {what} equal to the base model's (same order); "
            f"tokens only in the config: {only_new[:20]!r}, only in the base: {only_base[:20]!r}"
            + ("" if only_new or only_base else " (the order differs)"),
            where="model.transfer.vocabulary",
            fix="use vocabulary: keep_shared to copy the shared tokens' rows, or give the base model's "
            + ("labels" if self.vocabulary_type == "chars" else "tokenizer"),
        )

    def _heads(self, base: ASRModel) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
        """``(base module, own module)`` of each head: the RNN-T decoder and joint, the CTC decoder."""
        heads = [(base.decoder, self.decoder), (base.joint, self.joint)] if self.has_rnnt_head else []
        if self.ctc_decoder_attr is not None:
            heads.append((getattr(base, self.ctc_decoder_attr), getattr(self, self.ctc_decoder_attr)))
        return heads

    @torch.no_grad()
    def _load_base_weights(self, base: ASRModel, transfer: TransferConfig) -> VocabularyReport:
        self.preprocessor.load_state_dict(base.preprocessor.state_dict())
        self.encoder.load_state_dict(base.encoder.state_dict())
        base_tokens, tokens = model_tokens(base), model_tokens(self)
        report = VocabularyReport.build(base_tokens, tokens, transfer.vocabulary, transfer.new_label_init)
        if transfer.vocabulary == "reinit":
            return report
        if transfer.vocabulary == "same":
            for base_head, head in self._heads(base):
                _, unexpected = head.load_state_dict(base_head.state_dict(), strict=False)
                if unexpected:
                    raise input_error(
                        f"the base {type(base_head).__name__} has parameters the new one lacks: {unexpected}",
                        where="model.decoder._target_",
                        fix="use a decoder class compatible with the base model's",
                    )
            return report
        sources = None
        if transfer.new_label_init == "compose":
            sources = compose_sources(base.tokenizer, base_tokens, tokens)
        if self.has_rnnt_head:
            try:
                transfer_rnnt_rows(base.decoder, base.joint, base_tokens, self.decoder, self.joint, tokens,
                                   new_label_init=transfer.new_label_init, compose_sources=sources)
            except ValueError as e:
                raise input_error(f"the RNN-T head cannot take the base's weights: {e}", where="model",
                                  fix="leave model.decoder / model.joint / model.loss to the base model") from e
        if self.ctc_decoder_attr is not None:
            transfer_decoder_rows(
                getattr(base, self.ctc_decoder_attr), base_tokens, getattr(self, self.ctc_decoder_attr), tokens,
                new_label_init=transfer.new_label_init, compose_sources=sources,
            )
        return report

    @classmethod
    def from_base(
        cls,
        base: str | ASRModel,
        labels: Sequence[str] | str | None = None,
        *,
        tokenizer_dir: str | None = None,
        tokenizer_type: str = "bpe",
        vocabulary: str = "keep_shared",
        new_label_init: str = "zero",
        freeze_encoder_blocks: int = 0,
        reinitialize: bool = False,
        adapters: dict | None = None,
        regularization: dict | None = None,
        cfg: DictConfig | dict | None = None,
        trainer: Trainer | None = None,
    ):
        """Build a transfer model from ``base`` (a model object, a ``.nemo`` path or a pretrained name).

        Args:
            labels: the target characters of a character model (for an accent or domain transfer, the
                base's labels), or a language code known to :mod:`nemo_tl.data.texts` (``"de"``).
            tokenizer_dir, tokenizer_type: the target tokenizer of a subword model (``bpe``: SentencePiece
                ``tokenizer.model``; ``wpe``: WordPiece ``vocab.txt``), NeMo's ``model.tokenizer``.
            vocabulary, new_label_init, freeze_encoder_blocks, reinitialize, adapters, regularization: the
                ``transfer`` keys (``adapters={"dim": 32}``: NeMo encoder adapters, :mod:`nemo_tl.transfer.adapters`;
                ``regularization={"l2sp": {"weight": 0.01}}``: :mod:`nemo_tl.transfer.regularization`, which
                needs ``base`` as a ``.nemo`` path or a pretrained name).
            cfg: further ``model`` config keys (``train_ds``, ``validation_ds``, ``optim``,
                ``spec_augment``...). The optimizer defaults to :meth:`default_optim`.
        """
        model_obj = cls._load_base(base)
        base_cfg = resolved(model_obj.cfg)
        full = OmegaConf.create(
            {
                "sample_rate": base_cfg.get("sample_rate", 16000),
                "optim": cls.default_optim(base_cfg),
                "spec_augment": base_cfg.get("spec_augment"),
            }
        )
        if labels is not None:
            full.labels = list(expand_labels(labels, where="labels"))
        if tokenizer_dir is not None:
            full.tokenizer = {"dir": tokenizer_dir, "type": tokenizer_type}
        if cls.vocabulary_type == "subword":  # NeMo's subword transcribe() reads validation_ds.use_start_end_token
            full.validation_ds = {"manifest_filepath": None, "sample_rate": full.sample_rate, "batch_size": 4,
                                  "shuffle": False, "use_start_end_token": False}
        full = OmegaConf.merge(full, resolved(cfg or {}))
        with open_dict(full):
            full.transfer = {  # validated once, by __init__
                "base_model": base if isinstance(base, str) else describe_model(model_obj),
                "vocabulary": vocabulary,
                "new_label_init": new_label_init,
                "freeze_encoder_blocks": freeze_encoder_blocks,
                "reinitialize": reinitialize,
                "adapters": adapters,
                "regularization": regularization,
            }
        return cls(cfg=full, trainer=trainer, base_model=model_obj)

    @classmethod
    def default_optim(cls, base_cfg: DictConfig) -> dict:
        """The ``optim`` section :meth:`from_base` uses unless ``cfg`` gives one: the base's own (NeMo's recipe
        for that model), else the QuartzNet fine-tuning recipe (:func:`~nemo_tl.transfer.recipe.finetune_optim`)."""
        optim = base_cfg.get("optim")
        return to_plain(optim) if optim is not None else finetune_optim()

    def change_vocabulary(self, *args, **kwargs) -> None:
        """NeMo's ``change_vocabulary`` (a fresh head), keeping the configured RNN-T loss (NeMo 3.0 drops TDT's)."""
        super().change_vocabulary(*args, **kwargs)
        if self.has_rnnt_head:
            configured_rnnt_loss(self)

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
        frozen = {id(p) for p in frozen_parameters(self._frozen_blocks)}
        groups = []
        for group in optimizer_param_groups(self):
            params = [p for p in group["params"] if id(p) not in frozen]
            if params:
                groups.append({**group, "params": params})
        set_optimizer_param_groups(self, groups)


def _transfer_classes() -> dict[type, type]:
    """The exact-class table of :func:`from_base`: base class → transfer class."""
    from nemo.collections.asr.models import (
        EncDecCTCModel,
        EncDecCTCModelBPE,
        EncDecHybridRNNTCTCBPEModel,
        EncDecRNNTBPEModel,
        EncDecRNNTModel,
    )

    from nemo_tl import models

    table = {
        EncDecCTCModel: models.TransferCTCModel,
        EncDecCTCModelBPE: models.TransferCTCBPEModel,
        EncDecRNNTModel: models.TransferRNNTModel,
        EncDecRNNTBPEModel: models.TransferRNNTBPEModel,
        EncDecHybridRNNTCTCBPEModel: models.TransferHybridRNNTCTCBPEModel,
    }
    table.update({transfer: transfer for transfer in list(table.values())})
    return table


def transfer_class(model: ASRModel) -> type:
    """The transfer class for the loaded base ``model``, picked by ``type(model)`` exactly (see :func:`from_base`).

    Raises:
        InputError: a class nemo_tl cannot adapt, named with the supported ones.
    """
    table = _transfer_classes()
    cls = table.get(type(model))
    if cls is None:
        supported = ", ".join(sorted({c.__name__ for c in table}))
        raise input_error(
            f"nemo_tl cannot adapt a {type(model).__name__} (classes are matched exactly: a subclass may change "
            "what its heads mean)",
            where="model.transfer.base_model",
            fix=f"use a base of one of the supported classes: {supported}",
        )
    return cls


def from_base(base: str | ASRModel, **kwargs: Any) -> ASRModel:
    """Build the transfer model that fits ``base``: the class is picked by ``type(base)`` exactly.

    ``EncDecCTCModel`` → TransferCTCModel, ``EncDecCTCModelBPE`` → TransferCTCBPEModel,
    ``EncDecRNNTModel`` → TransferRNNTModel, ``EncDecRNNTBPEModel`` (TDT too) → TransferRNNTBPEModel,
    ``EncDecHybridRNNTCTCBPEModel`` → TransferHybridRNNTCTCBPEModel; a nemo_tl transfer model maps to
    its own class. ``kwargs`` go to that class's ``from_base`` (``labels=`` for a character base,
    ``tokenizer_dir=`` for a subword one).

    Raises:
        InputError: any other class (NeMo's prompt, EOU or multi-talker subclasses...), named with the
            supported ones.
    """
    model = load_base_model(base, expected=ASRModel, vocabulary="any")
    cls = transfer_class(model)
    if cls.vocabulary_type == "subword" and kwargs.get("labels") is not None:
        raise input_error(
            f"labels are given, but the base is a subword model ({type(model).__name__})",
            where="labels", fix="give tokenizer_dir= (the target tokenizer) instead of labels=",
        )
    if cls.vocabulary_type == "chars" and kwargs.get("tokenizer_dir") is not None:
        raise input_error(
            f"tokenizer_dir is given, but the base is a character model ({type(model).__name__})",
            where="tokenizer_dir", fix="give labels= (the target characters) instead of tokenizer_dir=",
        )
    transferred = cls.from_base(model, **kwargs)
    if isinstance(base, str):  # the saved config names the base as given, not as an in-memory object
        with open_dict(transferred.cfg):
            transferred.cfg.transfer.base_model = base
    return transferred
