"""Multilingual RNN-T with language-specific softmaxes and an integrated LID head (Joshi et al. 2021).

:class:`MultiSoftmaxRNNTModel` is a NeMo :class:`EncDecRNNTModel` whose ``model.architecture`` picks
one of the paper's three models, trained from the same manifests with the same sampler:

- ``multisoftmax``: shared encoder and prediction network, per language an embedding, a joint and a
  softmax over that language's labels + blank (``language_specific_prediction: true``: the LSP
  variant, one prediction network per language);
- ``vanilla``: one softmax over the union of all languages' labels;
- ``onehot``: the union softmax, with the language one-hot appended to the acoustic features.

An optional LID head on the encoder output is trained with frame-level CE
(loss = RNN-T + ``lid.weight`` · CE) and drives LID-free decoding with early stopping
(:mod:`nemo_tl.decoding.lid_free`). Every manifest line carries ``lang``; batches are
:class:`~nemo_tl.data.batches.LanguageBatch` tuples, with each utterance's language index in ``lang_ids``.

The model holds construction, encoding, the losses, the Lightning steps and NeMo's hooks; the
capability's other pieces (config, dataset, per-language decodings, transcription and LID-free
decoding, DDP/BatchNorm and CUDA-graph policy, the pretrained start, the auxiliary CTC head,
extraction) are in :mod:`nemo_tl.multilingual`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Trainer
from nemo.collections.asr.models import ASRModel
from nemo.collections.asr.models.rnnt_models import EncDecRNNTModel
from nemo.collections.asr.parts.mixins import TranscribeConfig
from nemo.collections.asr.parts.submodules.rnnt_decoding import RNNTDecoding
from nemo.collections.asr.parts.utils.rnnt_utils import Hypothesis
from nemo.utils import model_utils
from omegaconf import DictConfig

from nemo_tl.compat import preprocessor_sample_rate
from nemo_tl.data.batches import LanguageBatch
from nemo_tl.decoding.stacked import StackedLanguageDecoding
from nemo_tl.errors import input_error
from nemo_tl.losses.lid import frame_lid_loss
from nemo_tl.models.mixins import ManifestDataMixin
from nemo_tl.modules.multisoftmax import LIDHead
from nemo_tl.multilingual import cuda_graphs
from nemo_tl.multilingual.aux_ctc import AuxCTCHead
from nemo_tl.multilingual.config import ARCHITECTURES, MultilingualConfig, prepare_multilingual_config
from nemo_tl.multilingual.dataset import (
    LanguageAudioToCharDataset,
    append_language_onehot,
    language_dataloader,
    language_dataset,
    language_groups,
)
from nemo_tl.multilingual.decoding import change_language_decodings, model_decodings, validation_metrics
from nemo_tl.multilingual.extraction import extract_language
from nemo_tl.multilingual.lid_free import stacked_decoding
from nemo_tl.multilingual.loss import language_rnnt_loss, language_rnnt_losses
from nemo_tl.multilingual.one_language_batches import FreezeBatchNormAfter, prepare_one_language_batches
from nemo_tl.multilingual.pretrained import (
    config_from_base,
    from_base_config,
    load_multilingual_base,
    nemo_init_sources,
    start_from_base,
)
from nemo_tl.multilingual.transcribe import (
    MultilingualTranscribeConfig,
    file_languages,
    transcribe_config,
    transcribe_forward,
    transcribe_hypotheses,
    transcribe_loader_config,
)
from nemo_tl.training import AtomicSaveMixin, ResumeRNGState, SkipNonFiniteStepMixin
from nemo_tl.transfer.freezing import freeze_encoder_blocks

__all__ = [
    "ARCHITECTURES",
    "LanguageAudioToCharDataset",
    "MultiSoftmaxRNNTModel",
    "MultilingualTranscribeConfig",
    "append_language_onehot",
    "prepare_multilingual_config",
]


class MultiSoftmaxRNNTModel(SkipNonFiniteStepMixin, AtomicSaveMixin, ManifestDataMixin, EncDecRNNTModel):
    """Multilingual RNN-T: multi-softmax (or vanilla / onehot baselines) with an integrated LID head.

    Config keys (besides NeMo's RNN-T keys): ``languages`` ({lang: {labels}}, order = LID index),
    ``architecture``, ``language_specific_prediction``, ``lid`` {enabled, weight},
    ``lid_free`` {min_frames (τ), threshold (s_th)}, ``aux_ctc`` {ctc_loss_weight}, ``transfer`` (a
    pretrained start: :meth:`from_base`). See ``conf/multisoftmax_rnnt.yaml``.

    ``base_model`` (keyword only): a loaded base to start from instead of ``transfer.base_model``.
    """

    def __init__(self, cfg: DictConfig, trainer: Trainer | None = None, *, base_model: ASRModel | None = None):
        cfg = model_utils.convert_model_config_to_dict_config(cfg)
        cfg = model_utils.maybe_update_config_version(cfg)
        self.multilingual = MultilingualConfig.from_model_config(cfg)  # read from here, validated once
        transfer = self.multilingual.transfer
        base = None
        if transfer is not None and not self._is_model_being_restored():  # a restored model has its weights
            spec = base_model if base_model is not None else transfer.base_model
            if spec is not None:
                base = load_multilingual_base(spec)
                cfg = config_from_base(cfg, base)
        cfg = self.multilingual.apply(cfg)
        super().__init__(cfg=cfg, trainer=trainer)
        self.lid_head = LIDHead(self.cfg.model_defaults.enc_hidden, len(self.languages)) if self.lid_enabled else None
        self.aux_ctc = None
        if self.multilingual.aux_ctc_weight > 0:
            self.aux_ctc = AuxCTCHead(
                self.cfg.model_defaults.enc_hidden, self.vocabularies, self.multilingual.union_labels,
                per_language_ids=self.is_multisoftmax,
            )
        if self.is_multisoftmax:
            loss_name, loss_kwargs = self.extract_rnnt_loss_cfg(self.cfg.get("loss", None))
            reduction = self.cfg.get("rnnt_reduction", "mean_batch")
            self.loss = language_rnnt_losses(self.vocabularies, loss_name, loss_kwargs, reduction)
            self.change_decoding_strategy(self.cfg.decoding, verbose=False)
        else:  # vanilla / onehot: the one decoding EncDecRNNTModel built
            self._limit_graphs_mode(self.decoding)
        self.transfer_report: dict[str, dict[str, int]] = {}
        if base is not None and not transfer.reinitialize:
            self.transfer_report = start_from_base(self, base, transfer)
        blocks = transfer.freeze_encoder_blocks if transfer is not None else 0
        self.frozen_blocks = freeze_encoder_blocks(self.encoder, blocks)

    @classmethod
    def from_base(
        cls,
        base: str | ASRModel,
        languages: Mapping[str, Any] | Sequence[str],
        *,
        architecture: str = "multisoftmax",
        vocabulary: str = "keep_shared",
        new_label_init: str = "zero",
        freeze_encoder_blocks: int = 0,
        reinitialize: bool = False,
        cfg: DictConfig | dict | None = None,
        trainer: Trainer | None = None,
    ) -> MultiSoftmaxRNNTModel:
        """A multilingual RNN-T whose preprocessor and encoder come from a pretrained NeMo ASR model.

        Args:
            base: a NeMo ASR model (CTC, RNN-T or hybrid; characters or subwords), a ``.nemo`` path or a
                pretrained name.
            languages: ``{lang: labels}`` (a list of characters or a language code) or language codes.
            architecture, vocabulary, new_label_init, freeze_encoder_blocks, reinitialize: ``model.architecture``
                and the ``model.transfer`` keys (:mod:`nemo_tl.multilingual.pretrained`).
            cfg: further ``model`` keys over ``conf/multisoftmax_rnnt.yaml``'s (``train_ds``, ``optim``, ...);
                its preprocessor and encoder come from the base (a ``preprocessor`` given here must match it).
        """
        base_model = load_multilingual_base(base)
        full = from_base_config(
            base, base_model, languages, architecture=architecture, vocabulary=vocabulary,
            new_label_init=new_label_init, freeze_encoder_blocks=freeze_encoder_blocks, reinitialize=reinitialize,
            cfg=cfg,
        )
        return cls(cfg=full, trainer=trainer, base_model=base_model)

    def maybe_init_from_pretrained_checkpoint(self, cfg: DictConfig, map_location: str = "cpu") -> None:
        """NeMo's ``init_from_nemo_model`` / ``init_from_pretrained_model`` with any NeMo ASR model as the source.

        Every source is loaded and checked first (:func:`nemo_tl.multilingual.pretrained.nemo_init_sources`:
        InputError for a missing file, a non-ASR model, another preprocessor, parameters of other shapes);
        then NeMo copies the weights, with its ``include`` / ``exclude`` handling.
        """
        with nemo_init_sources(self, cfg):
            super().maybe_init_from_pretrained_checkpoint(cfg, map_location=map_location)

    def configure_callbacks(self) -> list:
        """Every fit keeps the RNG states in its checkpoints (exact mid-epoch resume); BatchNorm freezes at its step."""
        callbacks: list = [ResumeRNGState()]
        if self.multilingual.freeze_batch_norm_after is not None:
            callbacks.append(FreezeBatchNormAfter(self.multilingual.freeze_batch_norm_after))
        return callbacks

    def setup(self, stage: str | None = None) -> None:
        """Under DDP, let the parameters of languages absent from a batch go unused; warn about BatchNorm."""
        prepare_one_language_batches(self, stage)
        super().setup(stage)

    # ---- properties -----------------------------------------------------------------------

    @property
    def languages(self) -> list[str]:
        """Language codes in LID order."""
        return self.multilingual.languages

    @property
    def vocabularies(self) -> dict[str, list[str]]:
        """``{lang: labels}`` in LID order."""
        return {lang: list(labels) for lang, labels in self.multilingual.vocabularies.items()}

    @property
    def architecture(self) -> str:
        return self.multilingual.architecture

    @property
    def is_multisoftmax(self) -> bool:
        return self.multilingual.architecture == "multisoftmax"

    @property
    def lid_enabled(self) -> bool:
        return self.multilingual.lid.enabled

    def language_parameters(self, lang: str) -> list[torch.nn.Parameter]:
        """The parameters only ``lang`` updates (embedding, joint, softmax; LSP: prediction network)."""
        if not self.is_multisoftmax:
            return []
        return self.decoder.language_parameters(lang) + self.joint.language_parameters(lang)

    # ---- decoding set-up ------------------------------------------------------------------

    def change_decoding_strategy(self, decoding_cfg: DictConfig | None = None, verbose: bool = True) -> None:
        """NeMo's decoding strategy change.

        Multi-softmax: one per language (:func:`nemo_tl.multilingual.decoding.change_language_decodings`).
        """
        if self.is_multisoftmax:
            change_language_decodings(self, decoding_cfg, verbose=verbose)
            return
        super().change_decoding_strategy(decoding_cfg, verbose=verbose)
        self._limit_graphs_mode(self.decoding)

    # ---- CUDA graphs (policy: nemo_tl.multilingual.cuda_graphs) ---------------------------

    def _decodings(self) -> list[RNNTDecoding]:
        """Every NeMo decoding the model holds: one per language (or the union one) and the batched LID-free one."""
        return model_decodings(self)

    def _limit_graphs_mode(self, decoding: RNNTDecoding) -> None:
        cuda_graphs.limit_graphs_mode(decoding, self.multilingual.cuda_graphs_mode)

    def maybe_enable_cuda_graphs(self, force_reinit: bool = False) -> bool:
        """NeMo's hook, for every decoder of the model; True if any decoder's state changed."""
        changed = self.disable_cuda_graphs() if force_reinit else False
        return cuda_graphs.enable_cuda_graphs(self._decodings(), self.multilingual.cuda_graphs_mode) or changed

    def disable_cuda_graphs(self) -> bool:
        """NeMo's hook, for every decoder of the model; True if any decoder's state changed."""
        return cuda_graphs.disable_cuda_graphs(self._decodings())

    def change_vocabulary(self, new_vocabulary: list[str], decoding_cfg: DictConfig | None = None) -> None:
        raise input_error(
            "a multilingual model's vocabulary is set per language",
            where="model.languages",
            fix="change model.languages and train a new model, or extract_language(lang) and change that",
        )

    # ---- data ----------------------------------------------------------------------------

    def _manifest_dataset(self, config: DictConfig, augmentor: Any = None) -> LanguageAudioToCharDataset:
        """The dataset of one manifest (used by the mixed loader of ManifestDataMixin, too)."""
        return language_dataset(config, self.multilingual.token_vocabularies, self.cfg.sample_rate, augmentor)

    def _setup_dataloader_from_config(self, config: DictConfig | dict | None):
        """Per-language datasets, every line checked first (:func:`~nemo_tl.multilingual.dataset.language_dataloader`)."""
        return language_dataloader(self, config)

    def _setup_transcribe_dataloader(self, config: dict) -> torch.utils.data.DataLoader:
        # transcribe() lists files without text or language: use NeMo's plain char loader for them.
        dl_config = transcribe_loader_config(config, preprocessor_sample_rate(self.preprocessor), self.cfg.labels)
        return EncDecRNNTModel._setup_dataloader_from_config(self, dl_config)

    # ---- forward pieces --------------------------------------------------------------------

    def encode(
        self, signal: torch.Tensor, signal_len: torch.Tensor, lang_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Shared encoder: audio (B, S) → encoded (B, D, T), lengths (B,).

        ``onehot`` appends the language one-hot after the preprocessor (and SpecAugment).
        """
        if self.architecture != "onehot":
            return self.forward(input_signal=signal, input_signal_length=signal_len)
        if lang_ids is None:
            raise input_error(
                "the onehot model needs the language of every utterance",
                where="transcribe(lang=...)",
                fix="pass lang=..., or use a multisoftmax model with lid.enabled for LID-free decoding",
            )
        processed, processed_len = self.preprocessor(input_signal=signal, length=signal_len)
        if self.spec_augmentation is not None and self.training:
            processed = self.spec_augmentation(input_spec=processed, length=processed_len)
        processed = append_language_onehot(processed, lang_ids.to(processed.device), len(self.languages))
        return self.forward(processed_signal=processed, processed_signal_length=processed_len)

    def lid_log_posteriors(self, encoded: torch.Tensor) -> torch.Tensor:
        """Frame LID log-posteriors log P_t(l): encoded (B, D, T) → (B, T, L)."""
        return self.lid_head(encoded).log_softmax(dim=-1)

    def _language_groups(self, lang_ids, encoded, encoded_len, transcript, transcript_len):
        """:func:`~nemo_tl.multilingual.dataset.language_groups` (one group of the whole batch: union softmax)."""
        languages = self.languages if self.is_multisoftmax else None
        return language_groups(lang_ids, languages, encoded, encoded_len, transcript, transcript_len)

    def rnnt_loss(
        self,
        encoded: torch.Tensor,
        encoded_len: torch.Tensor,
        transcript: torch.Tensor,
        transcript_len: torch.Tensor,
        lang_ids: torch.Tensor,
    ) -> torch.Tensor:
        """RNN-T loss; multi-softmax: each utterance through its language's decoder, joint and softmax.

        Shapes: encoded (B, D, T), encoded_len (B,), transcript (B, U), transcript_len (B,),
        lang_ids (B,). A mixed batch is split by language and the per-language losses are
        weighted by their share of the batch. With ``joint.fuse_loss_wer`` NeMo's fused joint computes
        joint and loss ``joint.fused_batch_size`` utterances at a time (no (B, T, U + 1, V + 1) tensor
        for the whole batch).
        """
        groups = self._language_groups(lang_ids, encoded, encoded_len, transcript, transcript_len)
        return language_rnnt_loss(self.decoder, self.joint, self.loss, groups, encoded.shape[0])

    def _losses(self, batch: LanguageBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        batch = LanguageBatch._make(batch)  # a plain (audio, audio_lens, tokens, token_lens, lang_ids) too
        encoded, encoded_len = self.encode(batch.audio, batch.audio_lens, batch.lang_ids)
        rnnt = self.rnnt_loss(encoded, encoded_len, batch.tokens, batch.token_lens, batch.lang_ids)
        parts = {"rnnt_loss": rnnt}
        loss = rnnt
        if self.aux_ctc is not None:  # NeMo's hybrid weighting: (1 − w) RNN-T + w CTC
            ctc = self.aux_ctc(encoded, encoded_len, batch.tokens, batch.token_lens, batch.lang_ids)
            parts["ctc_loss"] = ctc
            weight = self.multilingual.aux_ctc_weight
            loss = (1 - weight) * rnnt + weight * ctc
        if self.lid_head is not None:
            lid = frame_lid_loss(self.lid_head(encoded), encoded_len, batch.lang_ids)
            parts["lid_loss"] = lid
            loss = loss + self.multilingual.lid.weight * lid
        return loss, parts, encoded, encoded_len

    # ---- Lightning steps -------------------------------------------------------------------

    def training_step(self, batch, batch_nb):
        loss, parts, _, _ = self._losses(batch)
        logs = {f"train_{k}": v for k, v in parts.items()}
        logs["train_loss"] = loss
        if self._optimizer is not None:
            logs["learning_rate"] = self._optimizer.param_groups[0]["lr"]
        self.log_dict(logs)
        return {"loss": loss}

    def validation_pass(self, batch, batch_idx, dataloader_idx=0):
        loss, parts, encoded, encoded_len = self._losses(batch)
        logs = {"val_loss": loss, **{f"val_{k}": v for k, v in parts.items()}}
        logs.update(validation_metrics(self, LanguageBatch._make(batch), encoded, encoded_len))  # WER, LID accuracy
        return logs

    # ---- transcription ---------------------------------------------------------------------

    @torch.no_grad()
    def transcribe(
        self,
        audio: str | list[str] | np.ndarray | torch.utils.data.DataLoader,
        use_lhotse: bool = False,
        batch_size: int = 4,
        return_hypotheses: bool = True,
        partial_hypothesis: list[Hypothesis] | None = None,
        num_workers: int = 0,
        channel_selector: Any = None,
        augmentor: DictConfig | None = None,
        verbose: bool = True,
        timestamps: bool | None = None,
        override_config: TranscribeConfig | None = None,
        *,
        lang: str | Sequence[str] | None = None,
        min_frames: float | None = None,
        threshold: float | None = None,
    ) -> list[Hypothesis]:
        """Transcribe ``audio``; returns NeMo Hypothesis objects with ``.lang``, ``.lang_posteriors``, ``.t_avg``.

        Args:
            audio: as NeMo's ``transcribe`` (paths, a manifest, arrays).
            lang: the language (one code, or one per file): decode with that language's decoder
                only. None: LID-free decoding with early stopping (multi-softmax), or the union
                softmax (vanilla).
            min_frames, threshold: override ``model.lid_free`` τ and s_th for this call.

        ``.lang_posteriors`` is ``{lang: average LID posterior}`` (None without a LID head);
        ``.t_avg`` is Σ_l t_l^off / T (1 for a single decoder); LID-free multi-softmax results
        also carry ``.lang_hypotheses`` ``{lang: text}`` and ``.lang_scores`` ``{lang: log-score}`` for the
        decoders still on (without a LID head, the best score picks the language).
        """
        trcfg = transcribe_config(
            override_config, file_languages(audio, lang, self.languages, self.architecture), min_frames, threshold,
            use_lhotse=use_lhotse, batch_size=batch_size, num_workers=num_workers, channel_selector=channel_selector,
            augmentor=augmentor, verbose=verbose, timestamps=timestamps, partial_hypothesis=partial_hypothesis,
        )
        return super().transcribe(audio=audio, override_config=trcfg)

    def _transcribe_forward(self, batch: Any, trcfg: TranscribeConfig) -> dict[str, torch.Tensor | None]:
        return transcribe_forward(self, batch, trcfg)

    def _transcribe_output_processing(self, outputs: dict, trcfg: TranscribeConfig) -> list[Hypothesis]:
        return transcribe_hypotheses(self, outputs["encoded"], outputs["encoded_len"], outputs["lang_ids"], trcfg)

    def _stacked_decoding(self) -> StackedLanguageDecoding | None:
        """The batched all-languages greedy decoder (built once per decoding config), or None where unsupported."""
        return stacked_decoding(self)

    # ---- extraction ------------------------------------------------------------------------

    def extract_language(self, lang: str) -> EncDecRNNTModel:
        """A plain NeMo EncDecRNNTModel for ``lang`` (:func:`nemo_tl.multilingual.extract_language`)."""
        return extract_language(self, lang)
