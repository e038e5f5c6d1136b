"""TransferHybridRNNTCTCBPEModel: a NeMo hybrid RNN-T/CTC BPE model fine-tuned from a pretrained base.

Both heads start from the base's: the RNN-T head as in
:mod:`~nemo_tl.models.transfer_rnnt_bpe` (TDT included), the auxiliary CTC decoder
(``ctc_decoder``, config ``aux_ctc``) as in :mod:`~nemo_tl.models.transfer_ctc_bpe`. Built by
:class:`~nemo_tl.transfer.model.TransferModelMixin`.
"""

from __future__ import annotations

from nemo.collections.asr.models import EncDecHybridRNNTCTCBPEModel

from nemo_tl.models.mixins import ManifestDataMixin
from nemo_tl.training import AtomicSaveMixin, SkipNonFiniteStepMixin
from nemo_tl.transfer.model import TransferModelMixin
from nemo_tl.transfer.regularization import ForgettingRegularizationMixin

__all__ = ["TransferHybridRNNTCTCBPEModel"]


class TransferHybridRNNTCTCBPEModel(TransferModelMixin, ForgettingRegularizationMixin, SkipNonFiniteStepMixin, AtomicSaveMixin, ManifestDataMixin,
                                    EncDecHybridRNNTCTCBPEModel):
    """A hybrid RNN-T/CTC subword model fine-tuned from an ``EncDecHybridRNNTCTCBPEModel`` base."""

    base_family = (EncDecHybridRNNTCTCBPEModel,)
    vocabulary_type = "subword"
    has_rnnt_head = True
    ctc_decoder_attr = "ctc_decoder"

