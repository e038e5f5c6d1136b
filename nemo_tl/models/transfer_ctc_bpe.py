"""TransferCTCBPEModel: a NeMo EncDecCTCModelBPE (e.g. FastConformer CTC) fine-tuned from a pretrained base.

The preprocessor and encoder come from the base model; the CTC decoder is rebuilt for the target
tokenizer (``model.tokenizer``: ``dir``, ``type: bpe | wpe``) and, with ``vocabulary: keep_shared``,
starts from the base decoder's rows of every piece both tokenizers hold (matched by string, '▁'
included). Built by :class:`~nemo_tl.transfer.model.TransferModelMixin`.
"""

from __future__ import annotations

from nemo.collections.asr.models import EncDecCTCModelBPE

from nemo_tl.models.mixins import ManifestDataMixin
from nemo_tl.training import AtomicSaveMixin, SkipNonFiniteStepMixin
from nemo_tl.transfer.adapters import AdapterTransferMixin
from nemo_tl.transfer.model import TransferModelMixin
from nemo_tl.transfer.regularization import ForgettingRegularizationMixin

__all__ = ["TransferCTCBPEModel"]


class TransferCTCBPEModel(TransferModelMixin, AdapterTransferMixin, ForgettingRegularizationMixin, SkipNonFiniteStepMixin, AtomicSaveMixin, ManifestDataMixin,
                          EncDecCTCModelBPE):
    """A subword CTC model fine-tuned from an ``EncDecCTCModelBPE`` base; :meth:`from_base` takes ``tokenizer_dir=``."""

    base_family = (EncDecCTCModelBPE,)
    vocabulary_type = "subword"
    ctc_decoder_attr = "decoder"
