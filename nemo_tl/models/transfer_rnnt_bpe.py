"""TransferRNNTBPEModel: a NeMo EncDecRNNTBPEModel (FastConformer RNN-T or TDT) fine-tuned from a base.

The preprocessor, encoder and the RNN-T head's architecture (and loss: a TDT base stays TDT, with
its durations) come from the base model; the prediction network and joint are copied, and with
``vocabulary: keep_shared`` the rows of every piece both tokenizers hold start from the base's,
the blank stays blank and a TDT joint's duration outputs are copied whole
(:func:`~nemo_tl.transfer.vocabulary.transfer_rnnt_rows`). Built by
:class:`~nemo_tl.transfer.model.TransferModelMixin`.
"""

from __future__ import annotations

from nemo.collections.asr.models import EncDecRNNTBPEModel

from nemo_tl.models.mixins import ManifestDataMixin
from nemo_tl.training import AtomicSaveMixin, SkipNonFiniteStepMixin
from nemo_tl.transfer.adapters import AdapterTransferMixin
from nemo_tl.transfer.model import TransferModelMixin
from nemo_tl.transfer.regularization import ForgettingRegularizationMixin

__all__ = ["TransferRNNTBPEModel"]


class TransferRNNTBPEModel(TransferModelMixin, AdapterTransferMixin, ForgettingRegularizationMixin, SkipNonFiniteStepMixin, AtomicSaveMixin, ManifestDataMixin,
                           EncDecRNNTBPEModel):
    """A subword RNN-T / TDT model fine-tuned from an ``EncDecRNNTBPEModel`` base; takes ``tokenizer_dir=``."""

    base_family = (EncDecRNNTBPEModel,)
    vocabulary_type = "subword"
    has_rnnt_head = True

