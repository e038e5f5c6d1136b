"""Every use of a private or undocumented internal of NeMo, Lightning or torchmetrics, in one place.

nemo_tl reads or sets a few attributes that those libraries keep for themselves, where no public
API does the job. Each use is one small function here, documented with what it touches and why,
and pinned by a test in ``tests/test_compat.py`` that asserts the behaviour nemo_tl relies on: after
an upgrade of NeMo (3.0), Lightning (2.4) or torchmetrics (1.x), a change shows up as a failing test
of this module, not as a wrong result somewhere in a model.

Names NeMo marks private but that nemo_tl subclasses or calls (``_AudioTextDataset``,
``_speech_collate_fn``) are re-exported here for the same reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from nemo.collections.asr.data.audio_to_text import _AudioTextDataset, _speech_collate_fn

__all__ = [
    "AudioTextDataset",
    "attached_trainer",
    "avoid_conditional_graphs",
    "batches_trained_this_epoch",
    "cuda_graphs_mode",
    "ddp_find_unused_parameters",
    "decoder_input_width",
    "force_cuda_graphs_mode",
    "logs_this_step",
    "metric_sync_disabled",
    "optimizer_param_groups",
    "preprocessor_sample_rate",
    "set_optimizer_param_groups",
    "speech_collate_fn",
]

# NeMo's map-style audio-text dataset: manifest parsing, duration filters, audio loading. Its
# subclass hook ``_process_sample(index)`` returns ``(audio, audio_len, tokens, tokens_len)`` (plus
# the index with ``return_sample_id``); NeMo exposes no public base class for a dataset that adds
# a field per item (the multilingual dataset adds the language index).
AudioTextDataset = _AudioTextDataset


def speech_collate_fn(batch: list[tuple], pad_id: int) -> tuple:
    """NeMo's padding collate of ``(audio, audio_len, tokens, tokens_len[, sample_id])`` items.

    ``nemo.collections.asr.data.audio_to_text._speech_collate_fn``: the function NeMo's
    ``AudioToCharDataset.collate_fn`` is, reachable without a dataset object.
    """
    return _speech_collate_fn(batch, pad_id=pad_id)


# ----------------------------------------------------------------------------- NeMo modules
def decoder_input_width(decoder: torch.nn.Module) -> int:
    """The feature width a NeMo CTC decoder (``ConvASRDecoder`` and subclasses) takes, D_in.

    NeMo keeps it in ``decoder._feat_in`` only: the config's ``decoder.feat_in`` may be unset or -1
    in a model NeMo built (the encoder's width is filled in at construction).
    """
    return int(decoder._feat_in)


def encoder_output_width(encoder: torch.nn.Module) -> int:
    """The feature width D a NeMo encoder (``ConvASREncoder``, ``ConformerEncoder``) outputs, (B, D, T).

    NeMo keeps it in ``encoder._feat_out`` only (a Conformer's ``feat_out: -1`` means ``d_model``).
    """
    return int(encoder._feat_out)


def preprocessor_sample_rate(preprocessor: torch.nn.Module) -> int | None:
    """The sample rate (Hz) a NeMo audio preprocessor was built for; None if it keeps none.

    ``AudioToMelSpectrogramPreprocessor`` stores it in ``_sample_rate`` and exposes it nowhere else
    (NeMo's own ``transcribe`` reads it there); the model config may lack ``sample_rate``.
    """
    rate = getattr(preprocessor, "_sample_rate", None)
    return None if rate is None else int(rate)


def optimizer_param_groups(model: Any) -> list[dict] | None:
    """The parameter groups NeMo's ``setup_optimization`` builds the optimizer from (None: all parameters).

    ``ModelPT.setup_optimizer_param_groups`` writes them to ``_optimizer_param_groups``; NeMo's
    documented way to change them is to override that method and rewrite the attribute.
    """
    return model._optimizer_param_groups


def set_optimizer_param_groups(model: Any, groups: list[dict] | None) -> None:
    """Replace the parameter groups NeMo's ``setup_optimization`` will build the optimizer from.

    Call from an override of ``setup_optimizer_param_groups`` (after ``super()``), as NeMo's docs say.
    """
    model._optimizer_param_groups = groups


# ----------------------------------------------------------------------------- NeMo RNN-T greedy decoding
def cuda_graphs_mode(greedy: Any) -> str | None:
    """The CUDA-graph mode of NeMo's batched greedy RNN-T decoder (``model.decoding.decoding``).

    ``"full_graph"`` (one graph with conditional nodes), ``"no_while_loops"`` (graphs for the loop
    bodies, loops in Python), ``"no_graphs"``, or None: graphs off, or a decoder without NeMo's
    label-looping computer (``decoding_computer``, which holds the mode; frame looping has none).
    """
    mode = getattr(getattr(greedy, "decoding_computer", None), "cuda_graphs_mode", None)
    return None if mode is None else str(mode.value)


def avoid_conditional_graphs(greedy: Any) -> bool:
    """Keep NeMo's batched greedy RNN-T decoder ``greedy`` off CUDA graphs with conditional nodes.

    Label looping: a ``decoding_computer`` in full_graph mode goes to no_while_loops (its fallback
    setting kept; NeMo's only public switch, ``force_cuda_graphs_mode``, turns fallback off and is
    meant for tests). Frame looping with NeMo's graph decoder (``loop_labels`` false,
    ``use_cuda_graph_decoder``, a single conditional-node graph): NeMo's ``disable_cuda_graphs``
    puts its Python loop back. Returns True when the decoder changed.
    """
    computer = getattr(greedy, "decoding_computer", None)
    if computer is None:
        if getattr(greedy, "loop_labels", True) is False and getattr(greedy, "use_cuda_graph_decoder", False):
            return bool(greedy.disable_cuda_graphs())
        return False
    if computer.cuda_graphs_mode is computer.CudaGraphsMode.FULL_GRAPH:
        computer.cuda_graphs_mode = computer.CudaGraphsMode.NO_WHILE_LOOPS
        computer.reset_cuda_graphs_state()
        return True
    return False


def force_cuda_graphs_mode(greedy: Any, mode: str | None) -> bool:
    """Force a label-looping greedy RNN-T decoder into CUDA-graph ``mode``, without fallback (benchmarks).

    NeMo's ``decoding_computer.force_cuda_graphs_mode`` ("use only for testing purposes"). Returns
    False, changing nothing, for a decoder without a label-looping computer (frame looping).
    """
    computer = getattr(greedy, "decoding_computer", None)
    if computer is None:
        return False
    computer.force_cuda_graphs_mode(mode)
    return True


# ----------------------------------------------------------------------------- torchmetrics
@contextmanager
def metric_sync_disabled(metric: Any) -> Iterator[Any]:
    """Within the context, ``metric.compute()`` does not gather the metric's state over DDP ranks.

    torchmetrics decides in ``compute()`` from the private ``_to_sync`` (set from ``sync_on_compute``
    at construction and by ``forward``); there is no public switch after construction. For a metric
    that ranks may compute a different number of times (a WER per language, when a rank's batch
    lacks a language), where a gather would wait forever; the caller all-reduces the totals itself.
    """
    saved, metric._to_sync = metric._to_sync, False
    try:
        yield metric
    finally:
        metric._to_sync = saved


# ----------------------------------------------------------------------------- Lightning
def attached_trainer(module: Any) -> Any | None:
    """The Trainer a LightningModule is attached to, or None (where ``module.trainer`` raises).

    Lightning keeps it in the private ``LightningModule._trainer``: None until ``Trainer.fit`` (or
    NeMo's ``set_trainer``) attaches the module; the public ``trainer`` property raises without one.
    """
    return getattr(module, "_trainer", None)


def logs_this_step(trainer: Any) -> bool:
    """Whether Lightning sends this training step's logged values to the loggers.

    Lightning's own test (``log_every_n_steps``, a stopping trainer, ``fast_dev_run``), from the private
    ``Trainer._logger_connector.should_update_logs``; a value worth computing only to be logged is
    computed on these steps. False for anything that is not a Lightning Trainer.
    """
    connector = getattr(trainer, "_logger_connector", None)
    return connector is not None and (bool(trainer.fast_dev_run) or connector.should_update_logs)


def ddp_find_unused_parameters(strategy: Any) -> bool:
    """Let a Lightning ``DDPStrategy`` (before it wraps the model) expect parameters without gradient.

    Sets ``find_unused_parameters=True`` in the keyword arguments the strategy passes to
    ``DistributedDataParallel``, which Lightning keeps in the private ``_ddp_kwargs`` (settable only
    through the constructor, which the user's trainer config calls). Returns True when it changed.
    """
    kwargs = strategy._ddp_kwargs
    if kwargs.get("find_unused_parameters", False):
        return False
    kwargs["find_unused_parameters"] = True
    return True


def batches_trained_this_epoch(trainer: Any) -> int | None:
    """Training batches ``trainer`` has finished in the current epoch; None without a fit loop.

    Lightning counts them in its loop state, ``fit_loop.epoch_loop.batch_progress.current.processed``
    (no public API). A loader that prefetches draws ahead of this count, so a sampler's resume
    position is taken from here.
    """
    try:
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
    except AttributeError:
        return None
