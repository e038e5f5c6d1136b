"""Mixed-manifest training data: several NeMo datasets, one per manifest, with set proportions.

Config (under any nemo_tl model's ``train_ds``; NeMo's own keys keep their meaning)::

    train_ds:
      manifest_filepath: [target.json, source.json]
      mixing:
        weights: hours      # list (normalized) | "hours" (∝ total duration) | "count" (∝ utterances, default)
        temperature: 1.0    # p_i ∝ w_i^(1/T); T > 1 flattens toward the small sets
        per_batch: false    # true: every batch holds utterances of one manifest only
        seed: 0
        num_batches: null   # batches per epoch on each rank; default: one pass over all data

How an epoch is drawn (:class:`MixedBatchSampler`)
    The epoch has ``num_batches`` global steps of ``world_size × batch_size`` slots. Each manifest i
    gets a quota of slots ``round(p_i × slots)`` (largest remainder), or, with ``per_batch``, a quota
    of whole steps; the quotas are laid out in an order shuffled by ``(seed, epoch)``, so the share
    of every manifest over an epoch is within one batch of p_i. The slots of manifest i are filled
    from an endless stream of permutations of that manifest (seeded by ``(seed, i, cycle)``): no
    utterance repeats before the manifest is used up, and a small manifest is then reshuffled and
    repeated. The stream continues across epochs (epoch e starts where epoch e-1 stopped).
    Rank r of a step takes slots ``[r × batch_size, (r+1) × batch_size)`` of that step: disjoint
    batches, the same number on every rank and, with ``per_batch``, the same manifest on every rank.

Lightning
    The sampler subclasses :class:`torch.utils.data.DistributedSampler` and is given to the
    ``DataLoader`` as its ``sampler`` (``batch_size=None``; it yields lists of indices, as NeMo's
    semi-sorted batching does). So under DDP Lightning does not wrap it in another distributed
    sampler, and Lightning 2.4 calls its ``set_epoch`` (it only looks at ``loader.sampler`` and
    ``loader.batch_sampler.sampler``, never at a batch sampler's own ``set_epoch``).
    ``len(loader.dataset)`` is the number of samples one epoch draws on all ranks and
    ``sampler.micro_batch_size`` the batch size, so NeMo's scheduler computes ``max_steps`` right.

Resume
    :meth:`MixedBatchSampler.state_dict` holds the epoch and the number of batches already taken in
    it; after :meth:`~MixedBatchSampler.load_state_dict` the next pass yields the rest of that
    epoch. :class:`nemo_tl.models.mixins.ManifestDataMixin` stores it in Lightning checkpoints.

Which manifest (and language) a batch came from
    ``sampler.manifests`` lists the manifest paths and ``sampler.languages[i]`` the sorted ``lang``
    values found in manifest i (empty when it has none); ``sampler.manifest_language(i)`` is its one
    language or None. ``sampler.manifest_of_batch(j)`` is the manifest index of batch ``j`` (0-based,
    within this rank's current epoch), or -1 when that batch mixes manifests (per-sample mode).
    Because data loaders prefetch, the robust way is to let the loader carry it:
    ``build_mixed_dataloader(..., return_manifest_index=True)`` appends a ``(B,)`` int64 tensor of
    per-utterance manifest indices to every collated batch (all equal with ``per_batch``).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler

from nemo_tl.config_checks import checked_choice, checked_flag, checked_int, checked_number, checked_section
from nemo_tl.data.manifest import flatten_manifest_filepath, iter_manifest_lines
from nemo_tl.errors import input_error

__all__ = [
    "MIXING_KEYS",
    "ManifestStats",
    "MixedBatchSampler",
    "MixedDataset",
    "MixingConfig",
    "build_mixed_dataloader",
    "check_mixing_compatible",
    "mixed_manifest_paths",
    "mixing_probabilities",
    "parse_mixing_config",
    "quotas",
    "scan_manifest",
]

MIXING_KEYS = ("weights", "temperature", "per_batch", "seed", "num_batches")
WEIGHT_MODES = ("hours", "count")

# Dataset options that build another kind of dataset than one map-style NeMo dataset per manifest.
_INCOMPATIBLE = {
    "use_lhotse": "Lhotse weights its inputs itself: drop `mixing` and give `input_cfg` with weights instead",
    "is_tarred": "mixing reads plain JSON manifests: use the untarred manifests, or drop `mixing` "
    "(NeMo's `is_concat` with `concat_sampling_probabilities` mixes tarred sets per sample)",
    "use_dali": "drop `use_dali` (mixing builds NeMo's map-style datasets)",
    "is_concat": "drop `is_concat` and the `concat_*` keys: `mixing` replaces them",
    "is_code_switched": "drop `is_code_switched`: mixing and code switching cannot be combined",
    "hf_data_cfg": "give JSON manifests in `manifest_filepath` instead of `hf_data_cfg`",
    "use_semi_sorted_batching": "drop `use_semi_sorted_batching`: mixing draws its own batches",
    "use_bucketing": "drop `use_bucketing`: mixing draws its own batches",
}

# Streams of small manifests are drawn this many indices at a time (several permutations per draw).
_PERM_BLOCK = 1 << 16


# ----------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class MixingConfig:
    """The parsed ``mixing`` section (see the module docstring for the meaning of each key)."""

    weights: tuple[float, ...] | str = "count"
    temperature: float = 1.0
    per_batch: bool = False
    seed: int = 0
    num_batches: int | None = None

    def manifest_weights(self, counts: Sequence[int], hours: Sequence[float]) -> list[float]:
        """Each manifest's weight before the temperature: its utterances (``count``), its hours (``hours``)
        or the numbers given."""
        if self.weights == "count":
            return [float(c) for c in counts]
        if self.weights == "hours":
            return list(hours)
        return list(self.weights)


def parse_mixing_config(mixing: Mapping | None, num_manifests: int, where: str = "train_ds.mixing") -> MixingConfig:
    """Check a ``mixing`` section against ``num_manifests`` manifests; raise InputError naming the key."""
    mixing = checked_section(mixing, where, MIXING_KEYS, fix="write e.g. mixing={weights:[0.8,0.2]}")
    given = {k: v for k, v in mixing.items() if v is not None}
    weights = given.get("weights", "count")
    if isinstance(weights, str):
        weights = checked_choice(
            weights, WEIGHT_MODES, f"{where}.weights", what="weights mode",
            fix='give a list of numbers, one per manifest, or "hours" or "count"',
        )
    else:
        weights = _checked_weights(weights, num_manifests, f"{where}.weights")
    temperature = checked_number(
        given.get("temperature", 1.0), f"{where}.temperature", positive=True, finite=True,
        fix="1.0 keeps the weights; T > 1 flattens them toward the small sets",
    )
    if isinstance(weights, tuple):
        _checked_probabilities(weights, temperature, where)
    num_batches = given.get("num_batches")
    if num_batches is not None:
        num_batches = checked_int(
            num_batches, f"{where}.num_batches", minimum=1,
            fix="null draws as many batches as one pass over all manifests",
        )
    return MixingConfig(
        weights=weights,
        temperature=temperature,
        per_batch=checked_flag(given.get("per_batch", False), f"{where}.per_batch"),
        seed=checked_int(given.get("seed", 0), f"{where}.seed"),
        num_batches=num_batches,
    )


def _checked_weights(weights: Any, num_manifests: int, where: str) -> tuple[float, ...]:
    """One finite weight ≥ 0 per manifest, not all zero."""
    if not isinstance(weights, list | tuple):
        raise input_error(
            f"must be a list of numbers or 'hours' or 'count', got {weights!r}", where=where,
            fix="give one number per entry of manifest_filepath",
        )
    if len(weights) != num_manifests:
        raise input_error(
            f"{len(weights)} weights for {num_manifests} manifests",
            where=where,
            fix="give one weight per entry of manifest_filepath, in the same order",
        )
    checked = tuple(
        checked_number(w, where, finite=True, fix="give finite weights >= 0, one per manifest") for w in weights
    )
    if sum(checked) <= 0:
        raise input_error("all weights are zero", where=where, fix="give at least one manifest a weight > 0")
    return checked


def mixing_probabilities(weights: Sequence[float], temperature: float = 1.0) -> np.ndarray:
    """p_i ∝ (w_i / Σw)^(1/T), normalized; ``weights`` (K,) → (K,) float64 summing to 1.

    Raises ValueError when the result would not be finite: Σw overflows float64 (huge weights), or
    every (w_i / Σw)^(1/T) underflows to 0 (a tiny T).
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or (w < 0).any() or w.sum() <= 0 or temperature <= 0:
        raise ValueError(f"need non-negative weights with a positive sum and T > 0, got {weights}, T={temperature}")
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
        total = w.sum()
        p = (w / total) ** (np.float64(1.0) / temperature)
        norm = p.sum()
    if not np.isfinite(total):
        raise ValueError(f"the weights {list(weights)} sum to more than float64 can hold")
    if not (np.isfinite(norm) and norm > 0):
        raise ValueError(f"every (w_i / Σw)^(1/T) underflows to 0 with T={temperature:g}")
    return p / norm


def _checked_probabilities(weights: Sequence[float], temperature: float, where: str) -> np.ndarray:
    """:func:`mixing_probabilities`; a non-finite result is an InputError naming ``weights`` or ``temperature``."""
    if not math.isfinite(sum(float(w) for w in weights)):
        raise input_error(
            f"the weights sum to more than the largest number a float can hold ({sys.float_info.max:.3g}), "
            "so the mixing probabilities are not finite",
            where=f"{where}.weights",
            fix="scale the weights down, e.g. to shares that sum to 1 (only their ratios matter)",
        )
    try:
        return mixing_probabilities(weights, temperature)
    except ValueError as e:
        raise input_error(
            f"temperature {temperature:g} makes the mixing probabilities non-finite: {e}",
            where=f"{where}.temperature",
            fix="use a temperature near 1.0 (T < 1 sharpens the weights, T > 1 flattens them)",
        ) from None


def quotas(probabilities: Sequence[float], total: int) -> np.ndarray:
    """Split ``total`` units by ``probabilities`` (largest remainder): (K,) int64, sum == total."""
    p = np.asarray(probabilities, dtype=np.float64)
    exact = p * total
    q = np.floor(exact).astype(np.int64)
    rest = total - int(q.sum())
    if rest > 0:
        # Ties go to the lower index: stable sort of the negated remainders.
        order = np.argsort(-(exact - q), kind="stable")
        q[order[:rest]] += 1
    return q


# ----------------------------------------------------------------------------- manifests
@dataclass(frozen=True)
class ManifestStats:
    """What mixing needs to know about one manifest file (before NeMo's duration filters)."""

    path: str
    num_utterances: int
    hours: float
    languages: tuple[str, ...]


def scan_manifest(path: str, where: str = "manifest_filepath") -> ManifestStats:
    """Read ``path`` once: utterances, hours and ``lang`` values.

    Raises InputError for a missing or empty file, a malformed line or a line without a numeric
    ``duration`` (NeMo's datasets and ``weights: hours`` need it), naming the file and line.
    """
    if not os.path.isfile(os.path.expanduser(path)):
        raise input_error(f"manifest {path!r} does not exist", where=where, fix="check the path")
    count, seconds, langs = 0, 0.0, set()
    for number, line in iter_manifest_lines(path):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise input_error(f"malformed JSON: {e.msg} (column {e.colno})", where=f"{path}:{number}") from None
        if not isinstance(entry, dict):
            raise input_error("line is not a JSON object", where=f"{path}:{number}")
        duration = entry.get("duration")
        if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not math.isfinite(duration):
            raise input_error(
                f"no numeric 'duration' (got {duration!r})",
                where=f"{path}:{number}",
                fix='add the length in seconds, e.g. "duration": 3.2 (needed by NeMo and by mixing.weights: hours)',
            )
        count += 1
        seconds += float(duration)
        if entry.get("lang") is not None:
            langs.add(str(entry["lang"]))
    if count == 0:
        raise input_error(
            f"manifest {path!r} is empty", where=where, fix="remove it from the list or give it utterances"
        )
    return ManifestStats(path=path, num_utterances=count, hours=seconds / 3600.0, languages=tuple(sorted(langs)))


def mixed_manifest_paths(config: Mapping, section: str = "train_ds") -> list[str]:
    """The manifests of a mixed dataset config: a list of paths (or one comma-separated string).

    Parsed by :func:`~nemo_tl.data.manifest.flatten_manifest_filepath`; mixing takes one manifest per
    entry (one weight each), so nested lists (bucketing, Lhotse pairs) are an InputError.
    """
    where = f"{section}.manifest_filepath"
    value = config.get("manifest_filepath")
    paths = flatten_manifest_filepath(value, where)
    if not paths or not (isinstance(value, str) or all(isinstance(entry, str) for entry in value)):
        raise input_error(
            f"mixing needs a flat list of manifest paths, got {value!r}",
            where=where,
            fix="write manifest_filepath=[target.json,source.json]",
        )
    return paths


def check_mixing_compatible(config: Mapping, section: str = "train_ds") -> None:
    """Raise InputError when ``config`` combines ``mixing`` with a dataset kind mixing cannot build."""
    for key, fix in _INCOMPATIBLE.items():
        if config.get(key):
            raise input_error(f"`{key}` cannot be combined with `mixing`", where=f"{section}.{key}", fix=fix)


# ----------------------------------------------------------------------------- sampler
def _stream(seed: int, manifest: int, size: int, start: int, count: int) -> np.ndarray:
    """Positions ``[start, start+count)`` of manifest ``manifest``'s endless stream of permutations.

    The stream is perm_0 ‖ perm_1 ‖ ... of ``range(size)``; cycles are drawn in blocks of
    ``max(1, _PERM_BLOCK // size)`` permutations, each block seeded by (seed, manifest, block).
    """
    if count <= 0:
        return np.empty(0, dtype=np.int64)
    per_block = max(1, _PERM_BLOCK // size)
    block_len = per_block * size
    first, last = start // block_len, (start + count - 1) // block_len
    parts = []
    for b in range(first, last + 1):
        rng = np.random.default_rng([seed, 1, manifest, b])
        if per_block == 1:
            parts.append(rng.permutation(size))
        else:
            parts.append(np.argsort(rng.random((per_block, size)), axis=1).ravel())
    flat = np.concatenate(parts) if len(parts) > 1 else parts[0]
    lo = start - first * block_len
    return flat[lo : lo + count].astype(np.int64, copy=False)


class MixedBatchSampler(DistributedSampler):
    """Yields this rank's batches (lists of ConcatDataset indices) of a mixed-manifest epoch.

    Args:
        sizes: utterances per manifest, (K,), in ConcatDataset order.
        probabilities: target share p_i of every manifest, (K,), summing to 1.
        batch_size: utterances per batch on each rank.
        per_batch: one manifest per global step (all ranks) instead of per utterance.
        seed: with the epoch, fixes everything drawn.
        num_batches: batches per epoch on each rank; None: ceil(Σ sizes / (batch_size × num_replicas)).
        num_replicas, rank: DDP world size and this rank.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        probabilities: Sequence[float],
        batch_size: int,
        *,
        per_batch: bool = False,
        seed: int = 0,
        num_batches: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        sizes = [int(s) for s in sizes]
        if not sizes or min(sizes) < 1:
            raise ValueError(f"every manifest needs at least one utterance, got sizes {sizes}")
        probs = np.asarray(probabilities, dtype=np.float64)
        if probs.shape != (len(sizes),) or not np.isclose(probs.sum(), 1.0) or (probs < 0).any():
            raise ValueError(f"need {len(sizes)} probabilities summing to 1, got {probabilities}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        super().__init__(range(sum(sizes)), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.sizes = sizes
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.probabilities = probs
        self.batch_size = self.micro_batch_size = int(batch_size)
        self.per_batch = bool(per_batch)
        step = self.batch_size * self.num_replicas
        self.num_batches = int(num_batches) if num_batches else max(1, math.ceil(sum(sizes) / step))
        # DistributedSampler's own counts, in utterances: per rank and over all ranks, per epoch.
        self.num_samples, self.total_size = self.num_batches * self.batch_size, self.num_batches * step
        # Filled in by build_mixed_dataloader: manifest paths and their `lang` values.
        self.manifests: list[str] = [f"manifest_{i}" for i in range(len(sizes))]
        self.languages: list[tuple[str, ...]] = [() for _ in sizes]
        self._position = 0  # batches of self.epoch handed out (or restored)
        self._resume_at = 0  # where the next pass over the sampler starts
        self._plan_cache: tuple[int, np.ndarray, np.ndarray] | None = None

    # -- sizes
    def __len__(self) -> int:
        return self.num_batches

    @property
    def samples_per_epoch(self) -> int:
        """Utterances one epoch draws over all ranks (num_batches × batch_size × num_replicas)."""
        return self.num_batches * self.batch_size * self.num_replicas

    def slot_quotas(self) -> np.ndarray:
        """Slots (utterances) of every manifest in one epoch over all ranks, (K,)."""
        if self.per_batch:
            return quotas(self.probabilities, self.num_batches) * self.batch_size * self.num_replicas
        return quotas(self.probabilities, self.samples_per_epoch)

    # -- the plan
    def global_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """All ranks' batches of ``epoch``: indices and manifest ids, both (num_batches, num_replicas, batch_size)."""
        k, step = len(self.sizes), self.batch_size * self.num_replicas
        rng = np.random.default_rng([self.seed, 0, epoch])
        dtype = np.int16 if k < 2**15 else np.int32
        if self.per_batch:
            steps = rng.permutation(np.repeat(np.arange(k, dtype=dtype), quotas(self.probabilities, self.num_batches)))
            slots = np.repeat(steps, step)
        else:
            slots = rng.permutation(
                np.repeat(np.arange(k, dtype=dtype), quotas(self.probabilities, self.samples_per_epoch))
            )
        used = self.slot_quotas()
        streams = [
            self.offsets[i] + _stream(self.seed, i, self.sizes[i], epoch * int(used[i]), int(used[i]))
            for i in range(k)
        ]
        indices = np.empty(len(slots), dtype=np.int64)
        indices[np.argsort(slots, kind="stable")] = np.concatenate(streams)
        shape = (self.num_batches, self.num_replicas, self.batch_size)
        return indices.reshape(shape), slots.reshape(shape)

    def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if self._plan_cache is None or self._plan_cache[0] != epoch:
            indices, manifests = self.global_plan(epoch)
            self._plan_cache = (
                epoch,
                np.ascontiguousarray(indices[:, self.rank]),
                np.ascontiguousarray(manifests[:, self.rank]),
            )
        return self._plan_cache[1], self._plan_cache[2]

    def rank_plan(self, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """This rank's batches of ``epoch`` (default: current): indices and manifest ids, (num_batches, batch_size)."""
        return self._plan(self.epoch if epoch is None else epoch)

    def manifest_of_batch(self, batch_idx: int) -> int:
        """Manifest index of this rank's batch ``batch_idx`` of the current epoch; -1 if it mixes manifests."""
        ids = self._plan(self.epoch)[1][batch_idx]
        return int(ids[0]) if (ids == ids[0]).all() else -1

    def manifest_language(self, manifest: int) -> str | None:
        """The one ``lang`` of manifest ``manifest``, or None when it has none or several."""
        langs = self.languages[manifest]
        return langs[0] if len(langs) == 1 else None

    # -- iteration and epochs
    def __iter__(self) -> Iterator[list[int]]:
        start, self._resume_at = self._resume_at, 0
        indices = self._plan(self.epoch)[0]
        self._position = start
        for j in range(start, self.num_batches):
            self._position = j + 1
            yield indices[j].tolist()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (Lightning calls this before each epoch); a new epoch starts at its first batch."""
        if epoch != self.epoch:
            self.epoch = epoch
            self._position = self._resume_at = 0

    # -- resume
    def _fingerprint(self) -> dict[str, Any]:
        return {
            "sizes": list(self.sizes),
            "probabilities": [round(float(p), 9) for p in self.probabilities],
            "batch_size": self.batch_size,
            "num_replicas": self.num_replicas,
            "num_batches": self.num_batches,
            "per_batch": self.per_batch,
            "seed": self.seed,
        }

    def state_dict(self, batches_done: int | None = None) -> dict[str, Any]:
        """Epoch and position; ``batches_done`` overrides the count of batches handed out.

        The sampler runs ahead of training when the loader prefetches, so a trainer should pass
        the number of batches it has trained on in this epoch (the mixin does).
        """
        position = self._position if batches_done is None else int(batches_done)
        return {"epoch": int(self.epoch), "position": min(max(position, 0), self.num_batches), **self._fingerprint()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state``: the next pass yields the batches of its epoch after its position.

        If manifests, weights, batch size, world size or seed changed, the position has no meaning:
        a warning is logged and the saved epoch restarts from its first batch.
        """
        self.epoch = int(state["epoch"])
        changed = {k: (state.get(k), v) for k, v in self._fingerprint().items() if state.get(k) != v}
        if changed:
            from nemo.utils import logging

            logging.warning(f"mixing: data or settings changed since the checkpoint ({changed}); epoch restarts.")
            self._position = self._resume_at = 0
        else:
            self._position = self._resume_at = int(state["position"])


# ----------------------------------------------------------------------------- dataset and loader
class MixedDataset(Dataset):
    """The ConcatDataset of the per-manifest datasets, indexed by whole batches.

    ``dataset[[i, j, ...]]`` returns ``(samples, manifest_ids)``. ``len()`` is the number of
    utterances one epoch draws over all ranks (what NeMo's scheduler uses for ``max_steps``).
    """

    def __init__(self, datasets: Sequence[Dataset], sampler: MixedBatchSampler) -> None:
        self.concat = ConcatDataset(list(datasets))
        self.datasets = self.concat.datasets
        self.offsets = sampler.offsets
        self._epoch_length = sampler.samples_per_epoch

    def __len__(self) -> int:
        return self._epoch_length

    def __getitem__(self, index: int | Sequence[int]) -> tuple[list[Any], list[int]]:
        indices = [index] if isinstance(index, (int, np.integer)) else list(index)
        samples = [self.concat[i] for i in indices]
        manifests = (np.searchsorted(self.offsets, indices, side="right") - 1).tolist()
        return samples, manifests


class MixedCollate:
    """NeMo's ``collate_fn`` applied to a batch of samples; optionally appends the manifest ids (B,)."""

    def __init__(self, collate_fn: Callable[[list[Any]], Any], return_manifest_index: bool = False) -> None:
        self.collate_fn = collate_fn
        self.return_manifest_index = return_manifest_index

    def __call__(self, item: tuple[list[Any], list[int]]) -> Any:
        samples, manifests = item
        batch = self.collate_fn(samples)
        if self.return_manifest_index:
            batch = (*batch, torch.tensor(manifests, dtype=torch.long))
        return batch


def _dataset_hours(dataset: Dataset, stats: ManifestStats) -> float:
    """Hours of a NeMo dataset after its duration filters (from its collection), else of the file."""
    collection = getattr(getattr(dataset, "manifest_processor", None), "collection", None)
    if collection is not None:
        durations = [getattr(item, "duration", None) for item in collection]
        if durations and all(d is not None for d in durations):
            return float(sum(durations)) / 3600.0
    return stats.hours


def build_mixed_dataloader(
    config: DictConfig | Mapping,
    dataset_factory: Callable[[DictConfig], Dataset],
    global_rank: int = 0,
    world_size: int = 1,
    *,
    return_manifest_index: bool = False,
    section: str = "train_ds",
) -> DataLoader:
    """A DataLoader drawing mixed batches from the manifests of ``config`` (a ``train_ds`` with ``mixing``).

    Args:
        config: dataset config: ``manifest_filepath`` (list), ``mixing``, ``batch_size`` and NeMo's
            dataset keys (``num_workers``, ``pin_memory``, ``max_duration``, ...).
        dataset_factory: builds one NeMo map-style dataset (with ``collate_fn``) from a copy of
            ``config`` whose ``manifest_filepath`` is one path and without ``mixing``, e.g.
            ``lambda c: get_char_dataset(c)`` or ``lambda c: get_bpe_dataset(c, tokenizer)``.
        global_rank, world_size: this rank and the DDP world size.
        return_manifest_index: append a (B,) int64 tensor of manifest indices to every batch.
        section: config key named in error messages.

    Returns:
        A DataLoader with ``batch_size=None`` whose ``sampler`` is the :class:`MixedBatchSampler`
        (``loader.sampler.manifests``, ``.languages``, ``.state_dict()``) and whose ``dataset`` is a
        :class:`MixedDataset`. Batches are NeMo's collated tuples, e.g. (signal (B, T),
        signal_len (B,), tokens (B, U), tokens_len (B,)) [+ manifest ids (B,)].

    Raises:
        InputError: bad ``mixing`` keys, missing/empty/malformed manifests, a manifest left empty by
            the duration filters, or a dataset kind mixing cannot build (lhotse, tarred, ...).
    """
    if not isinstance(config, DictConfig):
        config = OmegaConf.create(dict(config))
    check_mixing_compatible(config, section)
    paths = mixed_manifest_paths(config, section)
    mixing = parse_mixing_config(config.get("mixing"), len(paths), where=f"{section}.mixing")
    batch_size = checked_int(config.get("batch_size"), f"{section}.batch_size", minimum=1, fix="e.g. batch_size: 32")
    stats = [scan_manifest(p, where=f"{section}.manifest_filepath[{i}]") for i, p in enumerate(paths)]

    datasets = []
    for i, path in enumerate(paths):
        one = OmegaConf.create(OmegaConf.to_container(config, resolve=True))
        with open_dict(one):
            one.manifest_filepath = path
            one.pop("mixing", None)
        dataset = dataset_factory(one)
        if len(dataset) == 0:
            raise input_error(
                f"no utterance of {path!r} is left after the duration filters "
                f"(min_duration={config.get('min_duration')}, max_duration={config.get('max_duration')})",
                where=f"{section}.manifest_filepath[{i}]",
                fix=f"raise {section}.max_duration / lower {section}.min_duration, or drop this manifest",
            )
        datasets.append(dataset)

    hours = [_dataset_hours(d, s) for d, s in zip(datasets, stats)] if mixing.weights == "hours" else []
    if mixing.weights == "hours" and sum(hours) <= 0:
        raise input_error("all manifests have zero total duration", where=f"{section}.mixing.weights")
    weights = mixing.manifest_weights([len(d) for d in datasets], hours)
    sampler = MixedBatchSampler(
        [len(d) for d in datasets],
        _checked_probabilities(weights, mixing.temperature, f"{section}.mixing"),
        batch_size,
        per_batch=mixing.per_batch,
        seed=mixing.seed,
        num_batches=mixing.num_batches,
        num_replicas=world_size,
        rank=global_rank,
    )
    sampler.manifests = list(paths)
    sampler.languages = [s.languages for s in stats]

    collate_fn = getattr(datasets[0], "collate_fn", None)
    if collate_fn is None:
        raise TypeError(f"dataset_factory must build datasets with a collate_fn, got {type(datasets[0]).__name__}")
    num_workers = int(config.get("num_workers", 0) or 0)
    return DataLoader(
        MixedDataset(datasets, sampler),
        batch_size=None,
        sampler=sampler,
        collate_fn=MixedCollate(collate_fn, return_manifest_index),
        num_workers=num_workers,
        pin_memory=bool(config.get("pin_memory", False)),
        persistent_workers=bool(config.get("persistent_workers", False)) and num_workers > 0,
    )
