"""Small training helpers shared by the tests."""

from __future__ import annotations

import json
import re
import sys

import lightning.pytorch as pl
import pytest
import torch

from nemo_tl.errors import InputError


def cpu_trainer(max_steps: int, **kwargs) -> pl.Trainer:
    """A quiet single-process CPU trainer that runs ``max_steps`` optimizer steps."""
    args = dict(
        max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )
    args.update(kwargs)
    return pl.Trainer(**args)


def data_cfg(manifest, labels, batch_size: int = 4, shuffle: bool = True) -> dict:
    return {"manifest_filepath": manifest, "sample_rate": 16000, "labels": list(labels),
            "batch_size": batch_size, "shuffle": shuffle, "num_workers": 0}


def fit(model, manifest, steps: int = 3, ckpt_path: str | None = None, **trainer_kwargs):
    """Train ``model`` for ``steps`` steps on ``manifest`` (resuming from ``ckpt_path``); returns the trainer."""
    trainer = cpu_trainer(steps, **trainer_kwargs)
    model.set_trainer(trainer)
    model.setup_training_data(data_cfg(manifest, model.decoder.vocabulary))
    trainer.fit(model, ckpt_path=ckpt_path)
    return trainer


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every parameter and buffer of ``module``."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def raises_input_error(make, *patterns: str) -> str:
    """Call ``make``; assert an InputError that matches every pattern and says how to fix it; return its text."""
    with pytest.raises(InputError) as info:
        make()
    message = str(info.value)
    for pattern in patterns:
        assert re.search(pattern, message, re.S), (pattern, message)
    assert re.search(r"\bfix:", message, re.I), message
    return message


def count_calls(fn) -> tuple[int, object]:
    """Run ``fn()``; return the number of Python and C function calls it made, and its result.

    What a speed rests on, counted instead of timed (a loaded CI machine makes timings flaky):
    vectorised work makes a count that does not grow with the data, per-line work a count that
    grows linearly with it.
    """
    calls = 0

    def profile(frame, event, arg):
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    sys.setprofile(profile)
    try:
        result = fn()
    finally:
        sys.setprofile(None)
    return calls, result


def strict_loads(text: str, where: str = "the text"):
    """``json.loads`` that refuses NaN and Infinity, as strict parsers (JavaScript, Go, jq) do."""

    def refuse(constant):
        raise ValueError(f"{where} holds {constant}, which is not JSON")

    return json.loads(text, parse_constant=refuse)


def strict_json(path) -> object:
    """The file ``path`` parsed by :func:`strict_loads`."""
    with open(path, encoding="utf-8") as f:
        return strict_loads(f.read(), where=str(path))
