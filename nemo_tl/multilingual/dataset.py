"""The language-tagged dataset of the multilingual RNN-T: every manifest line tokenized with its own language.

Batches are :class:`~nemo_tl.data.batches.LanguageBatch` (named fields, the language in ``lang_ids``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from nemo.collections.asr.parts.preprocessing.perturb import process_augmentations
from nemo.collections.common.parts.preprocessing.parsers import make_parser
from omegaconf import DictConfig, OmegaConf, open_dict

from nemo_tl.compat import AudioTextDataset, speech_collate_fn
from nemo_tl.data.batches import LanguageBatch
from nemo_tl.data.frames import model_encoder_frames
from nemo_tl.data.manifest import flatten_manifest_filepath
from nemo_tl.data.spec_cutout import check_spec_cutout
from nemo_tl.data.validate import check_dataset_config

__all__ = [
    "LanguageAudioToCharDataset",
    "append_language_onehot",
    "concatenated_loader",
    "language_dataloader",
    "language_dataset",
    "language_groups",
    "language_rows",
    "per_manifest_loader",
]


class _LanguageCharParser:
    """NeMo char parser per language: ``parser(text, lang)`` → that language's label ids.

    Marked ``is_aggregate`` so that NeMo's ``ASRAudioText`` passes each line's ``lang``.
    """

    is_aggregate = True

    def __init__(self, vocabularies: Mapping[str, Sequence[str]], normalize: bool = False):
        self._parsers = {
            lang: make_parser(labels=list(labels), name="base", unk_id=-1, blank_id=-1, do_normalize=normalize)
            for lang, labels in vocabularies.items()
        }

    def __call__(self, text: str, lang: str) -> list[int] | None:
        return self._parsers[lang](text)


class LanguageAudioToCharDataset(AudioTextDataset):
    """NeMo's char dataset, tokenizing each line with its language's labels and returning its language.

    Items are NeMo's ``(audio, audio_len, tokens, tokens_len)`` plus the language index (its
    position in ``languages``); batches are :class:`~nemo_tl.data.batches.LanguageBatch`
    ``(audio, audio_lens, tokens, token_lens, lang_ids)``.

    Args:
        manifest_filepath: manifest(s); every line has ``lang``.
        vocabularies: ``{lang: labels}`` in LID order. For the union softmax (vanilla/onehot)
            pass the union labels under every language.
        sample_rate, max_duration, min_duration, trim, normalize: as NeMo's AudioToCharDataset.
    """

    def __init__(
        self,
        manifest_filepath: str | list[str],
        vocabularies: Mapping[str, Sequence[str]],
        sample_rate: int,
        max_duration: float | None = None,
        min_duration: float | None = None,
        trim: bool = False,
        normalize: bool = False,
        **kwargs: Any,
    ):
        self.lang_index = {lang: i for i, lang in enumerate(vocabularies)}
        super().__init__(
            manifest_filepath=manifest_filepath,
            parser=_LanguageCharParser(vocabularies, normalize=normalize),
            sample_rate=sample_rate,
            max_duration=max_duration,
            min_duration=min_duration,
            trim=trim,
            **kwargs,
        )

    def _process_sample(self, index: int):
        lang = self.manifest_processor.collection[index].lang
        return (*super()._process_sample(index), torch.tensor(self.lang_index[lang], dtype=torch.long))

    def _collate_fn(self, batch) -> LanguageBatch:
        base = speech_collate_fn([b[:-1] for b in batch], pad_id=self.manifest_processor.pad_id)
        return LanguageBatch(*base, lang_ids=torch.stack([b[-1] for b in batch]))

    def collate_fn(self, batch):
        return self._collate_fn(batch)

    @property
    def hours(self) -> float:
        """Total audio duration in hours (the default mixing weight)."""
        return sum(s.duration or 0.0 for s in self.manifest_processor.collection) / 3600.0


def language_dataset(
    config: DictConfig, vocabularies: Mapping[str, Sequence[str]], sample_rate: int, augmentor: Any = None
) -> LanguageAudioToCharDataset:
    """The dataset of one dataset section (``manifest_filepath``, ``max_duration``, ...; NeMo's keys)."""
    return LanguageAudioToCharDataset(
        manifest_filepath=config.manifest_filepath,
        vocabularies=vocabularies,
        sample_rate=config.get("sample_rate") or sample_rate,
        max_duration=config.get("max_duration"),
        min_duration=config.get("min_duration"),
        trim=config.get("trim_silence", False),
        normalize=config.get("normalize_transcripts", False),
        augmentor=augmentor,
    )


def concatenated_loader(
    datasets: Sequence[LanguageAudioToCharDataset], config: DictConfig
) -> torch.utils.data.DataLoader:
    """One loader over the datasets concatenated (batches may mix languages), with NeMo's loader keys."""
    dataset = datasets[0] if len(datasets) == 1 else torch.utils.data.ConcatDataset(datasets)
    return torch.utils.data.DataLoader(
        dataset=dataset,
        batch_size=config["batch_size"],
        collate_fn=datasets[0].collate_fn,
        drop_last=config.get("drop_last", False),
        shuffle=config.get("shuffle", False),
        num_workers=config.get("num_workers", 0),
        pin_memory=config.get("pin_memory", False),
    )


def language_dataloader(model: Any, config: DictConfig | dict | None) -> torch.utils.data.DataLoader | None:
    """The loader of one dataset section of a ``MultiSoftmaxRNNTModel`` (None without ``manifest_filepath``).

    Every line is checked first against its own language's labels and the encoder's frames (InputError
    naming file:line): RNN-T needs one frame, and with an auxiliary CTC head (``model.aux_ctc``) a
    transcript must fit CTC (one frame per label, one more between repeated labels; else NeMo's CTC loss
    is 0 for it, silently). Then one dataset per manifest (:func:`per_manifest_loader`) or, with
    ``mixing``, ManifestDataMixin's mixed loader over them.
    """
    if config is None or not config.get("manifest_filepath"):
        return None
    if not isinstance(config, DictConfig):
        config = OmegaConf.create(dict(config))
    config = check_dataset_config(
        config,
        labels=model.vocabularies,
        languages=model.languages,
        sample_rate=config.get("sample_rate") or model.cfg.sample_rate,
        section=model._dataset_section,
        parser="base",  # the per-language parsers of LanguageAudioToCharDataset
        # with model.aux_ctc counted as CTC: its head sees union ids, the check per-language ids, a 1:1 map
        # (repeats count the same)
        frames=model_encoder_frames(model),
    )
    check_spec_cutout(config, model.cfg, model._dataset_section)  # train_ds batches too short for SpecCutout
    if config.get("mixing") is not None:
        return model._setup_mixed_dataloader(config)
    return per_manifest_loader(config, model._manifest_dataset, model.global_rank, model.world_size)


def per_manifest_loader(
    config: DictConfig,
    make_dataset: Callable[[DictConfig, Any], LanguageAudioToCharDataset],
    global_rank: int = 0,
    world_size: int = 1,
) -> torch.utils.data.DataLoader:
    """One dataset per manifest of ``config`` (``make_dataset(section, augmentor)``), concatenated in one loader."""
    augmentor = None
    if config.get("augmentor") is not None:
        augmentor = process_augmentations(config.augmentor, global_rank=global_rank, world_size=world_size)
    datasets = []
    for path in flatten_manifest_filepath(config.manifest_filepath):
        one = config.copy()
        with open_dict(one):
            one.manifest_filepath = path
        datasets.append(make_dataset(one, augmentor))
    return concatenated_loader(datasets, config)


def language_rows(lang_ids: torch.Tensor, languages: Sequence[str]) -> Iterator[tuple[str, torch.Tensor | None]]:
    """Yield ``(lang, rows)`` per language present in lang_ids (B,); ``rows`` is None when it is the whole batch."""
    present = torch.unique(lang_ids).tolist()
    if len(present) == 1:
        yield languages[present[0]], None
        return
    for i in present:
        yield languages[i], (lang_ids == i).nonzero(as_tuple=True)[0]


def language_groups(
    lang_ids: torch.Tensor,
    languages: Sequence[str] | None,
    encoded: torch.Tensor,
    encoded_len: torch.Tensor,
    transcript: torch.Tensor,
    transcript_len: torch.Tensor,
) -> Iterator[tuple[str | None, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(lang, encoded, encoded_len, transcript, transcript_len)`` per language in the batch.

    Shapes: lang_ids (B,), encoded (B, D, T), encoded_len (B,), transcript (B, U), transcript_len (B,).
    ``languages`` None (the union-softmax baselines): the whole batch, with ``lang`` None. A language's
    transcripts are cropped to its longest one.
    """
    if languages is None:
        yield None, encoded, encoded_len, transcript, transcript_len
        return
    for lang, rows in language_rows(lang_ids, languages):
        if rows is None:
            yield lang, encoded, encoded_len, transcript, transcript_len
        else:
            tr_len = transcript_len[rows]
            tr = transcript[rows][:, : max(int(tr_len.max()), 1)]
            yield lang, encoded[rows], encoded_len[rows], tr, tr_len


def append_language_onehot(features: torch.Tensor, lang_ids: torch.Tensor, num_languages: int) -> torch.Tensor:
    """Append the language one-hot to every frame: (B, D, T) → (B, D + L, T) (the ``onehot`` baseline)."""
    onehot = torch.nn.functional.one_hot(lang_ids.long(), num_languages).to(features.dtype)  # (B, L)
    return torch.cat([features, onehot.unsqueeze(-1).expand(-1, -1, features.shape[-1])], dim=1)
