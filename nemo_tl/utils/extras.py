"""Optional dependencies, grouped as setup.py's extras (``nemo_tl[synth]``, ``nemo_tl[plots]``).

A user of the models alone does not install them; the commands that need them import them
through :func:`require`, which names the extra to install when one is missing.
"""

from __future__ import annotations

import importlib
from types import ModuleType

EXTRAS = {
    "synth": "synthesized speech and texts (nemo_tl.data.synth_corpus, nemo_tl.demo)",
    "plots": "plots (PNG histograms, sweeps and learning curves)",
}


def require(module: str, extra: str) -> ModuleType:
    """Import ``module``, a dependency of the extra ``extra``.

    Raises ``ImportError`` saying which extra installs it (``pip install 'nemo_tl[extra]'``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"{module} is not installed; nemo_tl needs it for {EXTRAS[extra]}: "
            f"pip install 'nemo_tl[{extra}]' (or 'nemo_tl[all]')"
        ) from e
