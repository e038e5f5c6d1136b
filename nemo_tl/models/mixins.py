"""Mixed-manifest training data for every nemo_tl model: :class:`ManifestDataMixin`.

Every nemo_tl model lists :class:`ManifestDataMixin` before its NeMo class in its bases (``class
TransferCTCModel(..., ManifestDataMixin, EncDecCTCModel)``), so that its hooks run before NeMo's
and hand over to them with ``super()``:

- ``_setup_dataloader_from_config`` (used by NeMo's ``setup_training_data`` /
  ``setup_validation_data`` / ``setup_test_data``): checks the manifests with
  :func:`nemo_tl.data.validate.check_dataset_config` (with the model's encoder frames, so
  transcripts its audio cannot align are found) and, for ``train_ds``,
  :func:`nemo_tl.data.spec_cutout.check_spec_cutout` (batches too short for NeMo's SpecCutout),
  then builds the mixed loader of
  :mod:`nemo_tl.data.mixing` when the config has ``mixing``, else NeMo's own loader.
- ``setup_multiple_validation_data`` / ``setup_multiple_test_data``: NeMo gives one loader per
  manifest of a ``manifest_filepath`` list and logs each under a name (``validation_ds.name`` when
  given, else the manifest stem, via ``model_utils.parse_dataset_as_name``: ``src_dev.json`` →
  ``src_dev_``). The first set logs ``val_wer`` and ``{name}val_wer``, the others
  ``{name}val_wer`` (e.g. ``src_dev_val_wer``). NeMo only warns when two sets share a name; here it
  is an InputError, raised before any loader is built. ``mixing`` there is an InputError too.
- ``setup``: after NeMo's, rebuilds a mixed loader that was made before the model had its DDP
  trainer (its rank / world size differ from the trainer's), so ranks never share batches.
- ``on_save_checkpoint`` / ``on_load_checkpoint``: the mixed sampler's position (epoch and
  batches trained in it) travels in the Lightning checkpoint under :data:`CHECKPOINT_KEY`, so a
  mid-epoch resume continues the epoch's sequence.

The other training-time pieces (non-finite step guard, RNG state for an exact resume, atomic
saves) are in :mod:`nemo_tl.training`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from nemo_tl.compat import attached_trainer, batches_trained_this_epoch
from nemo_tl.data.batches import utterance_ids
from nemo_tl.data.frames import model_encoder_frames
from nemo_tl.data.mixing import MixedBatchSampler, MixedDataset, build_mixed_dataloader
from nemo_tl.data.spec_cutout import check_spec_cutout
from nemo_tl.data.validate import check_dataset_config
from nemo_tl.errors import input_error

__all__ = ["CHECKPOINT_KEY", "ManifestDataMixin", "check_unique_dataset_names"]

CHECKPOINT_KEY = "nemo_tl_mixing"


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


class ManifestDataMixin:
    """Manifest checks, mixed-manifest loading and its resume state; put before the NeMo model class.

    Mixed training batches are NeMo's tuples. A model whose batches carry more (sample and manifest
    ids, e.g. the distillation model's) builds them by name: :mod:`nemo_tl.data.batches`.
    """

    _dataset_section: str | None = None
    _pending_mixing_state: dict[str, Any] | None = None

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
        """The manifest checks of :mod:`nemo_tl.data.validate`; may return a copy reading filtered manifests."""
        if self._dataset_section is None or config.get("do_transcribe") or not config.get("manifest_filepath"):
            return config  # transcribe() and other temporary loaders are not validated
        # A subword model's cfg.labels (NeMo's RNN-T BPE sets it) lists tokenizer pieces, not characters.
        subword = getattr(self, "tokenizer", None) is not None
        labels = None if subword else config.get("labels") or self.cfg.get("labels")
        languages = self.cfg.get("languages")
        if languages is not None:
            languages = list(languages.keys()) if isinstance(languages, (Mapping, DictConfig)) else list(languages)
        config = check_dataset_config(
            config,
            labels=list(labels) if labels is not None else None,
            languages=languages,
            sample_rate=config.get("sample_rate") or self.cfg.get("sample_rate"),
            section=self._dataset_section,
            frames=model_encoder_frames(self),  # transcripts the encoder's frames cannot align
            tokenizer=getattr(self, "tokenizer", None),  # a subword model: transcripts it would encode with <unk>
        )
        check_spec_cutout(config, self.cfg, self._dataset_section)  # batches too short for NeMo's SpecCutout
        return config

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
            section=self._dataset_section or "train_ds",
        )
        if self._pending_mixing_state is not None:
            loader.sampler.load_state_dict(self._pending_mixing_state)
            self._pending_mixing_state = None
        return loader

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = attached_trainer(self)
        if trainer is not None:
            return int(trainer.global_rank), int(trainer.world_size)
        return int(self.global_rank), int(self.world_size)

    def setup(self, stage: str | None = None) -> None:
        """NeMo's deferred set-up; then rebuild a mixed loader made before the trainer knew the DDP world."""
        super().setup(stage)
        sampler = self.mixed_sampler
        if sampler is None or attached_trainer(self) is None or stage not in (None, "fit"):
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

    def _batch_audio_files(self, batch: Any) -> list[str] | None:
        """The audio file of each row of a training ``batch`` that carries NeMo sample ids, else None.

        Sample ids and, from a mixed loader, manifest ids are read by name
        (:func:`~nemo_tl.data.batches.utterance_ids`; NeMo's plain tuple: its ``return_sample_id``).
        """
        sample_ids, manifest_ids = utterance_ids(batch)
        dataset = getattr(getattr(self, "_train_dl", None), "dataset", None)
        datasets = list(dataset.datasets) if isinstance(dataset, MixedDataset) else [dataset]
        if sample_ids is None or (len(datasets) > 1 and manifest_ids is None):
            return None
        if not all(getattr(d, "return_sample_id", False) and hasattr(d, "get_manifest_sample") for d in datasets):
            return None
        ids = sample_ids.tolist()
        manifests = [0] * len(ids) if manifest_ids is None else manifest_ids.tolist()
        return [datasets[m].get_manifest_sample(i).audio_file for m, i in zip(manifests, ids)]

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

    # -- the sampler's position in checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        sampler = self.mixed_sampler
        if sampler is not None:
            done = batches_trained_this_epoch(attached_trainer(self))  # None without a fit loop
            checkpoint[CHECKPOINT_KEY] = sampler.state_dict(batches_done=done)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            return
        sampler = self.mixed_sampler
        if sampler is not None:
            sampler.load_state_dict(state)
        else:
            self._pending_mixing_state = state  # applied when the mixed loader is built
