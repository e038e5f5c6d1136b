"""Small helpers shared by the whole package."""

from nemo_tl.utils.atomic import atomic_path, atomic_save_to, atomic_write

__all__ = ["atomic_path", "atomic_save_to", "atomic_write"]
