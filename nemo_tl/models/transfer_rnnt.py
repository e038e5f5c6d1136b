"""TransferRNNTModel: a character NeMo EncDecRNNTModel fine-tuned from a pretrained base.

The preprocessor, encoder and the RNN-T head's architecture come from the base model; the
prediction network and joint are copied, and with ``vocabulary: keep_shared`` the rows of every
label both vocabularies hold (prediction embedding, joint output) start from the base's
(:func:`~nemo_tl.transfer.vocabulary.transfer_rnnt_rows`). Built by
:class:`~nemo_tl.transfer.model.TransferModelMixin`.
"""

from __future__ import annotations

from nemo.collections.asr.models import EncDecRNNTModel

from nemo_tl.models.mixins import ManifestDataMixin
from nemo_tl.training import AtomicSaveMixin, SkipNonFiniteStepMixin
from nemo_tl.transfer.adapters import AdapterTransferMixin
from nemo_tl.transfer.model import TransferModelMixin
from nemo_tl.transfer.regularization import ForgettingRegularizationMixin

__all__ = ["TransferRNNTModel"]


class TransferRNNTModel(TransferModelMixin, AdapterTransferMixin, ForgettingRegularizationMixin, SkipNonFiniteStepMixin, AtomicSaveMixin, ManifestDataMixin,
                        EncDecRNNTModel):
    """A character RNN-T model fine-tuned from an ``EncDecRNNTModel`` base; :meth:`from_base` takes ``labels=``."""

    base_family = (EncDecRNNTModel,)
    vocabulary_type = "chars"
    has_rnnt_head = True

