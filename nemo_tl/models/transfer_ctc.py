"""TransferCTCModel: a NeMo EncDecCTCModel fine-tuned from a pretrained base (Huang et al. 2020).

The preprocessor and encoder come from the base model; the decoder is rebuilt for the
target vocabulary (``model.labels``) and, with ``vocabulary: keep_shared``, starts from the
base decoder's rows of every label both vocabularies hold (Kunze et al. 2017). The k lowest
encoder blocks can be frozen. Restoring a saved model needs neither the base nor a network.
"""

from __future__ import annotations

from nemo.collections.asr.models import EncDecCTCModel
from omegaconf import DictConfig, open_dict

from nemo_tl.errors import input_error
from nemo_tl.models.mixins import ManifestDataMixin
from nemo_tl.training import AtomicSaveMixin, SkipNonFiniteStepMixin
from nemo_tl.transfer.adapters import AdapterTransferMixin
from nemo_tl.transfer.model import TransferModelMixin, check_labels
from nemo_tl.transfer.recipe import finetune_optim
from nemo_tl.transfer.regularization import ForgettingRegularizationMixin

__all__ = ["TransferCTCModel"]

FINETUNE_OPTIM = finetune_optim()  # the recipe's optim section at lr 0.001 (nemo_tl.transfer.recipe)


def _decoder_from_labels(cfg: DictConfig) -> DictConfig:
    """Set ``decoder.num_classes`` and ``decoder.vocabulary`` from ``model.labels`` (built without a base).

    A value the config gives that disagrees with the labels is an InputError, not overwritten.
    """
    if cfg.get("labels") is None or not isinstance(cfg.get("decoder"), DictConfig):
        return cfg
    labels = check_labels(cfg.labels)
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


class TransferCTCModel(
    TransferModelMixin, AdapterTransferMixin, ForgettingRegularizationMixin, SkipNonFiniteStepMixin, AtomicSaveMixin,
    ManifestDataMixin, EncDecCTCModel,
):
    """A character CTC model fine-tuned from a pretrained base, configured by ``model.transfer``.

    ``model.transfer`` keys: ``base_model`` (.nemo path or NeMo pretrained name),
    ``vocabulary`` (keep_shared | same | reinit), ``new_label_init`` (zero | random),
    ``freeze_encoder_blocks`` (k lowest entries of ``encoder.encoder``, C1 included) and
    ``reinitialize`` (base architecture, fresh weights: the from-scratch control).
    Without a ``transfer`` section (or with ``base_model: null``) it is a plain EncDecCTCModel
    built from ``cfg`` that still honours ``freeze_encoder_blocks``.

    Built by :class:`~nemo_tl.transfer.model.TransferModelMixin`; :meth:`from_base` takes ``labels=``.
    """

    base_family = (EncDecCTCModel,)
    vocabulary_type = "chars"
    ctc_decoder_attr = "decoder"

    @classmethod
    def default_optim(cls, base_cfg: DictConfig) -> dict:
        """The QuartzNet fine-tuning recipe (NovoGrad, lr 0.001, betas (0.95, 0.25), cosine, 12% warmup)."""
        return finetune_optim()

    def _config_without_base(self, cfg: DictConfig) -> DictConfig:
        return _decoder_from_labels(cfg)
