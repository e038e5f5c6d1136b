"""Transfer learning pieces: base-model loading, vocabulary transfer, freezing, the fine-tuning recipe, introspection."""

from nemo_tl.transfer.base import load_base_model
from nemo_tl.transfer.freezing import freeze_encoder_blocks, frozen_block_count
from nemo_tl.transfer.model import from_base
from nemo_tl.transfer.recipe import finetune_optim
from nemo_tl.transfer.vocabulary import mapped_output_rows, transfer_decoder_rows, transfer_rnnt_rows

__all__ = [
    "average_models", "finetune_optim", "freeze_encoder_blocks", "from_base", "frozen_block_count", "load_base_model",
    "mapped_output_rows", "transfer_decoder_rows", "transfer_rnnt_rows",
]


def __getattr__(name: str):
    # average_models on first use: importing nemo_tl.transfer.average here would make
    # `python -m nemo_tl.transfer.average` warn that the module was imported before it ran.
    if name == "average_models":
        from nemo_tl.transfer.average import average_models

        return average_models
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
