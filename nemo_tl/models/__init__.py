"""nemo_tl models: NeMo ModelPT subclasses, each saved to and restored from ``.nemo``."""

from nemo_tl.models.distill_ctc import DistillCTCModel
from nemo_tl.models.multisoftmax_rnnt import MultiSoftmaxRNNTModel
from nemo_tl.models.transfer_ctc import TransferCTCModel

__all__ = ["DistillCTCModel", "MultiSoftmaxRNNTModel", "TransferCTCModel"]
