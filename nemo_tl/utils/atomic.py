"""Atomic file writes: a run killed mid-save leaves the previous file intact.

The new content goes to a temporary file in the target's directory (same file system),
is flushed to disk, then renamed over the target with :func:`os.replace`, which is atomic
on POSIX and Windows. On an exception the temporary file is removed and the target is
left as it was.

Before anything is written, the target is checked as ``open(path, "w")`` would check it: an
existing target that is read-only (no write permission for this user, or no write bit at all,
which is refused even for root), a directory in its place or a directory that cannot be written
is an :class:`~nemo_tl.errors.InputError` naming the path. The rename would otherwise replace a
read-only file, which NeMo's own ``save_to`` refuses (``PermissionError``).

Temporary files are named ``.<name>.<host>-<pid>.<random>.tmp`` beside the target. A process
killed while saving leaves one behind; every later save to the same target removes those that
are stale: written on this host by a process that no longer exists, or, when the writer cannot
be checked (another host sharing the directory, a name without a pid), not modified for
:data:`STALE_SECONDS`. A live writer's file is never removed, so two processes saving the same
target at once (two jobs, or DDP ranks that all save) each complete their own rename; the last
one wins and both leave a complete file.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from typing import IO, Any

from nemo_tl.errors import input_error

STALE_SECONDS = 3600.0  # a temporary file whose writer cannot be checked is stale after this long unmodified


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


def _host() -> str:
    """This host's name as it appears in temporary file names (letters, digits and '-' only)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


# The part of a temporary file's name after ".<name>.": "<host>-<pid>.<random>.tmp", or the
# "<random>.tmp" of files written before the pid was part of the name (random: tempfile's 8 characters).
_TEMP_TAIL = re.compile(r"(?:(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)\.)?[a-z0-9_]{8}\.tmp")


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # another user's process, or not a valid pid
        return True
    return True


def _is_stale(tmp: str, host: str | None, pid: str | None) -> bool:
    if host == _host() and pid is not None:
        return not _process_exists(int(pid))
    try:
        return time.time() - os.stat(tmp).st_mtime > STALE_SECONDS
    except FileNotFoundError:
        return False


def remove_stale_temporaries(path: str | os.PathLike) -> list[str]:
    """Remove the stale temporary files that killed saves to ``path`` left beside it; returns their paths.

    See the module docstring for what counts as stale. Files of other targets and files of live
    writers are left alone.
    """
    path = os.path.abspath(os.fspath(path))
    directory, name = os.path.split(path)
    prefix = f".{name}."
    try:
        candidates = [f for f in os.listdir(directory) if f.startswith(prefix)]
    except OSError:
        return []
    removed = []
    for file in candidates:
        match = _TEMP_TAIL.fullmatch(file[len(prefix) :])
        tmp = os.path.join(directory, file)
        if match and _is_stale(tmp, match["host"], match["pid"]):
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
                removed.append(tmp)
    return removed


def _writable(path: str) -> bool:
    """Whether ``path`` may be written: permission for this user and at least one write bit (even for root)."""
    return os.access(path, os.W_OK) and bool(os.stat(path).st_mode & 0o222)


def check_writable(path: str | os.PathLike) -> None:
    """Raise InputError unless ``path`` can be created or replaced; writes nothing.

    An existing ``path`` must be a writable file, and the nearest existing directory on its way
    a writable directory (missing ones are created by the save).
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise input_error(
            "is a directory; a file cannot be saved in its place",
            where=path,
            fix="give a file path (e.g. inside that directory)",
        )
    if os.path.exists(path) and not _writable(path):
        raise input_error(
            "the file is read-only; it is not replaced",
            where=path,
            fix="save to another path, or make the file writable (chmod u+w) if it should be replaced",
        )
    directory = os.path.dirname(path)
    while not os.path.lexists(directory):
        directory = os.path.dirname(directory)
    if not os.path.isdir(directory):
        raise input_error(
            f"cannot save {os.path.basename(path)!r} there: {directory} is a file, not a directory",
            where=path,
            fix="choose another output path",
        )
    if not (_writable(directory) and os.access(directory, os.X_OK)):
        raise input_error(
            "the directory cannot be written, so nothing can be saved in it",
            where=directory,
            fix="save to a writable directory, or make this one writable",
        )


@contextlib.contextmanager
def _temporary_beside(path: str | os.PathLike, *, replace_if_empty: bool) -> Iterator[str]:
    """A temporary file in ``path``'s directory; on success it is fsynced and renamed onto ``path``."""
    path = os.path.abspath(os.fspath(path))
    check_writable(path)
    directory, name = os.path.split(path)
    os.makedirs(directory, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.{_host()}-{os.getpid()}.", suffix=".tmp")
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
