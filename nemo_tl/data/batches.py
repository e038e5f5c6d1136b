"""Training batches with named fields.

NeMo's audio-text datasets collate to a tuple ``(audio, audio_len, tokens, tokens_len)``, with the
sample ids appended when the dataset has ``return_sample_id``. A batch that carries more than that
(the distillation model's: sample and manifest ids, the teachers' cached outputs) is an
:class:`AudioTextBatch` whose extras are read by name, never by position. It is a NamedTuple whose
first four fields are NeMo's, so code that takes ``batch[0]`` or ``batch[:4]`` keeps working, the
DataLoader pins it and Lightning moves it to the device field by field. The multilingual model's
batches, which carry each utterance's language, are :class:`LanguageBatch` tuples.

:func:`with_collate` gives a loader that NeMo (or :func:`~nemo_tl.data.mixing.build_mixed_dataloader`)
built a collate function that makes such batches, so that the model that needs them owns the loader
it trains on from the start.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader

__all__ = ["AudioTextBatch", "LanguageBatch", "NamedCollate", "named_batch", "utterance_ids", "with_collate"]


class AudioTextBatch(NamedTuple):
    """One training batch by name.

    Fields (B utterances, S audio samples, U tokens):
        audio (B, S), audio_lens (B,), tokens (B, U), token_lens (B,): NeMo's four tensors.
        sample_ids (B,): each utterance's index in its manifest's dataset (NeMo's ``return_sample_id``),
            or None.
        manifest_ids (B,): each utterance's manifest index in a mixed loader
            (:mod:`nemo_tl.data.mixing`), or None when the batch comes from one dataset.
        teacher: what a model's loader adds (the distillation model: the teachers' cached outputs,
            a :class:`~nemo_tl.distill.cache.CachedTeacherBatch`), or None.
    """

    audio: torch.Tensor
    audio_lens: torch.Tensor
    tokens: torch.Tensor
    token_lens: torch.Tensor
    sample_ids: torch.Tensor | None = None
    manifest_ids: torch.Tensor | None = None
    teacher: Any = None

    @classmethod
    def from_nemo(cls, batch: Sequence[Any], manifest_ids: torch.Tensor | None = None) -> AudioTextBatch:
        """Name the fields of NeMo's collated ``(audio, audio_len, tokens, tokens_len[, sample_ids])``.

        An AudioTextBatch is returned as it is (with ``manifest_ids`` set when given). Any other
        length is a ValueError: this is the one place that reads NeMo's positions.
        """
        if isinstance(batch, cls):
            return batch if manifest_ids is None else batch._replace(manifest_ids=manifest_ids)
        if len(batch) not in (4, 5):
            raise ValueError(
                f"a NeMo audio-text batch has 4 tensors (5 with sample ids), got {len(batch)} elements"
            )
        return cls(*batch[:4], sample_ids=batch[4] if len(batch) == 5 else None, manifest_ids=manifest_ids)

    @property
    def nemo(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(audio, audio_lens, tokens, token_lens)``: what NeMo's CTC steps unpack."""
        return self.audio, self.audio_lens, self.tokens, self.token_lens


class LanguageBatch(NamedTuple):
    """One multilingual training batch (:class:`~nemo_tl.models.MultiSoftmaxRNNTModel`) by name.

    audio (B, S), audio_lens (B,), tokens (B, U), token_lens (B,): NeMo's four tensors (tokens of
    each utterance's own language, or of the union vocabulary); lang_ids (B,): each utterance's
    language, its index in ``model.languages`` (the LID class).
    """

    audio: torch.Tensor
    audio_lens: torch.Tensor
    tokens: torch.Tensor
    token_lens: torch.Tensor
    lang_ids: torch.Tensor


def named_batch(collate_fn: Callable[[list[Any]], Any], item: Any, *, mixed: bool) -> AudioTextBatch:
    """NeMo's ``collate_fn`` on what a loader draws, as an :class:`AudioTextBatch`.

    ``item``: a list of NeMo samples, or, from a mixed loader (``mixed``), the ``(samples,
    manifest_ids)`` of a :class:`~nemo_tl.data.mixing.MixedDataset`, whose manifest ids the batch then
    carries.
    """
    samples, manifests = item if mixed else (item, None)
    manifest_ids = None if manifests is None else torch.as_tensor(manifests, dtype=torch.long)
    return AudioTextBatch.from_nemo(collate_fn(samples), manifest_ids=manifest_ids)


class NamedCollate:
    """A picklable ``collate_fn`` (DataLoader workers) that makes :func:`named_batch` batches."""

    def __init__(self, collate_fn: Callable[[list[Any]], Any], *, mixed: bool) -> None:
        self.collate_fn, self.mixed = collate_fn, mixed

    def __call__(self, item: Any) -> AudioTextBatch:
        return named_batch(self.collate_fn, item, mixed=self.mixed)


def utterance_ids(batch: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(sample_ids, manifest_ids)`` of a training batch, each (B,) or None where it does not carry them.

    A batch with named fields (an :class:`AudioTextBatch`, or any NamedTuple) gives them by name;
    NeMo's plain 5-tuple (``return_sample_id``) its sample ids, and no manifest ids.
    """
    if hasattr(batch, "_fields"):
        return getattr(batch, "sample_ids", None), getattr(batch, "manifest_ids", None)
    if isinstance(batch, (tuple, list)) and len(batch) == 5:
        return batch[4], None
    return None, None


def with_collate(loader: DataLoader, collate_fn: Callable[[Any], Any]) -> DataLoader:
    """A DataLoader that draws what ``loader`` draws and collates with ``collate_fn``.

    Same dataset, the same sampler object (so a sampler's state, e.g. a
    :class:`~nemo_tl.data.mixing.MixedBatchSampler`'s resume position, stays shared), batch size,
    ``drop_last``, workers, pinning and generator. ``loader`` should not have been iterated.
    ``collate_fn`` receives what ``loader``'s collate function would have received.
    """
    if loader.batch_size is not None:
        batching: dict[str, Any] = {
            "batch_size": loader.batch_size,
            "sampler": loader.sampler,
            "drop_last": loader.drop_last,
        }
    elif loader.batch_sampler is not None:
        batching = {"batch_sampler": loader.batch_sampler}
    else:  # automatic batching off: the sampler yields whole batches (mixed, semi-sorted)
        batching = {"batch_size": None, "sampler": loader.sampler}
    workers: dict[str, Any] = {}
    if loader.num_workers > 0:
        workers = {"prefetch_factor": loader.prefetch_factor, "persistent_workers": loader.persistent_workers}
    return DataLoader(
        loader.dataset,
        collate_fn=collate_fn,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator,
        pin_memory_device=loader.pin_memory_device,
        in_order=loader.in_order,
        **batching,
        **workers,
    )
