"""Every language's greedy RNN-T decoder in one batched NeMo decoding pass (LID-free decoding).

LID-free decoding of the multi-softmax RNN-T runs every language's decoder on the one encoder
output (Joshi et al. 2021, §4.2). Run one after another, L decoders cost about L times one
decoder: greedy decoding is a loop of small steps whose cost hardly depends on the batch size.
Here the L decoders become one NeMo decoding problem over L·B rows, row ``l * B + b`` being
utterance b decoded as language l:

- the token space is the concatenation of the languages' labels plus one blank, so a token id
  names its language: language l's labels are ids ``offset_l .. offset_l + V_l - 1``;
- the prediction network is a NeMo :class:`RNNTDecoder` over that space whose embedding rows are
  the languages' embeddings side by side and whose LSTM *is* the model's shared LSTM (the
  embedding of a token is the one its language's decoder would use);
- :class:`StackedLanguageJoint` applies language l's joint to the rows of language l (one
  batched matmul per step) and gives −inf to the other languages' labels, so every row's
  argmax, score and log-softmax equal those of its own language's joint.

NeMo's ``greedy_batch`` decoder then decodes all rows at once, label-looping or frame-looping as
``decoding.greedy.loop_labels`` says. Its result for each row equals what language l's own NeMo
decoder gives (tested, both algorithms). Rows of a language that
early stopping switched off get the encoder length t_l^off, so they stop where the rule says.

Not covered (the model falls back to one decoder per language): language-specific prediction
networks (LSP), beam search, and prediction networks other than NeMo's ``RNNTDecoder``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from nemo.collections.asr.modules.rnnt import RNNTDecoder, RNNTJoint
from nemo.collections.asr.parts.submodules.rnnt_decoding import RNNTDecoding
from nemo.collections.asr.parts.utils.rnnt_utils import Hypothesis
from nemo.core.classes import NeuralModule
from omegaconf import DictConfig, OmegaConf, open_dict

__all__ = ["StackedLanguageDecoding", "StackedLanguageJoint"]


class StackedLanguageJoint(NeuralModule):
    """Per-language NeMo joints applied to language-major row blocks, output over the concatenated labels.

    Args:
        joints: ``{lang: RNNTJoint}`` in LID order (not registered as submodules: the weights are
            copied in by :meth:`refresh`).
        vocab_sizes: ``{lang: V_l}`` (labels without blank).

    The batch of every call holds L blocks of equal size, block l being language l's rows (the
    layout :class:`StackedLanguageDecoding` builds); NeMo's greedy_batch decoders keep the batch
    fixed, so every call sees that layout.
    """

    def __init__(self, joints: Mapping[str, RNNTJoint], vocab_sizes: Mapping[str, int]):
        super().__init__()
        self.languages = list(joints)
        self._joints = dict(joints)
        first = self._joints[self.languages[0]]
        sizes = [int(vocab_sizes[lang]) for lang in self.languages]
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self.total = sum(sizes)  # blank is id `total`
        self.num_classes_with_blank = self.total + 1
        self.num_extra_outputs = 0
        self.log_softmax = first.log_softmax
        self.temperature = first.temperature
        self.activation = first.joint_net[0]
        langs, hidden, pred_hidden = len(self.languages), first.joint_hidden, first.pred_hidden
        # Frozen parameters rather than buffers: NeMo's CUDA-graph decoder reads the joint's dtype from
        # ``next(joint.parameters())``; refresh() copies into them in place, so captured graphs stay valid.
        def frozen(*shape: int) -> torch.nn.Parameter:
            return torch.nn.Parameter(torch.zeros(*shape), requires_grad=False)

        self.pred_weight = frozen(langs, pred_hidden, hidden)
        self.pred_bias = frozen(langs, 1, hidden)
        self.out_weight = frozen(langs, hidden, self.num_classes_with_blank)
        self.out_bias = frozen(langs, 1, self.num_classes_with_blank)
        self._sizes = sizes

    @torch.no_grad()
    def refresh(self) -> None:
        """Copy the current weights of every language's joint into the stacked tensors."""
        self.out_weight.zero_()
        self.out_bias.fill_(float("-inf"))
        for i, lang in enumerate(self.languages):
            joint, size, offset = self._joints[lang], self._sizes[i], self.offsets[i]
            self.pred_weight[i].copy_(joint.pred.weight.t())
            self.pred_bias[i, 0].copy_(joint.pred.bias)
            out = joint.joint_net[-1]
            self.out_weight[i, :, offset : offset + size].copy_(out.weight[:size].t())
            self.out_weight[i, :, self.total].copy_(out.weight[size])
            self.out_bias[i, 0, offset : offset + size].copy_(out.bias[:size])
            self.out_bias[i, 0, self.total].copy_(out.bias[size])

    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        """(L·B, ...) → (L, B·..., last) for a batched matmul per language."""
        return x.reshape(len(self.languages), -1, x.shape[-1])

    def project_encoder(self, encoder_output: torch.Tensor) -> torch.Tensor:
        """(L·B, T, D) → (L·B, T, H): language l's encoder projection on block l (once per decoding)."""
        blocks = encoder_output.chunk(len(self.languages), dim=0)
        return torch.cat([self._joints[lang].project_encoder(x) for lang, x in zip(self.languages, blocks)], dim=0)

    def project_prednet(self, prednet_output: torch.Tensor) -> torch.Tensor:
        """(L·B, U, P) → (L·B, U, H): language l's prediction projection on block l."""
        out = torch.baddbmm(self.pred_bias.to(prednet_output.dtype), self._blocks(prednet_output),
                            self.pred_weight.to(prednet_output.dtype))
        return out.reshape(*prednet_output.shape[:-1], out.shape[-1])

    def joint_after_projection(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """f (L·B, T, H), g (L·B, U, H) → (L·B, T, U, ΣV + 1); −inf outside each row's language."""
        hidden = self.activation(f.unsqueeze(2) + g.unsqueeze(1))  # (N, T, U, H); dropout is off in eval
        res = torch.baddbmm(self.out_bias.to(hidden.dtype), self._blocks(hidden), self.out_weight.to(hidden.dtype))
        res = res.reshape(*hidden.shape[:-1], res.shape[-1])
        if self.log_softmax or (self.log_softmax is None and not res.is_cuda):  # as NeMo's RNNTJoint
            res = (res / self.temperature if self.temperature != 1.0 else res).log_softmax(dim=-1)
        return res

    def joint(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return self.joint_after_projection(self.project_encoder(f), self.project_prednet(g))


class StackedLanguageDecoding:
    """One NeMo greedy decoding over every (utterance, language) pair of a batch.

    Args:
        decoders: ``{lang: RNNTDecoder}`` in LID order, all sharing one prediction LSTM.
        joints: ``{lang: RNNTJoint}`` in the same order.
        vocabularies: ``{lang: labels}`` (without blank).
        decoding_cfg: the model's RNNT decoding config (greedy_batch, with its ``greedy.loop_labels``).
    """

    def __init__(
        self,
        decoders: Mapping[str, RNNTDecoder],
        joints: Mapping[str, RNNTJoint],
        vocabularies: Mapping[str, Sequence[str]],
        decoding_cfg: DictConfig,
    ):
        self.languages = list(vocabularies)
        self._decoders = dict(decoders)
        first = self._decoders[self.languages[0]]
        self.vocab_sizes = {lang: len(labels) for lang, labels in vocabularies.items()}
        self.joint = StackedLanguageJoint(joints, self.vocab_sizes)
        self.decoder = RNNTDecoder(
            prednet={"pred_hidden": first.pred_hidden, "pred_rnn_layers": first.pred_rnn_layers, "dropout": 0.0},
            vocab_size=self.joint.total,
            normalization_mode=None,
            random_state_sampling=first.random_state_sampling,
            blank_as_pad=first.blank_as_pad,
        )
        self.decoder.requires_grad_(False)  # before the LSTM goes in: the model's LSTM keeps training
        self.decoder.prediction["dec_rnn"] = first.prediction["dec_rnn"]  # the shared LSTM itself
        cfg = OmegaConf.create(OmegaConf.to_container(decoding_cfg, resolve=True))
        with open_dict(cfg):
            cfg.strategy = "greedy_batch"
        vocabulary = [label for labels in vocabularies.values() for label in labels]
        self.decoding = RNNTDecoding(decoding_cfg=cfg, decoder=self.decoder, joint=self.joint, vocabulary=vocabulary)

    @staticmethod
    def supports(decoder_module, decoding_cfg: DictConfig) -> bool:
        """Whether a model's decoders and decoding config can be stacked (shared LSTM, greedy_batch)."""
        return (
            not getattr(decoder_module, "language_specific_prediction", True)
            and decoding_cfg.get("strategy") == "greedy_batch"
            and all(type(d) is RNNTDecoder for d in decoder_module.decoders.values())
        )

    @torch.no_grad()
    def refresh(self, device: torch.device) -> None:
        """Bring the stacked embedding and joint weights up to date with the model's (and onto ``device``)."""
        first = self._decoders[self.languages[0]].prediction["embed"].weight
        self.decoder.prediction["embed"].to(device=device, dtype=first.dtype)  # the LSTM is the model's own
        self.joint.to(device=device, dtype=next(iter(self.joint._joints.values())).pred.weight.dtype)
        rows = [self._decoders[lang].prediction["embed"].weight[: self.vocab_sizes[lang]] for lang in self.languages]
        embed = self.decoder.prediction["embed"].weight
        embed[: self.joint.total].copy_(torch.cat(rows, dim=0))
        if embed.shape[0] > self.joint.total:
            embed[self.joint.total :].zero_()  # blank as pad
        self.joint.refresh()

    def __call__(self, encoded: torch.Tensor, lengths: torch.Tensor) -> list[list[Hypothesis]]:
        """Decode every utterance as every language.

        Args:
            encoded: (B, D, T) encoder output.
            lengths: (B, L) frames to decode per utterance and language (T_b, or t_l^off).

        Returns:
            ``hyps[b][l]``: utterance b decoded by language l's decoder, with language-local token
            ids in ``y_sequence`` (as that language's own NeMo decoder gives them).
        """
        batch, langs = encoded.shape[0], len(self.languages)
        self.refresh(encoded.device)
        stacked = encoded.repeat(langs, 1, 1)  # row l * B + b
        stacked_len = lengths.t().reshape(-1).to(encoded.device)
        flat = self.decoding.rnnt_decoder_predictions_tensor(stacked, stacked_len, return_hypotheses=True)
        out: list[list[Hypothesis]] = [[None] * langs for _ in range(batch)]
        for row, hyp in enumerate(flat):
            lang, b = divmod(row, batch)
            ids = hyp.y_sequence
            if isinstance(ids, torch.Tensor):
                hyp.y_sequence = ids - self.joint.offsets[lang]
            else:
                hyp.y_sequence = [int(i) - self.joint.offsets[lang] for i in ids]
            out[b][lang] = hyp
        return out
