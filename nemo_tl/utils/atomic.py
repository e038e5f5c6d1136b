"""Atomic file writes: a run killed mid-save leaves the previous file intact.

The new content goes to a temporary file in the target's directory (same file system),
is flushed to disk, then renamed over the target with :func:`os.replace`, which is atomic
on POSIX and Windows. On an exception the temporary file is removed and the target is
left as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import IO, Any


def _fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _target_mode(path: str) -> int:
    """Permissions for the new file: the old file's, else the default for new files."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def _temporary_beside(path: str | os.PathLike, *, replace_if_empty: bool) -> Iterator[str]:
    """A temporary file in ``path``'s directory; on success it is fsynced and renamed onto ``path``."""
    path = os.path.abspath(os.fspath(path))
    directory, name = os.path.split(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        if os.path.isfile(tmp) and (replace_if_empty or os.path.getsize(tmp) > 0):
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, _target_mode(path))
            os.replace(tmp, path)
            _fsync_dir(directory)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success, move what was written there onto ``path``.

    For writers that take a path (``torch.save``, ``model.save_to``). If the temporary file is
    still empty afterwards (a writer that writes only on rank 0), ``path`` is left untouched.
    """
    with _temporary_beside(path, replace_if_empty=False) as tmp:
        yield tmp


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on success it replaces ``path``.

    ``mode`` is ``"wb"`` or ``"w"`` (``open_kwargs`` such as ``encoding`` go to :func:`open`).
    An exception inside the block removes the temporary file and leaves ``path`` untouched.
    """
    if "r" in mode or "a" in mode or "+" in mode:
        raise ValueError(f"atomic_write writes a new file; mode {mode!r} is not 'w' or 'wb'")
    with _temporary_beside(path, replace_if_empty=True) as tmp, open(tmp, mode, **open_kwargs) as f:
        yield f


def atomic_save_to(model: Any, path: str | os.PathLike) -> str:
    """``model.save_to(path)``, atomically: a run killed while saving keeps the previous ``.nemo``.

    Under DDP only global rank 0 writes (as in NeMo); other ranks return without touching
    ``path``. Returns ``path``.
    """
    from nemo.utils.get_rank import is_global_rank_zero

    path = os.fspath(path)
    if not is_global_rank_zero():
        model.save_to(path)  # NeMo's own no-op (or model-parallel handling) on other ranks
        return path
    with atomic_path(path) as tmp:
        model.save_to(tmp)
    return path
