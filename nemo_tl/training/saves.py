"""Saves that a killed run cannot leave half-written, and restores that name a bad file.

:class:`AtomicSaveMixin`, listed before the NeMo class of a model:

- ``save_to``: NeMo's ``save_to`` into a temporary file beside the target, renamed onto it when
  complete (:func:`~nemo_tl.utils.atomic.atomic_path`), so a run killed while saving keeps the
  previous ``.nemo``; a read-only target is refused (InputError), as NeMo's own ``save_to`` refuses
  it, and stale temporary files of killed saves are removed.
- ``setup``: gives the Trainer an :class:`~nemo_tl.utils.checkpoint_io.AtomicCheckpointIO` when it
  uses Lightning's default one, so ``last.ckpt`` is never left truncated either.
- ``restore_from``: InputError naming the file when it is not a complete .nemo archive or holds a
  model of another class.
"""

from __future__ import annotations

from typing import Any

from nemo_tl.compat import attached_trainer
from nemo_tl.errors import input_error
from nemo_tl.utils.atomic import atomic_path
from nemo_tl.utils.checkpoint_io import use_atomic_checkpoint_io
from nemo_tl.utils.nemo_file import check_nemo_file

__all__ = ["AtomicSaveMixin"]


class AtomicSaveMixin:
    """Atomic ``save_to`` and Lightning checkpoints; ``restore_from`` checks the file and the class it reads."""

    def save_to(self, save_path: str) -> None:
        """NeMo's ``save_to`` into a temporary file beside ``save_path``, renamed onto it when complete.

        A read-only ``save_path`` or an unwritable directory is an InputError before anything is
        written (:func:`~nemo_tl.utils.atomic.check_writable`).
        """
        from nemo.utils.get_rank import is_global_rank_zero

        if not is_global_rank_zero():
            return super().save_to(save_path)
        with atomic_path(save_path) as tmp:
            super().save_to(tmp)

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        trainer = attached_trainer(self)
        if trainer is not None:
            use_atomic_checkpoint_io(trainer)

    @classmethod
    def restore_from(cls, restore_path: str, *args: Any, **kwargs: Any):
        """NeMo's ``restore_from``; InputError naming the file when it is not a complete .nemo archive
        (:func:`~nemo_tl.utils.nemo_file.check_nemo_file`) or holds a model of another class.

        NeMo itself raises ``tarfile.ReadError`` for a truncated file, and returns whatever class the
        archive names (a CTC model from ``MultiSoftmaxRNNTModel.restore_from``), which then fails far
        from the cause.
        """
        connector = kwargs.get("save_restore_connector", args[4] if len(args) > 4 else None)
        if "://" not in str(restore_path) and getattr(connector, "model_extracted_dir", None) is None:
            check_nemo_file(restore_path, what=f"{cls.__name__} file")
        instance = super().restore_from(restore_path, *args, **kwargs)
        if kwargs.get("return_config") or (len(args) >= 4 and args[3]) or isinstance(instance, cls):
            return instance
        held = type(instance).__name__
        raise input_error(
            f"the file holds a {type(instance).__module__}.{held}, not a {cls.__name__}",
            where=str(restore_path),
            fix=f"restore it with {held}.restore_from(...) or ASRModel.restore_from(...)",
        )
