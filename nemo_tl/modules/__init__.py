"""Neural modules: the uncertainty CTC decoder, the multi-softmax RNN-T joint, the LID head."""

from nemo_tl.modules.multisoftmax import LIDHead, MultiSoftmaxDecoder, MultiSoftmaxJoint
from nemo_tl.modules.uncertainty_decoder import UncertaintyConvASRDecoder

__all__ = ["LIDHead", "MultiSoftmaxDecoder", "MultiSoftmaxJoint", "UncertaintyConvASRDecoder"]
