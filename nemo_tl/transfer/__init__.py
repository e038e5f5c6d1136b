"""Transfer learning pieces: base-model loading, vocabulary transfer, freezing, the fine-tuning recipe, introspection."""

from nemo_tl.transfer.base import load_base_model
from nemo_tl.transfer.freezing import freeze_encoder_blocks, frozen_block_count
from nemo_tl.transfer.recipe import finetune_optim
from nemo_tl.transfer.vocabulary import transfer_decoder_rows

__all__ = [
    "finetune_optim", "freeze_encoder_blocks", "frozen_block_count", "load_base_model", "transfer_decoder_rows",
]
