"""Manifest reading and validation, mixing samplers, synthetic data for tests.

Names are imported on first use, so that ``import nemo_tl.data`` stays cheap and
``python -m nemo_tl.data.validate`` runs without a double import.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Problem": "nemo_tl.data.validate",
    "check_dataset_config": "nemo_tl.data.validate",
    "validate_manifest": "nemo_tl.data.validate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
