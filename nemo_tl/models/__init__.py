"""nemo_tl models: NeMo ModelPT subclasses, each saved to and restored from ``.nemo``."""

from nemo_tl.models.distill_ctc import DistillCTCModel
from nemo_tl.models.multisoftmax_rnnt import MultiSoftmaxRNNTModel
from nemo_tl.models.transfer_ctc import TransferCTCModel
from nemo_tl.models.transfer_ctc_bpe import TransferCTCBPEModel
from nemo_tl.models.transfer_hybrid import TransferHybridRNNTCTCBPEModel
from nemo_tl.models.transfer_rnnt import TransferRNNTModel
from nemo_tl.models.transfer_rnnt_bpe import TransferRNNTBPEModel

__all__ = [
    "DistillCTCModel", "MultiSoftmaxRNNTModel", "TransferCTCBPEModel", "TransferCTCModel",
    "TransferHybridRNNTCTCBPEModel", "TransferRNNTBPEModel", "TransferRNNTModel",
]
