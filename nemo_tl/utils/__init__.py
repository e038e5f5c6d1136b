"""Small helpers shared by the whole package."""

from nemo_tl.utils.atomic import atomic_path, atomic_save_to, atomic_write
from nemo_tl.utils.checkpoint_io import AtomicCheckpointIO, use_atomic_checkpoint_io

__all__ = ["AtomicCheckpointIO", "atomic_path", "atomic_save_to", "atomic_write", "use_atomic_checkpoint_io"]
