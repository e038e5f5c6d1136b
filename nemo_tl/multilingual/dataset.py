"""The language-tagged dataset of the multilingual RNN-T: every manifest line tokenized with its own language.

Batches are :class:`~nemo_tl.data.batches.LanguageBatch` (named fields, the language in ``lang_ids``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from nemo.collections.common.parts.preprocessing.parsers import make_parser
from omegaconf import DictConfig

from nemo_tl.compat import AudioTextDataset, speech_collate_fn
from nemo_tl.data.batches import LanguageBatch

__all__ = ["LanguageAudioToCharDataset", "append_language_onehot", "language_dataset", "concatenated_loader"]


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


def append_language_onehot(features: torch.Tensor, lang_ids: torch.Tensor, num_languages: int) -> torch.Tensor:
    """Append the language one-hot to every frame: (B, D, T) → (B, D + L, T) (the ``onehot`` baseline)."""
    onehot = torch.nn.functional.one_hot(lang_ids.long(), num_languages).to(features.dtype)  # (B, L)
    return torch.cat([features, onehot.unsqueeze(-1).expand(-1, -1, features.shape[-1])], dim=1)
