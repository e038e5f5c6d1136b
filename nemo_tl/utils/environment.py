"""What a result was measured with: device, versions and the host's kernel, for every results file.

Two runs of one command on two machines can differ (docs/RESULTS.md setting G); the record lets them be
told apart by what was installed and where they ran, not only by their numbers.
"""

from __future__ import annotations

import datetime
import platform
import subprocess
from pathlib import Path
from typing import Any

GIB = 1024**3
ROOT = Path(__file__).resolve().parents[2]


def git_commit(root: str | Path = ROOT) -> str | None:
    """The short commit of ``root``'s checkout, ``+dirty`` with uncommitted changes; None without git."""
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: str | None = None) -> dict[str, Any]:
    """UTC date, torch / CUDA / cuDNN / NeMo / numba / Python versions, the host's kernel release (it tells
    the machine's runtime) and, on ``cuda``, the GPU's name and memory; on ``cpu`` the processor.
    ``device`` None: ``cuda`` where a GPU is visible, else ``cpu``."""
    import nemo
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"

    env: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "nemo": nemo.__version__,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "git": git_commit(),
        "device_kind": "cuda" if device.startswith("cuda") else "cpu",
    }
    try:
        import numba

        env["numba"] = numba.__version__
    except ImportError:
        env["numba"] = None
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        env["gpu"] = props.name
        env["gpu_memory_gib"] = round(props.total_memory / GIB, 1)
        env["cudnn"] = torch.backends.cudnn.version()
        env["tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
    else:
        env["gpu"] = None
        env["cpu"] = platform.processor() or platform.machine()
    return env
