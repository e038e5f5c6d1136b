"""Language-specific RNN-T parts of the multi-softmax model (Joshi et al. 2021, §4) and the LID head.

- :class:`MultiSoftmaxDecoder`: one NeMo :class:`RNNTDecoder` per language, each with its own
  embedding over that language's labels (+ blank as pad); the LSTM prediction network is one
  shared module tied into every language's decoder, or one per language (the LSP variant).
- :class:`MultiSoftmaxJoint`: one NeMo :class:`RNNTJoint` per language: joint network and softmax
  over that language's labels plus blank (blank is the last index, as in NeMo).
- :class:`LIDHead`: a linear layer on the encoder output giving frame-level language logits.

Each language's decoder and joint are plain NeMo modules, so NeMo's RNN-T loss and greedy /
beam decoding run on them unchanged, and :meth:`MultiSoftmaxRNNTModel.extract_language` copies
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
        num_classes, vocabulary: ignored; :class:`EncDecRNNTModel` injects the union here.

    ``forward(encoder_outputs (B, D, T), decoder_outputs (B, H, U + 1), lang)`` returns
    language ``lang``'s joint output (B, T, U + 1, V_lang + 1).
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
    ):
        super().__init__()
        if fuse_loss_wer:
            raise ValueError("MultiSoftmaxJoint does not support fuse_loss_wer")
        self.languages = list(vocabularies)
        self.joints = torch.nn.ModuleDict(
            {
                lang: RNNTJoint(
                    jointnet=dict(jointnet),
                    num_classes=len(labels),
                    vocabulary=list(labels),
                    log_softmax=log_softmax,
                    preserve_memory=preserve_memory,
                )
                for lang, labels in vocabularies.items()
            }
        )
        # Attributes EncDecRNNTModel.__init__ reads; the model uses the per-language joints.
        self.vocabulary = [label for labels in vocabularies.values() for label in labels]
        self.num_extra_outputs = 0
        self.fuse_loss_wer = False

    def __getitem__(self, lang: str) -> RNNTJoint:
        return self.joints[lang]

    @property
    def num_classes_with_blank(self) -> int:
        """Largest per-language output size (labels + blank)."""
        return max(j.num_classes_with_blank for j in self.joints.values())

    def forward(self, encoder_outputs: torch.Tensor, decoder_outputs: torch.Tensor, lang: str) -> torch.Tensor:
        return self.joints[lang](encoder_outputs=encoder_outputs, decoder_outputs=decoder_outputs)

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
