"""What every nemo_tl model shares: manifest validation, mixed-manifest loading, resume, NaN skipping, safe saves.

Every nemo_tl model lists :class:`ManifestDataMixin` FIRST in its bases (``class
TransferCTCModel(ManifestDataMixin, EncDecCTCModel)``), so that its hooks run before NeMo's and
hand over to them with ``super()``:

- ``_setup_dataloader_from_config`` (used by NeMo's ``setup_training_data`` /
  ``setup_validation_data`` / ``setup_test_data``): checks the manifests with
  :func:`nemo_tl.data.validate.check_dataset_config` (when that module exists; with the model's
  encoder frames, so transcripts its audio cannot align are found), then builds the mixed loader
  of :mod:`nemo_tl.data.mixing` when the config has ``mixing``, else NeMo's own loader.
- ``setup_multiple_validation_data`` / ``setup_multiple_test_data``: NeMo gives one loader per
  manifest of a ``manifest_filepath`` list and logs each under a name (``validation_ds.name`` when
  given, else the manifest stem, via ``model_utils.parse_dataset_as_name``: ``src_dev.json`` →
  ``src_dev_``). The first set logs ``val_wer`` and ``{name}val_wer``, the others
  ``{name}val_wer`` (e.g. ``src_dev_val_wer``). NeMo only warns when two sets share a name; here it
  is an InputError, raised before any loader is built. ``mixing`` there is an InputError too.
- ``setup``: after NeMo's, rebuilds a mixed loader that was made before the model had its DDP
  trainer (its rank / world size differ from the trainer's), so ranks never share batches.
- ``on_save_checkpoint`` / ``on_load_checkpoint``: the mixed sampler's position (epoch and
  batches trained in it) travels in the Lightning checkpoint under ``"nemo_tl_mixing"``, so a
  mid-epoch resume continues the epoch's sequence; the RNG states of torch, numpy and ``random``
  (dither, spec_augment, dropout) of every rank travel under ``"nemo_tl_rng"`` and are put back
  at the first training batch after the resume, so a resumed CPU run repeats an uninterrupted one.
- ``training_step`` (also a ``training_step`` that a subclass defines, wrapped by
  ``__init_subclass__``): a NaN or Inf loss skips the step: the step returns a stand-in loss
  that reaches no parameter, so no gradient exists and the optimizer leaves every weight as it
  was (Lightning refuses a None from ``training_step`` under DDP). The decision is summed over
  DDP ranks so every rank skips together (no rank waits for another's gradients). Warned about
  and counted in ``skipped_nonfinite_steps`` (logged); the warning names the batch's utterances
  whose audio holds NaN/Inf (their files when the batch carries sample ids).
- ``restore_from``: InputError naming the file when it is not a complete .nemo archive or holds
  a model of another class.
- ``save_to``: atomic (temporary file beside the target, then rename), so a run killed while
  saving keeps the previous ``.nemo``; a read-only target is refused (InputError), as NeMo's own
  ``save_to`` refuses it, and stale temporary files of killed saves are removed. ``setup`` gives
  the trainer an :class:`~nemo_tl.utils.checkpoint_io.AtomicCheckpointIO` when it uses
  Lightning's default one.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from nemo_tl.data.frames import model_encoder_frames
from nemo_tl.data.mixing import MixedBatchSampler, MixedDataset, build_mixed_dataloader
from nemo_tl.errors import input_error
from nemo_tl.utils.atomic import atomic_path
from nemo_tl.utils.checkpoint_io import use_atomic_checkpoint_io
from nemo_tl.utils.nemo_file import check_nemo_file

CHECKPOINT_KEY = "nemo_tl_mixing"
RNG_CHECKPOINT_KEY = "nemo_tl_rng"
SKIPPED_CHECKPOINT_KEY = "nemo_tl_skipped_nonfinite_steps"
SKIPPED_LOG_KEY = "skipped_nonfinite_steps"


def _validator():
    """``nemo_tl.data.validate.check_dataset_config`` or None while that module does not exist."""
    try:
        module = importlib.import_module("nemo_tl.data.validate")
    except ModuleNotFoundError as e:
        if e.name != "nemo_tl.data.validate":
            raise
        return None
    return getattr(module, "check_dataset_config", None)


def check_unique_dataset_names(config: Mapping, section: str) -> list[str]:
    """The names NeMo logs the sets of ``config`` under; InputError when two are the same.

    Uses NeMo's own naming (``model_utils.parse_dataset_as_name``): ``config.name`` when given,
    else each manifest's file stem, with ``-`` → ``_``, ``manifest``/``dataset`` removed, ``_`` appended.
    """
    from nemo.utils.model_utils import parse_dataset_as_name

    paths = config.get("manifest_filepath")
    if not isinstance(paths, (list, tuple, ListConfig)) or len(paths) < 2:
        return []
    if any(isinstance(p, (Mapping, list, tuple, ListConfig)) for p in paths):
        return []  # nested configs / bucketed lists: NeMo names them itself
    given = config.get("name")
    where = f"{section}.name" if given else f"{section}.manifest_filepath"
    if isinstance(given, str):
        raise input_error(
            f"one name for {len(paths)} manifests", where=where, fix=f"give a list, e.g. {section}.name=[tgt,src]"
        )
    sources = list(given) if isinstance(given, (list, tuple, ListConfig)) else list(paths)
    if given and len(sources) != len(paths):
        raise input_error(
            f"{len(sources)} names for {len(paths)} manifests", where=f"{section}.name", fix="give one name each"
        )
    try:
        names = [parse_dataset_as_name(str(s)) for s in sources]
    except ValueError as e:
        raise input_error(str(e).splitlines()[0], where=where, fix=f"rename the file or set {section}.name") from None
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise input_error(
                f"sets {seen[name]} ({sources[seen[name]]}) and {i} ({sources[i]}) would both log as "
                f"'{name}val_wer'; the second would overwrite the first",
                where=where,
                fix=f"give distinct {section}.name values, e.g. name=[target_dev,source_dev]",
            )
        seen[name] = i
    return names


def _rng_states() -> dict[str, Any]:
    """This process's CPU RNG states: torch, numpy and python ``random``."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_states(states: Mapping[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])


def skip_nonfinite_loss(training_step: Callable) -> Callable:
    """Wrap a LightningModule ``training_step``: a NaN/Inf loss on any rank skips the step on every rank.

    The model must have :meth:`ManifestDataMixin._nonfinite_guard`. Nested wrapped calls
    (a wrapped step calling a wrapped ``super().training_step``) are checked once, at the outside.
    """
    if getattr(training_step, "_nemo_tl_guarded", False):
        return training_step

    @functools.wraps(training_step)
    def guarded(self, *args, **kwargs):
        if self.__dict__.get("_nemo_tl_in_step", False):
            return training_step(self, *args, **kwargs)
        self.__dict__["_nemo_tl_in_step"] = True
        statistics = self._batchnorm_statistics()
        try:
            output = training_step(self, *args, **kwargs)
        finally:
            self.__dict__["_nemo_tl_in_step"] = False
        return self._nonfinite_guard(output, statistics, batch=args[0] if args else kwargs.get("batch"))

    guarded._nemo_tl_guarded = True
    return guarded


class ManifestDataMixin:
    """Put before the NeMo model class in the bases of every nemo_tl model.

    Class attribute ``mixing_returns_manifest_index``: when True, mixed training batches end with
    a (B,) int64 tensor of manifest indices (see :mod:`nemo_tl.data.mixing`); the model's
    ``training_step`` must then expect it.
    """

    mixing_returns_manifest_index: bool = False
    _dataset_section: str | None = None
    _skipped_nonfinite_steps: int = 0
    _pending_rng_states: dict[str, Any] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        step = cls.__dict__.get("training_step")
        if step is not None:
            cls.training_step = skip_nonfinite_loss(step)

    # -- numerical faults
    @skip_nonfinite_loss
    def training_step(self, *args: Any, **kwargs: Any):
        return super().training_step(*args, **kwargs)

    @property
    def skipped_nonfinite_steps(self) -> int:
        """Training steps skipped so far because the loss was NaN or Inf (kept across resume)."""
        return self._skipped_nonfinite_steps

    def _batchnorm_statistics(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(buffer, copy) of every BatchNorm running statistic that the step's forward may move.

        The BatchNorm modules are found once (again after ``setup``) and copied with one fused
        ``_foreach_copy_`` into persistent tensors, so the guard costs a few kernels a step.
        """
        modules = self.__dict__.get("_nemo_tl_bn_modules")
        if modules is None:
            modules = [m for m in self.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
            self.__dict__["_nemo_tl_bn_modules"] = modules
        buffers = [
            buf
            for m in modules
            if m.training
            for buf in (m.running_mean, m.running_var, m.num_batches_tracked)
            if buf is not None
        ]
        if not buffers:
            return []
        copies = self.__dict__.get("_nemo_tl_bn_copies")
        if copies is None or len(copies) != len(buffers) or any(
            c.shape != b.shape or c.dtype != b.dtype or c.device != b.device for c, b in zip(copies, buffers)
        ):
            copies = [torch.empty_like(b) for b in buffers]
            self.__dict__["_nemo_tl_bn_copies"] = copies
        with torch.no_grad():
            torch._foreach_copy_(copies, buffers)
        return list(zip(buffers, copies))

    def _nonfinite_guard(
        self, output: Any, statistics: list[tuple[torch.Tensor, torch.Tensor]] = (), batch: Any = None
    ) -> Any:
        """``output`` of a training step, or a gradient-free stand-in when a loss is not finite on any rank.

        The stand-in ``{"loss": 0}`` is a fresh leaf: its backward touches no parameter, so every
        ``.grad`` stays None and the optimizer skips every parameter, and under DDP no rank
        launches a gradient all-reduce. A skipped step also puts back the BatchNorm statistics its
        forward moved (``statistics``), and its warning names the utterances of ``batch`` whose
        audio holds NaN/Inf (:meth:`_describe_skipped_batch`); a finite step does no extra work.
        """
        loss = output.get("loss") if isinstance(output, Mapping) else output
        if not isinstance(loss, torch.Tensor):
            return output
        bad = (~torch.isfinite(loss.detach())).any().to(torch.float32).reshape(1)
        trainer = getattr(self, "_trainer", None)
        if trainer is not None and trainer.world_size > 1:
            bad = trainer.strategy.reduce(bad, reduce_op="sum")
        skip = bool(bad.item() > 0)
        if skip:
            from nemo.utils import logging

            self._skipped_nonfinite_steps += 1
            with torch.no_grad():
                for buf, saved in statistics:
                    buf.copy_(saved)
            mine = ""
            if not torch.isfinite(loss.detach()).all():
                mine = f" (here: {loss.detach().flatten()[:1].item()}{self._describe_skipped_batch(batch)})"
            logging.warning(
                f"non-finite training loss at global step {getattr(trainer, 'global_step', '?')}{mine}: "
                f"step skipped on every rank, weights unchanged ({self._skipped_nonfinite_steps} skipped so far)"
            )
        if trainer is not None and (skip or trainer.global_step % max(1, trainer.log_every_n_steps) == 0):
            self.log(SKIPPED_LOG_KEY, float(self._skipped_nonfinite_steps), on_step=True, on_epoch=False,
                     batch_size=1)
        if skip:
            return {"loss": torch.zeros((), dtype=loss.dtype, device=loss.device, requires_grad=True)}
        return output

    def _describe_skipped_batch(self, batch: Any, limit: int = 8) -> str:
        """``"; NaN/Inf audio in row 2 (/data/x.wav)"``: the rows of ``batch`` (audio (B, T) first,
        lengths (B,) second) whose audio is not finite, by audio file where the batch carries NeMo
        sample ids, else by row and length."""
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            return ""
        signal, lengths = batch[0], batch[1]
        if not isinstance(signal, torch.Tensor) or not signal.is_floating_point() or signal.dim() < 2:
            return ""
        rows = (~torch.isfinite(signal.detach())).flatten(1).any(dim=1).nonzero().flatten().tolist()
        files = self._batch_audio_files(batch)
        if not rows:
            named = f": {', '.join(files[:limit])}{' ...' if len(files) > limit else ''}" if files else ""
            return f"; the batch's audio is finite{named}"
        if files:
            return f"; NaN/Inf audio in {', '.join(f'row {r} ({files[r]})' for r in rows[:limit])}"
        where = ", ".join(f"row {r} ({int(lengths[r])} samples)" for r in rows[:limit])
        return (
            f"; NaN/Inf audio in {where} of {signal.shape[0]}: `python -m nemo_tl.data.validate` on the training "
            "manifests names the files"
        )

    def _batch_audio_files(self, batch: Sequence[Any]) -> list[str] | None:
        """The audio file of each row of a training ``batch`` that carries NeMo sample ids, else None.

        Sample ids (``return_sample_id``) come fifth; a mixed batch ends with its manifest index.
        """
        dataset = getattr(getattr(self, "_train_dl", None), "dataset", None)
        mixed = isinstance(dataset, MixedDataset)
        datasets = list(dataset.datasets) if mixed else [dataset]
        if len(batch) < 5 or (mixed and not self.mixing_returns_manifest_index):
            return None
        if not all(getattr(d, "return_sample_id", False) and hasattr(d, "get_manifest_sample") for d in datasets):
            return None
        ids = batch[4].tolist()
        manifests = batch[-1].tolist() if mixed else [0] * len(ids)
        return [datasets[m].get_manifest_sample(i).audio_file for m, i in zip(manifests, ids)]

    # -- .nemo files
    @classmethod
    def restore_from(cls, restore_path: str, *args: Any, **kwargs: Any):
        """NeMo's ``restore_from``; InputError naming the file when it is not a complete .nemo archive
        (:func:`~nemo_tl.utils.nemo_file.check_nemo_file`) or holds a model of another class.

        NeMo itself raises ``tarfile.ReadError`` for a truncated file, and returns whatever class the
        archive names (a CTC model from ``MultiSoftmaxRNNTModel.restore_from``), which then fails far
        from the cause.
        """
        connector = kwargs.get("save_restore_connector", args[4] if len(args) > 4 else None)
        if "://" not in str(restore_path) and getattr(connector, "model_extracted_dir", None) is None:
            check_nemo_file(restore_path, what=f"{cls.__name__} file")
        instance = super().restore_from(restore_path, *args, **kwargs)
        if kwargs.get("return_config") or (len(args) >= 4 and args[3]) or isinstance(instance, cls):
            return instance
        held = type(instance).__name__
        raise input_error(
            f"the file holds a {type(instance).__module__}.{held}, not a {cls.__name__}",
            where=str(restore_path),
            fix=f"restore it with {held}.restore_from(...) or ASRModel.restore_from(...)",
        )

    # -- atomic saves
    def save_to(self, save_path: str) -> None:
        """NeMo's ``save_to`` into a temporary file beside ``save_path``, renamed onto it when complete.

        A read-only ``save_path`` or an unwritable directory is an InputError before anything is
        written (:func:`~nemo_tl.utils.atomic.check_writable`).
        """
        from nemo.utils.get_rank import is_global_rank_zero

        if not is_global_rank_zero():
            return super().save_to(save_path)
        with atomic_path(save_path) as tmp:
            super().save_to(tmp)

    # -- data loaders
    @contextmanager
    def _section(self, name: str) -> Iterator[None]:
        """Name the config section being set up, for error messages."""
        previous, self._dataset_section = self._dataset_section, name
        try:
            yield
        finally:
            self._dataset_section = previous

    def setup_training_data(self, train_data_config: DictConfig | dict | None) -> None:
        with self._section("train_ds"):
            super().setup_training_data(train_data_config)

    def setup_validation_data(self, val_data_config: DictConfig | dict | None) -> None:
        with self._section("validation_ds"):
            super().setup_validation_data(val_data_config)

    def setup_test_data(self, test_data_config: DictConfig | dict | None) -> None:
        with self._section("test_ds"):
            super().setup_test_data(test_data_config)

    def _setup_dataloader_from_config(self, config: DictConfig | dict | None):
        if config is None:
            return super()._setup_dataloader_from_config(config)
        if not isinstance(config, DictConfig):
            config = OmegaConf.create(dict(config))
        config = self._validated_dataset_config(config)
        if config.get("mixing") is not None:
            return self._setup_mixed_dataloader(config)
        return super()._setup_dataloader_from_config(config)

    def _validated_dataset_config(self, config: DictConfig) -> DictConfig:
        """Run the manifest checks of :mod:`nemo_tl.data.validate` (if present); may return filtered copies."""
        if self._dataset_section is None or config.get("do_transcribe") or not config.get("manifest_filepath"):
            return config  # transcribe() and other temporary loaders are not validated
        check = _validator()
        if check is None:
            return config
        model_cfg = self.cfg
        labels = config.get("labels") or model_cfg.get("labels")
        languages = model_cfg.get("languages")
        if isinstance(languages, (Mapping, DictConfig)):
            languages = list(languages.keys())
        elif languages is not None:
            languages = list(languages)
        extra = {}
        if self._dataset_section and "section" in inspect.signature(check).parameters:
            extra["section"] = self._dataset_section
        if "frames" in inspect.signature(check).parameters:
            extra["frames"] = model_encoder_frames(self)  # transcripts the encoder's frames cannot align
        checked = check(
            config,
            labels=list(labels) if labels is not None else None,
            languages=languages,
            sample_rate=config.get("sample_rate") or model_cfg.get("sample_rate"),
            **extra,
        )
        if checked is None:
            return config
        if config.get("mixing") is not None and checked.get("mixing") is None:
            checked = checked.copy()
            OmegaConf.set_struct(checked, False)
            checked.mixing = config.mixing
        return checked

    def _manifest_dataset(self, config: DictConfig, augmentor: Any = None) -> Dataset:
        """One NeMo dataset for one manifest: BPE when the model has a tokenizer, else characters.

        Override to build another dataset kind; it needs a ``collate_fn``.
        """
        from nemo.collections.asr.data import audio_to_text_dataset as factories

        tokenizer = getattr(self, "tokenizer", None)
        if tokenizer is not None:
            return factories.get_bpe_dataset(config=config, tokenizer=tokenizer, augmentor=augmentor)
        return factories.get_char_dataset(config=config, augmentor=augmentor)

    def _setup_mixed_dataloader(self, config: DictConfig) -> DataLoader:
        from nemo.collections.asr.data.audio_to_text_dataset import inject_dataloader_value_from_model_config
        from nemo.collections.asr.parts.preprocessing.perturb import process_augmentations

        inject_dataloader_value_from_model_config(self.cfg, config, key="sample_rate")
        if getattr(self, "tokenizer", None) is None:
            inject_dataloader_value_from_model_config(self.cfg, config, key="labels")
        rank, world = self._rank_and_world()
        augmentor = None
        if config.get("augmentor") is not None:
            augmentor = process_augmentations(config.augmentor, global_rank=rank, world_size=world)
        loader = build_mixed_dataloader(
            config,
            lambda one: self._manifest_dataset(one, augmentor),
            global_rank=rank,
            world_size=world,
            return_manifest_index=self.mixing_returns_manifest_index,
            section=self._dataset_section or "train_ds",
        )
        pending = getattr(self, "_pending_mixing_state", None)
        if pending is not None:
            loader.sampler.load_state_dict(pending)
            self._pending_mixing_state = None
        return loader

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = getattr(self, "_trainer", None)
        if trainer is not None:
            return int(trainer.global_rank), int(trainer.world_size)
        return int(self.global_rank), int(self.world_size)

    def setup(self, stage: str | None = None) -> None:
        """NeMo's deferred set-up; then rebuild a mixed loader made before the trainer knew the DDP world."""
        super().setup(stage)
        self.__dict__.pop("_nemo_tl_bn_modules", None)  # modules may have changed since the last fit
        if getattr(self, "_trainer", None) is not None:
            use_atomic_checkpoint_io(self._trainer)
        sampler = self.mixed_sampler
        if sampler is None or getattr(self, "_trainer", None) is None or stage not in (None, "fit"):
            return
        rank, world = self._rank_and_world()
        if (sampler.rank, sampler.num_replicas) != (rank, world):
            self.world_size = world
            self.setup_training_data(self.cfg.train_ds)

    @property
    def mixed_sampler(self) -> MixedBatchSampler | None:
        """The training loader's :class:`MixedBatchSampler`, or None when training data is not mixed."""
        sampler = getattr(getattr(self, "_train_dl", None), "sampler", None)
        return sampler if isinstance(sampler, MixedBatchSampler) else None

    # -- several validation / test sets
    def setup_multiple_validation_data(self, val_data_config: DictConfig | dict) -> None:
        self._check_eval_sets(val_data_config, "validation_ds")
        super().setup_multiple_validation_data(val_data_config)

    def setup_multiple_test_data(self, test_data_config: DictConfig | dict) -> None:
        self._check_eval_sets(test_data_config, "test_ds")
        super().setup_multiple_test_data(test_data_config)

    @staticmethod
    def _check_eval_sets(config: DictConfig | dict | None, section: str) -> None:
        if config is None:
            return
        if config.get("mixing") is not None:
            raise input_error(
                "`mixing` applies to train_ds only", where=f"{section}.mixing", fix=f"remove {section}.mixing"
            )
        check_unique_dataset_names(config, section)

    # -- checkpoints
    def _batches_trained_this_epoch(self) -> int | None:
        trainer = getattr(self, "_trainer", None)
        try:
            return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        except AttributeError:
            return None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        sampler = self.mixed_sampler
        if sampler is not None:
            checkpoint[CHECKPOINT_KEY] = sampler.state_dict(batches_done=self._batches_trained_this_epoch())
        checkpoint[SKIPPED_CHECKPOINT_KEY] = self._skipped_nonfinite_steps
        checkpoint[RNG_CHECKPOINT_KEY] = self._all_rank_rng_states()

    def _all_rank_rng_states(self) -> list[dict[str, Any]]:
        """Every rank's RNG states, by global rank (Lightning dumps checkpoints on all ranks)."""
        states = _rng_states()
        trainer = getattr(self, "_trainer", None)
        if trainer is None or trainer.world_size <= 1 or not torch.distributed.is_initialized():
            return [states]
        gathered: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, states)
        return gathered

    def on_train_batch_start(self, batch: Any, batch_idx: int, *args: Any) -> Any:
        if self._pending_rng_states is not None:
            # Set here, not in on_load_checkpoint: making the resumed epoch's loader iterator draws
            # from torch's RNG, which the uninterrupted run did at the start of the epoch.
            _set_rng_states(self._pending_rng_states)
            self._pending_rng_states = None
        return super().on_train_batch_start(batch, batch_idx, *args)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._skipped_nonfinite_steps = int(checkpoint.get(SKIPPED_CHECKPOINT_KEY, 0))
        ranks = checkpoint.get(RNG_CHECKPOINT_KEY)
        if ranks:
            rank, world = self._rank_and_world()
            # Same world size: each rank its own states; otherwise every rank takes rank 0's.
            self._pending_rng_states = ranks[rank] if len(ranks) == world else ranks[0]
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            return
        sampler = self.mixed_sampler
        if sampler is not None:
            sampler.load_state_dict(state)
        else:
            self._pending_mixing_state = state  # applied when the mixed loader is built
