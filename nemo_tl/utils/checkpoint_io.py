"""Lightning checkpoints written atomically.

Lightning 2.4's ``TorchCheckpointIO`` serializes to memory, writes a temporary file in the
system temp directory and ``shutil.move``-s it onto the target. When that directory is on
another file system (``/tmp`` on tmpfs, the usual case) the move is a copy into the target
path: a run killed then leaves a truncated ``last.ckpt``. :class:`AtomicCheckpointIO` writes
beside the target and renames (:func:`nemo_tl.utils.atomic.atomic_path`) instead.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from nemo_tl.utils.atomic import atomic_path

__all__ = ["AtomicCheckpointIO", "use_atomic_checkpoint_io"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves go to a temporary file beside the target, then a rename.

    Remote paths (``s3://`` ...) keep Lightning's own behaviour.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        from fsspec.implementations.local import LocalFileSystem

        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


def use_atomic_checkpoint_io(trainer: Any) -> bool:
    """Give ``trainer``'s strategy an :class:`AtomicCheckpointIO` if it uses Lightning's default one.

    A checkpoint IO the user chose (another class) is left alone. Returns True when it was replaced.
    """
    strategy = getattr(trainer, "strategy", None)
    # Lightning's public property: the default TorchCheckpointIO (made on first use) or the one configured.
    if strategy is None or type(strategy.checkpoint_io) is not TorchCheckpointIO:
        return False
    strategy.checkpoint_io = AtomicCheckpointIO()
    return True
