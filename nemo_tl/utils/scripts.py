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


def transfer_model(model_cfg: DictConfig, trainer: Any, *, heads: str) -> Any:
    """The transfer model a fine-tuning script trains: its class picked from the base model's class.

    ``model_cfg.transfer.base_model`` is loaded once (a ``.nemo`` path or a pretrained name) and the
    class comes from :func:`nemo_tl.transfer.model.transfer_class` (an exact-class table).
    ``heads`` is the script's kind, ``"ctc"`` (``examples/finetune_ctc.py``) or ``"rnnt"``
    (``examples/finetune_rnnt.py``: RNN-T, TDT and hybrid bases); a base of the other kind is an
    InputError naming the script to use. Without a base (``base_model: null``) the script's
    character class is built from the config alone, as before.
    """
    from nemo.collections.asr.models import ASRModel

    from nemo_tl.errors import input_error
    from nemo_tl.models import TransferCTCModel, TransferRNNTModel
    from nemo_tl.transfer.base import load_base_model
    from nemo_tl.transfer.model import transfer_class

    spec = OmegaConf.select(model_cfg, "transfer.base_model", default=None, throw_on_missing=False)
    if spec is None:  # missing (???) or null
        plain = TransferCTCModel if heads == "ctc" else TransferRNNTModel
        return plain(cfg=model_cfg, trainer=trainer)  # its config check names a missing base_model
    base = load_base_model(spec, expected=ASRModel, vocabulary="any")
    cls = transfer_class(base)
    kind = "rnnt" if cls.has_rnnt_head else "ctc"
    if kind != heads:
        raise input_error(
            f"the base is a {type(base).__name__}, which this script does not fine-tune",
            where="model.transfer.base_model",
            fix=f"use examples/finetune_{kind}.py (with --config-name fastconformer_{kind}_finetune for a subword base)",
        )
    return cls(cfg=model_cfg, trainer=trainer, base_model=base)
