"""The YAML configs of ``conf/``, wherever nemo_tl runs from.

A wheel (``pip install .``) ships them inside the package as ``nemo_tl/conf/`` (setup.py maps
``conf/`` there); a checkout or an editable install reads the repository's ``conf/``. Both are
the same files: the repository keeps one copy.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]
CONF_DIRS = (_PACKAGE / "conf", _PACKAGE.parent / "conf")  # installed wheel, then checkout


def config_file(name: str) -> Path:
    """The path of config ``name`` (``"quartznet_demo.yaml"``, or without ``.yaml``).

    Raises ``FileNotFoundError`` naming the folders searched when neither layout holds it.
    """
    filename = name if name.endswith(".yaml") else f"{name}.yaml"
    for folder in CONF_DIRS:
        if (folder / filename).is_file():
            return folder / filename
    raise FileNotFoundError(f"config {filename} not found in {' or '.join(str(d) for d in CONF_DIRS)}")
