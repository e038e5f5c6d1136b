""".nemo files: the check every nemo_tl entry point runs before NeMo's ``restore_from``.

NeMo reports a truncated or foreign file as ``tarfile.ReadError: unexpected end of data`` or as
a missing ``/tmp/.../model_config.yaml``, naming neither the file nor the cause.
:func:`check_nemo_file` names both, and reads only the archive's member headers (for NeMo's
uncompressed archives: a few reads, however large the model).
"""

from __future__ import annotations

import os
import tarfile
import zipfile
import zlib

from nemo_tl.errors import input_error

__all__ = ["check_nemo_file"]

# Members every .nemo holds (NeMo's SaveRestoreConnector: model_config_yaml, model_weights_ckpt).
_REQUIRED = ("model_config.yaml", "model_weights.ckpt")


def _problem(path: str) -> str | None:
    """Why ``path`` is not a complete .nemo archive, or None when it is one."""
    if not tarfile.is_tarfile(path):
        if zipfile.is_zipfile(path):
            return "it is a zip file (a PyTorch or Lightning checkpoint?), not a .nemo (tar) archive"
        return "it is not a tar archive (another format, or a file cut off in its first bytes)"
    try:
        with tarfile.open(path, "r:"):
            size = os.path.getsize(path)  # uncompressed (NeMo's format): members must end within the file
    except tarfile.ReadError:
        size = None  # compressed: a truncated stream fails to decompress below
    found = set()
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:  # headers only; compressed archives are decompressed to the end
                if size is not None and member.isfile() and member.offset_data + member.size > size:
                    return f"it is truncated ({member.name} ends at byte {member.offset_data + member.size}, " \
                           f"the file has {size})"
                found.add(os.path.basename(member.name))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        return f"it is damaged or truncated ({type(e).__name__}: {e})"
    missing = [name for name in _REQUIRED if name not in found]
    if missing:
        return f"it holds no {' and no '.join(missing)}"
    return None


def check_nemo_file(path: str | os.PathLike, *, what: str = "model", where: str | None = None) -> None:
    """Raise InputError unless ``path`` is a complete .nemo archive on the local file system.

    Checks that it exists, is a file, is a tar archive (NeMo's format, plain or gzip) whose
    members all lie within the file, and holds ``model_config.yaml`` and ``model_weights.ckpt``.

    Args:
        what: how the message calls the model ("base model", "teacher 2", ...).
        where: the config key or argument the path came from (default: the path itself).
    """
    path = os.path.expanduser(os.fspath(path))
    subject = f"{what} {path!r}" if where else what  # without ``where`` the message starts with the path
    where = where or path
    fix = "point to a complete .nemo file written by NeMo's save_to() (copy it again if it was cut short)"
    if not os.path.exists(path):
        raise input_error(
            f"{subject} does not exist",
            where=where,
            fix="give the path of an existing .nemo file (relative paths start from the working directory)",
        )
    if os.path.isdir(path):
        raise input_error(f"{subject} is a directory, not a .nemo file", where=where, fix=fix)
    problem = _problem(path)
    if problem is not None:
        raise input_error(f"{subject} is not a .nemo archive: {problem}", where=where, fix=fix)
