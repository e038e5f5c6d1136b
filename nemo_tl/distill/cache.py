"""Offline knowledge distillation: teacher outputs computed once, reused every epoch.

Usage::

    python -m nemo_tl.distill.cache TEACHER.nemo MANIFEST.json [MORE.json ...] --out DIR \\
        [--hidden-blocks 2 4] [--batch-size 8]

or set ``model.distillation.cache: DIR`` and DistillCTCModel builds ``DIR/teacher_<k>`` for
each teacher k the first time (the command above builds one such directory).

A cache directory holds one ``.pt`` file per utterance (teacher log-probabilities (T, V+1),
log σ² (T, V+1) if the teacher has an uncertainty head, and the (D, T) outputs of the
requested encoder blocks), keyed by the manifest entry (audio file, offset, duration),
``entries.json`` (the size of every ``.pt`` file) and a ``fingerprint.json`` written last: the
hash of the teacher's weights and vocabulary, its preprocessor settings, the hash of every
manifest's content, the size and modification time (ns) of every audio file the manifests list
(read with ``stat`` only, not the audio), the audio loading settings and the cached blocks.

Opening a cache (when the model is built, before training) checks it: a fingerprint that does
not match (the teacher, a manifest, the settings, or an audio file rewritten, touched or
copied without its modification time: rebuild then), a ``.pt`` file missing or of another size
than written (an interrupted copy) for an utterance of the training data, or an unreadable
``fingerprint.json`` / ``entries.json`` is an InputError naming the file (the audio file for a
missing entry) and the fix.

Augmentation and dither: the cache holds the teacher's outputs on clean audio, as an online
teacher sees it (teachers run in eval mode: no dither, no SpecAugment). The student is still
augmented (its own SpecAugment and dither in training), exactly as with online teachers, so
caching changes nothing there. Audio-level augmentation of the training set (``train_ds.
augmentor``: speed or noise perturbation) is different: an online teacher sees the perturbed
audio, the cache does not. Use online teachers (``cache: null``) when the teacher should follow
audio perturbations.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from nemo.collections.asr.data.audio_to_text import AudioToCharDataset
from nemo.collections.asr.models import ASRModel
from nemo.collections.asr.parts.preprocessing.perturb import AudioAugmentor

from nemo_tl.config_checks import to_plain
from nemo_tl.data.batches import AudioTextBatch, named_batch, with_collate
from nemo_tl.data.manifest import AUDIO_KEYS, flatten_manifest_filepath, iter_manifest_lines, resolve_audio_path
from nemo_tl.data.mixing import MixedDataset
from nemo_tl.distill.teachers import TeacherOutputs, freeze_teacher, has_uncertainty_head, teacher_outputs
from nemo_tl.errors import input_error

__all__ = [
    "CachedTeacherBatch",
    "CachedTeacherCollate",
    "TeacherCache",
    "build_cache",
    "cache_fingerprint",
    "cached_teacher_loader",
    "main",
    "manifest_list",
    "model_hash",
    "read_entries",
    "teacher_cache_directories",
    "utterance_datasets",
    "utterance_key",
    "utterance_keys",
]

FORMAT_VERSION = 2  # 2: audio file sizes and modification times in the fingerprint, entries.json
FINGERPRINT = "fingerprint.json"
ENTRIES = "entries.json"
REPORT_LIMIT = 10  # missing or truncated entries listed in an error message


def utterance_key(sample: Any) -> str:
    """Cache key of a NeMo manifest entry (``dataset.get_manifest_sample(i)``): audio file, offset, duration."""
    text = f"{sample.audio_file}|{float(sample.offset or 0.0):.6f}|{sample.duration}"
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def utterance_keys(
    datasets: Sequence[Any], sample_ids: torch.Tensor, manifest_ids: torch.Tensor | None = None
) -> list[str]:
    """Cache keys of a batch's utterances: utterance ``sample_ids[b]`` of ``datasets[manifest_ids[b]]``.

    ``sample_ids`` and ``manifest_ids`` are (B,); without manifest ids every utterance is of ``datasets[0]``.
    """
    ids = sample_ids.tolist()
    manifests = [0] * len(ids) if manifest_ids is None else manifest_ids.tolist()
    return [utterance_key(datasets[m].get_manifest_sample(i)) for i, m in zip(ids, manifests)]


def utterance_datasets(dataset: Any, where: str = "model.distillation.cache") -> list[Any]:
    """The NeMo datasets a training loader's ``dataset`` draws utterances from (one per manifest when mixed).

    InputError unless each is a map-style NeMo audio-text dataset: the cache keys its entries by
    ``get_manifest_sample(sample_id)``.
    """
    datasets = list(getattr(dataset, "datasets", None) or [dataset])  # a MixedDataset holds one per manifest
    for ds in datasets:
        if not all(hasattr(ds, a) for a in ("get_manifest_sample", "featurizer", "return_sample_id")):
            raise input_error(
                f"a teacher cache needs map-style NeMo audio-text datasets, got {type(ds).__name__}",
                where=where,
                fix="train from plain (non-tarred, non-lhotse) manifests, or set cache: null to run the "
                "teachers online",
            )
    return datasets


def teacher_cache_directories(cache: str, num_teachers: int) -> list[str]:
    """``cache/teacher_<k>`` for every teacher k: where ``model.distillation.cache`` keeps teacher k's outputs."""
    return [os.path.join(cache, f"teacher_{k}") for k in range(num_teachers)]


def _entry_file(directory: str, key: str) -> str:
    return os.path.join(directory, "utts", key[:2], f"{key}.pt")


def read_entries(directory: str, keys: Sequence[str], device: torch.device | str = "cpu") -> TeacherOutputs:
    """The cached outputs of utterances ``keys`` in cache ``directory``, padded into a batch (B, T, V+1) / (B, D, T).

    An utterance without an entry is an InputError naming the cache.
    """
    items = []
    for key in keys:
        path = _entry_file(directory, key)
        if not os.path.isfile(path):
            raise input_error(
                f"utterance {key} is not in the teacher cache {directory!r}",
                where="model.distillation.cache",
                fix="rebuild the cache from the training manifests",
            )
        items.append(torch.load(path, map_location="cpu", weights_only=True))
    lengths = torch.tensor([it["log_probs"].shape[0] for it in items], dtype=torch.long)

    def pad_time(tensors: list[torch.Tensor], time_dim: int) -> torch.Tensor:
        frames = max(t.shape[time_dim] for t in tensors)
        padded = [
            torch.nn.functional.pad(t, (0, 0, 0, frames - t.shape[0]) if time_dim == 0 else (0, frames - t.shape[1]))
            for t in tensors
        ]
        return torch.stack(padded).to(device)

    logvar = pad_time([it["logvar"] for it in items], 0) if "logvar" in items[0] else None
    hidden = {int(b): pad_time([it["hidden"][b] for it in items], 1) for b in items[0].get("hidden", {})}
    return TeacherOutputs(
        log_probs=pad_time([it["log_probs"] for it in items], 0),
        lengths=lengths.to(device),
        logvar=logvar,
        hidden=hidden,
    )


def model_hash(model: ASRModel) -> str:
    """sha256 of a model's vocabulary (:func:`~nemo_tl.transfer.tokens.model_tokens`: CTC or RNN-T, chars or
    subwords) and weights (state_dict names, shapes and bytes)."""
    from nemo_tl.transfer.tokens import model_tokens

    h = hashlib.sha256()
    h.update(json.dumps(model_tokens(model)).encode("utf-8"))
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _file_hash(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _audio_stats_hash(manifest: str) -> str:
    """sha256 of (audio path as written, size, modification time in ns) of every audio file ``manifest`` lists.

    ``stat`` only: cheap next to reading the audio. Lines that are not JSON objects and missing
    files count as such (the manifest checks report them; ``skip_invalid`` may drop them).
    """
    h = hashlib.sha256()
    for _, line in iter_manifest_lines(manifest):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        value = next((entry[k] for k in AUDIO_KEYS if k in entry), None) if isinstance(entry, dict) else None
        for audio in value if isinstance(value, list) else [value]:
            if not isinstance(audio, str) or not audio:
                continue
            try:
                st = os.stat(resolve_audio_path(audio, manifest))
                h.update(f"{audio}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{audio}\tmissing\n".encode())
    return h.hexdigest()


manifest_list = flatten_manifest_filepath  # the name this module exports for the one parser of manifest_filepath


def cache_fingerprint(
    teacher: ASRModel,
    manifests: Sequence[str],
    *,
    sample_rate: int,
    trim_silence: bool = False,
    hidden_blocks: Sequence[int] = (),
) -> dict[str, Any]:
    """What a cache depends on: teacher weights + vocabulary, preprocessor, manifests' content, the audio
    files' sizes and modification times, audio loading."""
    for path in manifests:
        if not os.path.isfile(path):
            raise input_error(
                f"manifest {path!r} does not exist",
                where="model.train_ds.manifest_filepath",
                fix="give the path of an existing NeMo JSON-lines manifest",
            )
    return {
        "version": FORMAT_VERSION,
        "teacher": model_hash(teacher),
        "preprocessor": to_plain(teacher.cfg.get("preprocessor")),
        "manifests": [
            {"path": os.path.abspath(p), "sha256": _file_hash(p), "audio": _audio_stats_hash(p)} for p in manifests
        ],
        "audio": {"sample_rate": int(sample_rate), "trim_silence": bool(trim_silence)},
        "hidden_blocks": sorted(int(b) for b in hidden_blocks),
        "uncertainty": has_uncertainty_head(teacher),
    }


def _differences(found: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    what = {
        "version": "the cache format",
        "teacher": "the teacher (weights or vocabulary)",
        "preprocessor": "the teacher's preprocessor settings",
        "audio": "the audio loading settings (sample_rate, trim_silence)",
        "uncertainty": "the teacher's uncertainty head",
    }
    diffs = [text for key, text in what.items() if found.get(key) != expected.get(key)]
    found_m = [m["sha256"] for m in found.get("manifests", [])]
    if found_m != [m["sha256"] for m in expected["manifests"]]:
        diffs.append("the manifest content")
    elif [m.get("audio") for m in found.get("manifests", [])] != [m["audio"] for m in expected["manifests"]]:
        diffs.append("the audio files (size or modification time; rewritten or touched since the cache was built)")
    missing = set(expected["hidden_blocks"]) - set(found.get("hidden_blocks", []))
    if missing:
        diffs.append(f"the cached encoder blocks (missing {sorted(missing)})")
    return diffs


def _read_json(path: str, where: str) -> dict:
    """The JSON object in ``path``; InputError naming the file when it is not one."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        value, problem = None, f"{type(e).__name__}: {e}"
    else:
        problem = None if isinstance(value, dict) else f"it holds a JSON {type(value).__name__}, not an object"
    if problem is not None:
        directory = os.path.dirname(path)
        raise input_error(
            f"the teacher cache file {path} is damaged ({problem})",
            where=where,
            fix=f"delete the cache directory {directory} to rebuild it (`rm -r {directory}`)",
        )
    return value


class TeacherCache:
    """One teacher's outputs on the utterances of some manifests, in ``directory``."""

    def __init__(self, directory: str, fingerprint: Mapping[str, Any]):
        self.directory = directory
        self.fingerprint = dict(fingerprint)
        self._sizes: dict[str, int] = {}  # key -> bytes of its .pt file, as written

    @classmethod
    def open(
        cls, directory: str, expected: Mapping[str, Any], *, where: str = "model.distillation.cache"
    ) -> TeacherCache:
        """Open a complete cache, checking it was made for ``expected`` (InputError otherwise)."""
        path = os.path.join(directory, FINGERPRINT)
        if not os.path.isfile(path):
            raise input_error(
                f"{directory!r} is not a complete teacher cache (no {FINGERPRINT})",
                where=where,
                fix="build it with `python -m nemo_tl.distill.cache TEACHER.nemo MANIFEST.json --out DIR`",
            )
        found = _read_json(path, where)
        diffs = _differences(found, expected)
        if diffs:
            raise input_error(
                f"the teacher cache in {directory!r} was made for another setup: {', '.join(diffs)} differ(s)",
                where=where,
                fix="point the cache to a new directory (or delete this one) to rebuild it, or train with the "
                "teacher and manifests it was made from",
            )
        return cls(directory, found)

    def verify(self, datasets: Sequence[Any], *, where: str = "model.distillation.cache") -> None:
        """Raise InputError unless every utterance of ``datasets`` has its entry, of the size written.

        ``stat`` only, one per utterance. The message names the audio files whose entries are
        missing or truncated (an interrupted copy, a cache built with other duration filters).
        """
        sizes = {
            key: int(size) for key, size in _read_json(os.path.join(self.directory, ENTRIES), where).items()
        }
        bad, total = [], 0
        for dataset in datasets:
            for i in range(len(dataset)):
                sample = dataset.get_manifest_sample(i)
                key = utterance_key(sample)
                total += 1
                try:
                    size = os.stat(self._file(key)).st_size
                except FileNotFoundError:
                    size = None
                if key not in sizes or size is None:
                    bad.append((sample, "no entry"))
                elif size != sizes[key]:
                    bad.append((sample, f"entry truncated ({size} of {sizes[key]} bytes)"))
        if bad:
            def name(sample: Any) -> str:
                offset = float(sample.offset or 0.0)
                part = f" (offset {offset:g} s, duration {sample.duration} s)" if offset else ""
                return f"{sample.audio_file}{part}"

            listed = "\n".join(f"  {name(sample)}: {why}" for sample, why in bad[:REPORT_LIMIT])
            more = f"\n  ... and {len(bad) - REPORT_LIMIT} more" if len(bad) > REPORT_LIMIT else ""
            raise input_error(
                f"the teacher cache in {self.directory!r} lacks the outputs of {len(bad)} of the {total} training "
                f"utterances:\n{listed}{more}",
                where=where,
                fix=f"delete {self.directory} to rebuild the cache from the training data "
                "(it may be incomplete, or built with other duration filters)",
            )

    @staticmethod
    def is_complete(directory: str) -> bool:
        return os.path.isfile(os.path.join(directory, FINGERPRINT))

    def _file(self, key: str) -> str:
        return _entry_file(self.directory, key)

    def read(self, keys: Sequence[str], device: torch.device | str = "cpu") -> TeacherOutputs:
        """The cached outputs of utterances ``keys``, padded into a batch (B, T, V+1) / (B, D, T)."""
        return read_entries(self.directory, keys, device)

    def write(self, key: str, outputs: TeacherOutputs, index: int) -> None:
        """Store utterance ``index`` of a batch of teacher outputs under ``key`` (atomically)."""
        n = int(outputs.lengths[index])
        item: dict[str, Any] = {"log_probs": outputs.log_probs[index, :n].detach().cpu().clone()}
        if outputs.logvar is not None:
            item["logvar"] = outputs.logvar[index, :n].detach().cpu().clone()
        if outputs.hidden:
            item["hidden"] = {str(b): h[index, :, :n].detach().cpu().clone() for b, h in outputs.hidden.items()}
        path = self._file(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        torch.save(item, tmp)
        self._sizes[key] = os.path.getsize(tmp)
        os.replace(tmp, path)

    def _write_json(self, name: str, value: Any) -> None:
        tmp = os.path.join(self.directory, f"{name}.tmp{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(value, f, indent=1)
        os.replace(tmp, os.path.join(self.directory, name))

    def finish(self) -> None:
        """Write the entry sizes, then the fingerprint, which marks the cache complete."""
        self._write_json(ENTRIES, self._sizes)
        self._write_json(FINGERPRINT, self.fingerprint)


@contextlib.contextmanager
def _clean_samples(dataset: Any) -> Iterator[None]:
    """Within the context, ``dataset`` yields unperturbed audio and sample ids (teacher outputs on clean audio)."""
    featurizer = dataset.featurizer
    saved = featurizer.augmentor, dataset.return_sample_id
    featurizer.augmentor, dataset.return_sample_id = AudioAugmentor(), True
    try:
        yield
    finally:
        featurizer.augmentor, dataset.return_sample_id = saved


def build_cache(
    teacher: ASRModel,
    manifests: Sequence[str],
    directory: str,
    *,
    sample_rate: int | None = None,
    trim_silence: bool = False,
    hidden_blocks: Sequence[int] = (),
    batch_size: int = 8,
    device: torch.device | str | None = None,
    datasets: Sequence[Any] | None = None,
    where: str = "model.distillation.cache",
) -> TeacherCache:
    """Run ``teacher`` over every utterance of ``manifests`` and store its outputs in ``directory``.

    An existing complete cache is reused if its fingerprint matches and it holds an intact entry
    for every utterance of ``datasets`` (:meth:`TeacherCache.verify`), and refused (InputError)
    if not; an incomplete one (an interrupted build) is completed over. ``directory`` being an
    existing file is an InputError.

    Args:
        datasets: the NeMo audio-text datasets (e.g. the training set's, after its manifest
            checks and duration filters) whose utterances to cache; by default one
            AudioToCharDataset of ``manifests``. Audio perturbations are off while caching.
    """
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise input_error(
            f"{directory!r} is an existing file, not a cache directory",
            where=where,
            fix="give the path of a new (or cache) directory",
        )
    sample_rate = int(sample_rate or teacher.cfg.get("sample_rate", 16000))
    expected = cache_fingerprint(
        teacher, manifests, sample_rate=sample_rate, trim_silence=trim_silence, hidden_blocks=hidden_blocks
    )
    if datasets is None:
        datasets = [
            AudioToCharDataset(
                manifest_filepath=",".join(manifests),
                labels=list(teacher.decoder.vocabulary),
                sample_rate=sample_rate,
                trim=trim_silence,
            )
        ]
    if TeacherCache.is_complete(directory):
        cache = TeacherCache.open(directory, expected, where=where)
        cache.verify(datasets, where=where)
        return cache
    os.makedirs(directory, exist_ok=True)
    cache = TeacherCache(directory, expected)
    freeze_teacher(teacher)
    if device is not None:
        teacher.to(device)
    device = next(teacher.parameters()).device
    for dataset in datasets:
        with _clean_samples(dataset):
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=batch_size, shuffle=False, collate_fn=dataset.collate_fn
            )
            for collated in loader:
                batch = AudioTextBatch.from_nemo(collated)
                audio, audio_lens = batch.audio.to(device), batch.audio_lens.to(device)
                outputs = teacher_outputs(teacher, audio, audio_lens, hidden_blocks)
                for i, key in enumerate(utterance_keys([dataset], batch.sample_ids)):
                    cache.write(key, outputs, i)
    cache.finish()
    return cache


@dataclass
class CachedTeacherBatch:
    """The cached outputs of every teacher for one training batch: ``AudioTextBatch.teacher``, read by the loader."""

    outputs: list[TeacherOutputs]

    def _map(self, fn) -> list[TeacherOutputs]:
        return [
            replace(
                o,
                log_probs=fn(o.log_probs),
                lengths=fn(o.lengths),
                logvar=None if o.logvar is None else fn(o.logvar),
                hidden={b: fn(h) for b, h in o.hidden.items()},
            )
            for o in self.outputs
        ]

    def pin_memory(self) -> CachedTeacherBatch:
        """Page-locked copies (the DataLoader calls this with ``pin_memory: true``), for asynchronous copies."""
        return CachedTeacherBatch(self._map(torch.Tensor.pin_memory))

    def on_device(self, device: torch.device | str) -> list[TeacherOutputs]:
        """The outputs on ``device`` (Lightning has usually moved them already).

        Copies from pinned memory are asynchronous (``non_blocking``): the step does not wait for them.
        """
        device = torch.device(device)
        if all(o.log_probs.device == device for o in self.outputs):
            return list(self.outputs)
        return self._map(lambda t: t.to(device, non_blocking=t.is_pinned()))


class CachedTeacherCollate:
    """The ``collate_fn`` of a distillation training loader: NeMo's batch, named, with every teacher's cached outputs.

    Makes an :class:`~nemo_tl.data.batches.AudioTextBatch` whose ``sample_ids``, ``manifest_ids`` (of a
    mixed loader) and ``teacher`` (a :class:`CachedTeacherBatch`) are filled, from what the loader
    draws: a list of NeMo samples that carry their sample id (``return_sample_id``), or, from a mixed
    loader (``mixed=True``), the ``(samples, manifest_ids)`` of a
    :class:`~nemo_tl.data.mixing.MixedDataset`. Reading and padding the cache happens in the
    DataLoader's workers, in parallel with training and prefetched, and Lightning moves the outputs
    to the device with the batch.

    Args:
        collate_fn: NeMo's collate function of the datasets.
        datasets: the dataset of each manifest index (one unless mixed).
        directories: one cache directory per teacher; read as batches are drawn, so the caches may
            be built (or checked) after the loader.
        mixed: the loader draws ``(samples, manifest_ids)`` pairs.
    """

    def __init__(
        self, collate_fn: Any, datasets: Sequence[Any], directories: Sequence[str], *, mixed: bool = False
    ) -> None:
        self.collate_fn, self.datasets, self.directories = collate_fn, list(datasets), list(directories)
        self.mixed = mixed

    def __call__(self, item: Any) -> AudioTextBatch:
        batch = named_batch(self.collate_fn, item, mixed=self.mixed)
        if batch.sample_ids is None:
            raise ValueError("the datasets of a teacher-cache loader must return sample ids (return_sample_id)")
        keys = utterance_keys(self.datasets, batch.sample_ids, batch.manifest_ids)
        return batch._replace(teacher=CachedTeacherBatch([read_entries(d, keys) for d in self.directories]))


def cached_teacher_loader(
    loader: torch.utils.data.DataLoader, directories: Sequence[str], where: str = "model.distillation.cache"
) -> torch.utils.data.DataLoader:
    """``loader`` (NeMo's, or a mixed one) drawing the same batches through a :class:`CachedTeacherCollate`.

    Its datasets must return sample ids (``return_sample_id: true``). One NeMo dataset that joins
    several (``is_concat``) is an InputError: its batches do not say which one each utterance is of.
    """
    datasets = utterance_datasets(loader.dataset, where)
    mixed = isinstance(loader.dataset, MixedDataset)
    if len(datasets) > 1 and not mixed:
        raise input_error(
            f"the training data joins {len(datasets)} datasets, but the batches do not say which one each "
            "utterance comes from",
            where="model.train_ds",
            fix="join several manifests with train_ds.mixing (nemo_tl's mixed loader), or set cache: null",
        )
    collate = CachedTeacherCollate(datasets[0].collate_fn, datasets, directories, mixed=mixed)
    return with_collate(loader, collate)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m nemo_tl.distill.cache TEACHER MANIFEST [MANIFEST ...] --out DIR``."""
    parser = argparse.ArgumentParser(
        prog="python -m nemo_tl.distill.cache",
        description="Compute a teacher's outputs on every utterance of NeMo manifests, for offline KD "
        "(model.distillation.cache).",
    )
    parser.add_argument("teacher", help="teacher .nemo file or NeMo pretrained model name")
    parser.add_argument("manifests", nargs="+", help="NeMo JSON-lines manifest(s), as in model.train_ds")
    parser.add_argument("--out", required=True, help="cache directory (with several teachers: DIR/teacher_<k>)")
    parser.add_argument("--hidden-blocks", type=int, nargs="*", default=[], help="teacher encoder blocks to store")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sample-rate", type=int, default=None, help="default: the teacher's")
    parser.add_argument("--trim-silence", action="store_true", help="as train_ds.trim_silence")
    parser.add_argument("--device", default=None, help="e.g. cuda; default: cuda if available")
    args = parser.parse_args(argv)

    import nemo_tl  # noqa: F401  (registers the nemo_tl target prefix for teachers written by nemo_tl)
    from nemo_tl.data.validate import check_manifests
    from nemo_tl.transfer.base import load_base_model
    from nemo_tl.utils.training import quiet_restore_logs

    quiet_restore_logs()

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        teacher = load_base_model(args.teacher, what="teacher", where="TEACHER")
        # Every line first: a bad one would otherwise stop the build partway, in NeMo's loader.
        check_manifests(
            args.manifests,
            labels=list(teacher.decoder.vocabulary),
            sample_rate=args.sample_rate or teacher.cfg.get("sample_rate"),
            where="MANIFEST",
        )
        cache = build_cache(
            teacher,
            args.manifests,
            args.out,
            sample_rate=args.sample_rate,
            trim_silence=args.trim_silence,
            hidden_blocks=args.hidden_blocks,
            batch_size=args.batch_size,
            device=device,
            where="--out",
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"teacher cache ready: {cache.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
