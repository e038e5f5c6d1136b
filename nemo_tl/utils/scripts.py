"""What the example scripts share: where the ``.nemo`` goes (checked before training) and the final report."""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from nemo_tl.data.manifest import flatten_manifest_filepath
from nemo_tl.errors import InputError
from nemo_tl.utils.atomic import check_writable


def output_path(cfg: DictConfig, log_dir: Any) -> str:
    """``cfg.save_to``, else ``<log_dir>/<cfg.name>.nemo``; InputError (naming ``save_to``) when it
    cannot be written, so that a run never trains for nothing."""
    path = cfg.get("save_to") or os.path.join(str(log_dir or "."), f"{cfg.name}.nemo")
    try:
        check_writable(path)
    except InputError as e:
        raise InputError(f"save_to={path}: {e}") from None
    return path


def validation_sets(model_cfg: DictConfig) -> dict[str, str]:
    """``{name: manifest}`` of the model's validation sets (``validation_ds.name``, else the file stem)."""
    section = model_cfg.get("validation_ds") or {}
    value = section.get("manifest_filepath")
    value = OmegaConf.to_container(value, resolve=True) if isinstance(value, ListConfig) else value
    manifests = flatten_manifest_filepath(value)
    names = section.get("name")
    if isinstance(names, (list, ListConfig)) and len(names) == len(manifests):
        names = [str(n) for n in names]
    else:
        names = [os.path.splitext(os.path.basename(m))[0] for m in manifests]
    return dict(zip(names, manifests))


def final_report(model: Any, batch_size: int = 16) -> str:
    """Greedy WER and CER of the trained ``model`` on each of its validation sets, as a Markdown table."""
    from nemo_tl.evaluation import evaluate_manifests, results_table

    sets = validation_sets(model.cfg)
    if not sets:
        return "no validation_ds.manifest_filepath: nothing to report"
    model.eval()
    results = evaluate_manifests(model, list(sets.values()), batch_size=batch_size)
    return results_table({name: results[manifest] for name, manifest in sets.items()}, column="validation set")
