"""Language-specific RNN-T parts of the multi-softmax model (Joshi et al. 2021, §4) and the LID head.

- :class:`MultiSoftmaxDecoder`: one NeMo :class:`RNNTDecoder` per language, each with its own
  embedding over that language's labels (+ blank as pad); the LSTM prediction network is one
  shared module tied into every language's decoder, or one per language (the LSP variant).
- :class:`MultiSoftmaxJoint`: one NeMo :class:`RNNTJoint` per language: joint network and softmax
  over that language's labels plus blank (blank is the last index, as in NeMo).
- :class:`LIDHead`: a linear layer on the encoder output giving frame-level language logits.

Each language's decoder and joint are plain NeMo modules, so NeMo's RNN-T loss and greedy /
beam decoding run on them unchanged (and NeMo's fused joint, ``fuse_loss_wer``, computes each
language's loss and WER in sub-batches), and :meth:`MultiSoftmaxRNNTModel.extract_language` copies
them into a plain :class:`EncDecRNNTModel`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from nemo.collections.asr.modules.rnnt import RNNTDecoder, RNNTJoint
from nemo.core.classes import NeuralModule

__all__ = ["LIDHead", "MultiSoftmaxDecoder", "MultiSoftmaxJoint"]


class MultiSoftmaxDecoder(NeuralModule):
    """Per-language RNN-T prediction networks with a shared (tied) LSTM.

    Args:
        prednet: NeMo ``RNNTDecoder`` prednet dict (``pred_hidden``, ``pred_rnn_layers``, ...).
        vocab_sizes: ``{lang: number of labels without blank}``, in LID order.
        language_specific_prediction: one LSTM per language (LSP) instead of a shared one.
        vocab_size: ignored; :class:`EncDecRNNTModel` injects the union size here.
        normalization_mode, random_state_sampling, blank_as_pad: as in NeMo's ``RNNTDecoder``.

    ``forward(targets (B, U), target_length (B,), lang)`` returns NeMo's decoder outputs
    ``(g (B, H, U + 1), target_length, states)`` of language ``lang``'s decoder.
    """

    def __init__(
        self,
        prednet: Mapping[str, Any],
        vocab_sizes: Mapping[str, int],
        language_specific_prediction: bool = False,
        vocab_size: int | None = None,
        normalization_mode: str | None = None,
        random_state_sampling: bool = False,
        blank_as_pad: bool = True,
    ):
        super().__init__()
        self.language_specific_prediction = bool(language_specific_prediction)
        self.languages = list(vocab_sizes)
        self.pred_hidden = prednet["pred_hidden"]
        self.blank_as_pad = blank_as_pad  # read by NeMo's decoding set-up in EncDecRNNTModel.__init__
        self.decoders = torch.nn.ModuleDict(
            {
                lang: RNNTDecoder(
                    prednet=dict(prednet),
                    vocab_size=int(size),
                    normalization_mode=normalization_mode,
                    random_state_sampling=random_state_sampling,
                    blank_as_pad=blank_as_pad,
                )
                for lang, size in vocab_sizes.items()
            }
        )
        if not self.language_specific_prediction:
            shared = self.decoders[self.languages[0]].prediction["dec_rnn"]
            for lang in self.languages[1:]:
                self.decoders[lang].prediction["dec_rnn"] = shared

    def __getitem__(self, lang: str) -> RNNTDecoder:
        return self.decoders[lang]

    def forward(self, targets: torch.Tensor, target_length: torch.Tensor, lang: str, states=None):
        return self.decoders[lang](targets=targets, target_length=target_length, states=states)

    def language_parameters(self, lang: str) -> list[torch.nn.Parameter]:
        """Parameters that belong to ``lang`` alone (embedding; with LSP its LSTM too)."""
        dec = self.decoders[lang]
        if self.language_specific_prediction:
            return list(dec.parameters())
        return list(dec.prediction["embed"].parameters())


class MultiSoftmaxJoint(NeuralModule):
    """Per-language RNN-T joint networks, each with its own softmax over that language's labels + blank.

    Args:
        jointnet: NeMo ``RNNTJoint`` jointnet dict (``encoder_hidden``, ``pred_hidden``, ``joint_hidden``,
            ``activation``, ``dropout``).
        vocabularies: ``{lang: labels}``, in LID order.
        log_softmax, preserve_memory: as in NeMo's ``RNNTJoint``.
        fuse_loss_wer, fused_batch_size, experimental_fuse_loss_wer: as in NeMo's ``RNNTJoint``, given
            to every language's joint; each then needs its language's loss and WER (:meth:`set_loss`,
            :meth:`set_wer`).
        num_classes, vocabulary: ignored; :class:`EncDecRNNTModel` injects the union here.

    ``forward(encoder_outputs (B, D, T), decoder_outputs (B, H, U + 1), lang)`` returns
    language ``lang``'s joint output (B, T, U + 1, V_lang + 1). With ``fuse_loss_wer`` it is NeMo's
    fused step of ``lang``'s joint (also given ``encoder_lengths`` (B,), ``transcripts`` (B, U),
    ``transcript_lengths`` (B,), ``compute_wer``): ``(loss, wer, wer_num, wer_denom)``, the joint
    computed ``fused_batch_size`` utterances at a time.
    """

    def __init__(
        self,
        jointnet: Mapping[str, Any],
        vocabularies: Mapping[str, Sequence[str]],
        log_softmax: bool | None = None,
        preserve_memory: bool = False,
        num_classes: int | None = None,
        vocabulary: Sequence[str] | None = None,
        fuse_loss_wer: bool = False,
        fused_batch_size: int | None = None,
        experimental_fuse_loss_wer: Any = None,
    ):
        super().__init__()
        self.languages = list(vocabularies)
        self.joints = torch.nn.ModuleDict(
            {
                lang: RNNTJoint(
                    jointnet=dict(jointnet),
                    num_classes=len(labels),
                    vocabulary=list(labels),
                    log_softmax=log_softmax,
                    preserve_memory=preserve_memory,
                    fuse_loss_wer=fuse_loss_wer,
                    fused_batch_size=fused_batch_size,
                    experimental_fuse_loss_wer=experimental_fuse_loss_wer,
                )
                for lang, labels in vocabularies.items()
            }
        )
        # Attributes EncDecRNNTModel.__init__ reads; the model uses the per-language joints.
        self.vocabulary = [label for labels in vocabularies.values() for label in labels]
        self.num_extra_outputs = 0

    def __getitem__(self, lang: str) -> RNNTJoint:
        return self.joints[lang]

    @property
    def num_classes_with_blank(self) -> int:
        """Largest per-language output size (labels + blank)."""
        return max(j.num_classes_with_blank for j in self.joints.values())

    @property
    def fuse_loss_wer(self) -> bool:
        """Whether the languages' joints run NeMo's fused joint + loss (+ WER) step."""
        return self.joints[self.languages[0]].fuse_loss_wer

    @property
    def fused_batch_size(self) -> int | None:
        return self.joints[self.languages[0]].fused_batch_size

    def set_loss(self, loss: Mapping[str, torch.nn.Module] | torch.nn.Module) -> None:
        """Give each language's fused joint its own RNN-T loss, ``{lang: RNNTLoss}``.

        A single loss is not wired: EncDecRNNTModel.__init__ hands over its one union-vocabulary
        loss before :class:`MultiSoftmaxRNNTModel` has built the per-language ones.
        """
        if isinstance(loss, (Mapping, torch.nn.ModuleDict)):
            for lang, module in loss.items():
                self.joints[lang].set_loss(module)

    def set_wer(self, wer: Mapping[str, torch.nn.Module] | torch.nn.Module) -> None:
        """Give each language's fused joint its own WER metric, ``{lang: WER}`` (a single one: as in set_loss)."""
        if isinstance(wer, (Mapping, torch.nn.ModuleDict)):
            for lang, module in wer.items():
                self.joints[lang].set_wer(module)

    def forward(
        self,
        encoder_outputs: torch.Tensor,
        decoder_outputs: torch.Tensor | None,
        lang: str,
        encoder_lengths: torch.Tensor | None = None,
        transcripts: torch.Tensor | None = None,
        transcript_lengths: torch.Tensor | None = None,
        compute_wer: bool = False,
    ):
        if not self.fuse_loss_wer:
            return self.joints[lang](encoder_outputs=encoder_outputs, decoder_outputs=decoder_outputs)
        return self.joints[lang](
            encoder_outputs=encoder_outputs,
            decoder_outputs=decoder_outputs,
            encoder_lengths=encoder_lengths,
            transcripts=transcripts,
            transcript_lengths=transcript_lengths,
            compute_wer=compute_wer,
        )

    def language_parameters(self, lang: str) -> list[torch.nn.Parameter]:
        """Parameters of ``lang``'s joint and softmax."""
        return list(self.joints[lang].parameters())


class LIDHead(NeuralModule):
    """Frame-level language identification on the encoder output (Joshi et al. 2021, Fig. 2).

    Args:
        feat_in: encoder output size D.
        num_languages: L.

    ``forward(encoder_output (B, D, T))`` returns logits (B, T, L).
    """

    def __init__(self, feat_in: int, num_languages: int):
        super().__init__()
        self.proj = torch.nn.Linear(feat_in, num_languages)

    def forward(self, encoder_output: torch.Tensor) -> torch.Tensor:
        return self.proj(encoder_output.transpose(1, 2))
