"""NeMo's SpecCutout crash on batches of short utterances, found before training.

``SpectrogramAugmentation`` with ``rect_masks > 0`` runs NeMo's ``SpecCutout``, which draws each
rectangle's start with ``random.randint(0, T - rect_time)`` (and ``randint(0, F - rect_freq)``),
where ``T`` is the batch's padded length in feature frames and ``F`` the number of features. So

- ``rect_freq > F`` crashes every training step (``ValueError: empty range in randrange``);
- a batch crashes when every utterance in it is shorter than ``rect_time`` feature frames.

An utterance of ``s`` samples gives ``s // hop + 1`` feature frames (``hop`` = the preprocessor's
``n_window_stride``, else ``int(window_stride × sample_rate)``), and a batch's frames are rounded
up to a multiple of the preprocessor's ``pad_to`` (NeMo's default 16). With K of the N training
utterances that short (p = K / N), batch size B and a last batch of r = N mod B utterances (none
when r = 0 or ``drop_last: true``), a shuffled epoch crashes with a chance of about

    (N // B) · p^B + p^r

:func:`check_spec_cutout` raises :class:`~nemo_tl.errors.InputError` when that is at least
:data:`MAX_CRASH_CHANCE` per epoch. With ``train_ds.mixing`` (:mod:`nemo_tl.data.mixing`) every
batch is full: per-utterance mixing draws each slot from manifest i with share p_i, so a batch is
all short with q = Σ p_i K_i / N_i per slot and the chance is about (batches) · q^B; with
``per_batch: true`` manifest i fills round(p_i · batches) whole batches: Σ_i batches_i ·
(K_i / N_i)^B. With ``use_semi_sorted_batching`` batches group similar lengths, so K ≥ B counts
as a sure crash. Tarred and Lhotse datasets are not checked (their batches are formed elsewhere).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nemo_tl.config_checks import finite_float, to_plain
from nemo_tl.data.manifest import flatten_manifest_filepath, iter_manifest_lines
from nemo_tl.errors import input_error

__all__ = ["MAX_CRASH_CHANCE", "check_spec_cutout", "feature_frames", "short_batch_chance"]

MAX_CRASH_CHANCE = 1e-4  # chance per epoch of an all-short batch at or above which training is refused


def short_batch_chance(short: int, total: int, batch_size: int, drop_last: bool = False) -> float:
    """Chance per shuffled epoch that some batch holds only short utterances: (N // B)·p^B + p^r.

    ``short`` = K of ``total`` = N utterances are short (p = K / N); B = ``batch_size``; the last
    batch holds r = N mod B utterances (none when r = 0 or ``drop_last``). An approximation
    (batches treated as independent draws with replacement), capped at 1.
    """
    if total <= 0 or short <= 0:
        return 0.0
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    p = short / total
    rest = total % batch_size
    chance = (total // batch_size) * p**batch_size
    if rest and not drop_last:
        chance += p**rest
    return min(1.0, chance)


def feature_frames(seconds: float, sample_rate: int, hop: int, pad_to: int = 0) -> int:
    """Feature frames of a batch whose longest utterance lasts ``seconds``: samples // hop + 1, rounded up to
    a multiple of ``pad_to`` (when > 0), as NeMo's ``FilterbankFeatures`` pads its output."""
    frames = int(round(seconds * sample_rate)) // hop + 1
    if pad_to > 0:
        frames = -(-frames // pad_to) * pad_to
    return frames


@dataclass(frozen=True)
class _Utterance:
    file: str
    line: int
    seconds: float


def _preprocessor_geometry(model_cfg: Mapping) -> tuple[int, int, int | str, int | None]:
    """``(sample_rate, hop, pad_to, features)`` of a model config's preprocessor (NeMo's defaults)."""
    pre = model_cfg.get("preprocessor") or {}
    rate = int(pre.get("sample_rate") or model_cfg.get("sample_rate") or 16000)
    hop = pre.get("n_window_stride") or int(float(pre.get("window_stride") or 0.01) * rate)
    pad_to = pre.get("pad_to", 16)
    pad_to = pad_to if pad_to == "max" else int(pad_to or 0)
    features = pre.get("features", pre.get("n_mfcc"))
    return rate, int(hop), pad_to, int(features) if features is not None else None


def _utterances(path: str, lo: float | None, hi: float | None) -> list[_Utterance]:
    """Lines of ``path`` NeMo keeps (``min_duration <= duration <= max_duration``), with their duration."""
    out = []
    try:
        lines = list(iter_manifest_lines(path))
    except OSError:
        return []  # the manifest checks report it
    for number, line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        seconds = finite_float(entry.get("duration")) if isinstance(entry, dict) else None
        if seconds is None or (lo is not None and seconds < lo) or (hi is not None and seconds > hi):
            continue
        out.append(_Utterance(path, number, seconds))
    return out


def _mixed_chance(
    groups: Sequence[list[_Utterance]], short: Sequence[int], mixing: Mapping, batch_size: int, where: str
) -> float:
    """Chance per epoch of an all-short batch from :class:`~nemo_tl.data.mixing.MixedBatchSampler` (full batches)."""
    from nemo_tl.data.mixing import mixing_probabilities, parse_mixing_config, quotas

    parsed = parse_mixing_config(mixing, len(groups), where=where)
    sizes = [len(g) for g in groups]
    hours = [sum(u.seconds for u in g) / 3600.0 for g in groups]
    p = mixing_probabilities(parsed.manifest_weights(sizes, hours), parsed.temperature)
    batches = parsed.num_batches or max(1, math.ceil(sum(sizes) / batch_size))
    shares = [k / n if n else 0.0 for k, n in zip(short, sizes)]
    if parsed.per_batch:
        chance = sum(int(b) * q**batch_size for b, q in zip(quotas(p, batches), shares))
    else:
        chance = batches * float(sum(pi * q for pi, q in zip(p, shares))) ** batch_size
    return min(1.0, chance)


def check_spec_cutout(config: Mapping, model_cfg: Mapping, section: str = "train_ds") -> None:
    """Raise InputError when NeMo's SpecCutout would crash on the training set of ``config``.

    ``config`` is the ``train_ds`` section (after the manifest checks), ``model_cfg`` the model config
    with its ``spec_augment`` and ``preprocessor``. Does nothing for another ``section``, without
    ``spec_augment.rect_masks > 0``, for tarred or Lhotse datasets, or without ``batch_size``.
    The rule (see the module docstring): a batch crashes when every utterance in it is shorter than
    ``rect_time`` feature frames; an error when that happens with a chance of at least
    :data:`MAX_CRASH_CHANCE` per epoch, and whenever ``rect_freq`` exceeds the preprocessor's ``features``.
    """
    if section != "train_ds" or model_cfg is None:
        return
    augment = model_cfg.get("spec_augment")
    if not augment or int(augment.get("rect_masks") or 0) <= 0:
        return
    rate, hop, pad_to, features = _preprocessor_geometry(model_cfg)
    rect_time, rect_freq = int(augment.get("rect_time", 5)), int(augment.get("rect_freq", 20))
    if features is not None and rect_freq > features:
        raise input_error(
            f"rect_freq {rect_freq} is larger than the preprocessor's {features} features: NeMo's SpecCutout "
            f"crashes on every training batch (randint(0, {features} - {rect_freq}): ValueError: empty range)",
            where="model.spec_augment.rect_freq",
            fix=f"set spec_augment.rect_freq to {features} or less, or spec_augment.rect_masks: 0",
        )
    if config.get("use_lhotse") or config.get("is_tarred") or config.get("tarred_audio_filepaths"):
        return
    batch_size = config.get("batch_size")
    if not batch_size or pad_to == "max" or not config.get("manifest_filepath"):
        return
    batch_size = int(batch_size)
    lo, hi = finite_float(config.get("min_duration")), finite_float(config.get("max_duration"))
    paths = list(dict.fromkeys(flatten_manifest_filepath(to_plain(config.get("manifest_filepath")))))
    groups = [_utterances(path, lo, hi) for path in paths]
    utterances = [u for g in groups for u in g]
    if not utterances:
        return
    short_of = [sum(feature_frames(u.seconds, rate, hop, pad_to) < rect_time for u in g) for g in groups]
    short = sum(short_of)
    if not short:
        return
    mixing = config.get("mixing")
    drop_last = bool(config.get("drop_last", False))
    total = len(utterances)
    semi_sorted = bool(config.get("use_semi_sorted_batching"))
    if mixing is not None:
        chance = _mixed_chance(groups, short_of, to_plain(mixing), batch_size, f"{section}.mixing")
        rule = "mixed batches are full: about batches × (Σ share_i × short_i / N_i)^B"
    elif semi_sorted:
        chance = 1.0 if short >= batch_size else 0.0
        rule = "semi-sorted batching groups similar lengths, so K ≥ B short utterances make a whole batch"
    else:
        chance = short_batch_chance(short, total, batch_size, drop_last)
        rule = "about (N // B)·p^B + p^r, r = N mod B the last batch"
    if chance < MAX_CRASH_CHANCE:
        return

    shortest = min(utterances, key=lambda u: u.seconds)
    shortest_frames = feature_frames(shortest.seconds, rate, hop, pad_to)
    rest = total % batch_size
    where_files = ", ".join(paths)
    padded = f", rounded up to a multiple of pad_to {pad_to}" if pad_to else ""
    fixes = []
    if mixing is None and not semi_sorted and rest and not drop_last and total >= batch_size:
        without = short_batch_chance(short, total, batch_size, drop_last=True)
        if without < MAX_CRASH_CHANCE:
            fixes.append(f"{section}.drop_last: true (drops the last batch of {rest}; the chance becomes {without:.2g})")
    fixes.append(f"spec_augment.rect_time: {shortest_frames} or less (the frames of the shortest utterance)")
    fixes.append("spec_augment.rect_masks: 0 (no SpecCutout)")
    raise input_error(
        f"{short} of the {total} training utterances of {where_files} are shorter than spec_augment.rect_time = "
        f"{rect_time} feature frames ({rect_time * hop / rate:.2f} s at hop {hop} samples, {rate} Hz); NeMo's "
        f"SpecCutout crashes (ValueError: empty range in randrange) on a batch whose utterances are all that "
        f"short. Batch size {batch_size}, p = {short / total:.3g}: the chance is {chance:.2g} per epoch ({rule}; "
        f"the limit is {MAX_CRASH_CHANCE:g}). Shortest: {shortest.file}:{shortest.line} ({shortest.seconds:g} s, "
        f"{shortest_frames} frames = samples // {hop} + 1{padded})",
        where="model.spec_augment.rect_time",
        fix=", or ".join(fixes),
    )
