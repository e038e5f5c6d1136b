"""The multi-softmax capability's pieces outside the model: its config section."""

from nemo_tl.multilingual.config import MultilingualConfig, prepare_multilingual_config

__all__ = ["MultilingualConfig", "prepare_multilingual_config"]
