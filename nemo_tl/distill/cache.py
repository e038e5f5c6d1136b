"""Offline knowledge distillation: teacher outputs computed once, reused every epoch.

Usage::

    python -m nemo_tl.distill.cache TEACHER.nemo MANIFEST.json [MORE.json ...] --out DIR \\
        [--hidden-blocks 2 4] [--batch-size 8]

or set ``model.distillation.cache: DIR`` and DistillCTCModel builds ``DIR/teacher_<k>`` for
each teacher k the first time (the command above builds one such directory).

A cache directory holds one ``.pt`` file per utterance (teacher log-probabilities (T, V+1),
log σ² (T, V+1) if the teacher has an uncertainty head, and the (D, T) outputs of the
requested encoder blocks), keyed by the manifest entry (audio file, offset, duration), and a
``fingerprint.json`` written last: the hash of the teacher's weights and vocabulary, its
preprocessor settings, the hash of every manifest's content, the audio loading settings and
the cached blocks. Training refuses a cache whose fingerprint does not match (InputError).

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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from nemo.collections.asr.data.audio_to_text import AudioToCharDataset
from nemo.collections.asr.models import ASRModel
from nemo.collections.asr.parts.preprocessing.perturb import AudioAugmentor
from omegaconf import DictConfig, OmegaConf

from nemo_tl.distill.teachers import TeacherOutputs, freeze_teacher, has_uncertainty_head, teacher_outputs
from nemo_tl.errors import input_error

__all__ = [
    "TeacherCache",
    "build_cache",
    "cache_fingerprint",
    "main",
    "manifest_list",
    "model_hash",
    "utterance_key",
]

FORMAT_VERSION = 1
FINGERPRINT = "fingerprint.json"


def utterance_key(sample: Any) -> str:
    """Cache key of a NeMo manifest entry (``dataset.get_manifest_sample(i)``): audio file, offset, duration."""
    text = f"{sample.audio_file}|{float(sample.offset or 0.0):.6f}|{sample.duration}"
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def model_hash(model: ASRModel) -> str:
    """sha256 of a model's vocabulary and weights (state_dict names, shapes and bytes)."""
    h = hashlib.sha256()
    h.update(json.dumps(list(model.decoder.vocabulary)).encode("utf-8"))
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


def manifest_list(value: Any) -> list[str]:
    """Manifest paths from a ``manifest_filepath`` value (a path, a comma-separated string or a list)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [p.strip() for p in value.split(",") if p.strip()]
    if isinstance(value, Iterable):
        return [p for item in value for p in manifest_list(item)]
    return [str(value)]


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def cache_fingerprint(
    teacher: ASRModel,
    manifests: Sequence[str],
    *,
    sample_rate: int,
    trim_silence: bool = False,
    hidden_blocks: Sequence[int] = (),
) -> dict[str, Any]:
    """What a cache depends on: teacher weights + vocabulary, preprocessor, manifests' content, audio loading."""
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
        "preprocessor": _plain(teacher.cfg.get("preprocessor")),
        "manifests": [{"path": os.path.abspath(p), "sha256": _file_hash(p)} for p in manifests],
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
    missing = set(expected["hidden_blocks"]) - set(found.get("hidden_blocks", []))
    if missing:
        diffs.append(f"the cached encoder blocks (missing {sorted(missing)})")
    return diffs


class TeacherCache:
    """One teacher's outputs on the utterances of some manifests, in ``directory``."""

    def __init__(self, directory: str, fingerprint: Mapping[str, Any]):
        self.directory = directory
        self.fingerprint = dict(fingerprint)

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
        with open(path, encoding="utf-8") as f:
            found = json.load(f)
        diffs = _differences(found, expected)
        if diffs:
            raise input_error(
                f"the teacher cache in {directory!r} was made for another setup: {', '.join(diffs)} differ(s)",
                where=where,
                fix="point the cache to a new directory (or delete this one) to rebuild it, or train with the "
                "teacher and manifests it was made from",
            )
        return cls(directory, found)

    @staticmethod
    def is_complete(directory: str) -> bool:
        return os.path.isfile(os.path.join(directory, FINGERPRINT))

    def _file(self, key: str) -> str:
        return os.path.join(self.directory, "utts", key[:2], f"{key}.pt")

    def read(self, keys: Sequence[str], device: torch.device | str = "cpu") -> TeacherOutputs:
        """The cached outputs of utterances ``keys``, padded into a batch (B, T, V+1) / (B, D, T)."""
        items = []
        for key in keys:
            path = self._file(key)
            if not os.path.isfile(path):
                raise input_error(
                    f"utterance {key} is not in the teacher cache {self.directory!r}",
                    where="model.distillation.cache",
                    fix="rebuild the cache from the training manifests",
                )
            items.append(torch.load(path, map_location="cpu", weights_only=True))
        lengths = torch.tensor([it["log_probs"].shape[0] for it in items], dtype=torch.long)

        def pad_time(tensors: list[torch.Tensor], time_dim: int) -> torch.Tensor:
            frames = max(t.shape[time_dim] for t in tensors)
            padded = [
                torch.nn.functional.pad(
                    t, (0, 0, 0, frames - t.shape[0]) if time_dim == 0 else (0, frames - t.shape[1])
                )
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
        os.replace(tmp, path)

    def finish(self) -> None:
        """Write the fingerprint, which marks the cache complete."""
        tmp = os.path.join(self.directory, f"{FINGERPRINT}.tmp{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.fingerprint, f, indent=1)
        os.replace(tmp, os.path.join(self.directory, FINGERPRINT))


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

    An existing complete cache is reused if its fingerprint matches and refused (InputError)
    if not; an incomplete one (an interrupted build) is completed over.

    Args:
        datasets: the NeMo audio-text datasets (e.g. the training set's, after its manifest
            checks and duration filters) whose utterances to cache; by default one
            AudioToCharDataset of ``manifests``. Audio perturbations are off while caching.
    """
    sample_rate = int(sample_rate or teacher.cfg.get("sample_rate", 16000))
    expected = cache_fingerprint(
        teacher, manifests, sample_rate=sample_rate, trim_silence=trim_silence, hidden_blocks=hidden_blocks
    )
    if TeacherCache.is_complete(directory):
        return TeacherCache.open(directory, expected, where=where)
    os.makedirs(directory, exist_ok=True)
    cache = TeacherCache(directory, expected)
    if datasets is None:
        datasets = [
            AudioToCharDataset(
                manifest_filepath=",".join(manifests),
                labels=list(teacher.decoder.vocabulary),
                sample_rate=sample_rate,
                trim=trim_silence,
            )
        ]
    freeze_teacher(teacher)
    if device is not None:
        teacher.to(device)
    device = next(teacher.parameters()).device
    for dataset in datasets:
        with _clean_samples(dataset):
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=batch_size, shuffle=False, collate_fn=dataset.collate_fn
            )
            for signal, signal_len, _, _, sample_ids in loader:
                outputs = teacher_outputs(teacher, signal.to(device), signal_len.to(device), hidden_blocks)
                for i, sample_id in enumerate(sample_ids.tolist()):
                    cache.write(utterance_key(dataset.get_manifest_sample(sample_id)), outputs, i)
    cache.finish()
    return cache


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
    from nemo_tl.transfer.base import load_base_model

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        teacher = load_base_model(args.teacher, what="teacher", where="TEACHER")
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


@dataclass
class CachedTeacherBatch:
    """The cached outputs of every teacher for one training batch, attached to it by the loader."""

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
    """A loader ``collate_fn`` that appends every teacher's cached outputs to the collated batch.

    Reading and padding the cache then happens in the DataLoader workers, in parallel with
    training and prefetched, and Lightning moves the outputs to the device with the batch.
    Batches must carry sample ids (index 4) and, when several datasets are joined, the
    manifest index of each utterance (index 5).
    """

    def __init__(self, collate_fn: Any, caches: Sequence[TeacherCache], datasets: Sequence[Any]):
        self.collate_fn, self.caches, self.datasets = collate_fn, list(caches), list(datasets)

    def __call__(self, samples: Any) -> tuple:
        batch = tuple(self.collate_fn(samples))
        sample_ids = batch[4].tolist()
        manifests = batch[5].tolist() if len(batch) > 5 else [0] * len(sample_ids)
        keys = [utterance_key(self.datasets[m].get_manifest_sample(i)) for i, m in zip(sample_ids, manifests)]
        return (*batch, CachedTeacherBatch([cache.read(keys) for cache in self.caches]))
