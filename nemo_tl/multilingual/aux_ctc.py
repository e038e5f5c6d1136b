"""An auxiliary CTC loss on the shared encoder of the multilingual RNN-T (NeMo's hybrid RNN-T/CTC idea).

``model.aux_ctc.ctc_loss_weight`` w > 0 adds a NeMo ``ConvASRDecoder`` over the union of the
languages' labels (+ blank) on the encoder output; the loss becomes (1 − w)·RNN-T + w·CTC (the
weighting of NeMo's ``EncDecHybridRNNTCTCModel``), plus the LID term. The CTC head reads only the
encoder output, so its gradient reaches the encoder and the head only; ``extract_language`` leaves
it out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from nemo.collections.asr.losses.ctc import CTCLoss
from nemo.collections.asr.modules import ConvASRDecoder

__all__ = ["AuxCTCHead", "union_token_table"]


def union_token_table(vocabularies: Mapping[str, Sequence[str]], union: Sequence[str]) -> torch.Tensor:
    """(L, V_max) long: row l maps language l's label ids to union label ids (padding: 0)."""
    index = {c: i for i, c in enumerate(union)}
    width = max(len(labels) for labels in vocabularies.values())
    table = torch.zeros(len(vocabularies), width, dtype=torch.long)
    for row, labels in enumerate(vocabularies.values()):
        table[row, : len(labels)] = torch.tensor([index[c] for c in labels], dtype=torch.long)
    return table


class AuxCTCHead(torch.nn.Module):
    """CTC over the union labels on the shared encoder output.

    Args:
        feat_in: encoder output width D.
        vocabularies: ``{lang: labels}`` in LID order; union: the union labels (the CTC classes, blank last).
        per_language_ids: whether batch tokens are each language's own label ids (multi-softmax) rather
            than union ids (vanilla / onehot).
    """

    def __init__(
        self, feat_in: int, vocabularies: Mapping[str, Sequence[str]], union: Sequence[str], per_language_ids: bool
    ):
        super().__init__()
        self.decoder = ConvASRDecoder(feat_in=feat_in, num_classes=len(union), vocabulary=list(union))
        self.loss = CTCLoss(num_classes=len(union), zero_infinity=True, reduction="mean_batch")
        self.per_language_ids = per_language_ids
        self.register_buffer("table", union_token_table(vocabularies, union), persistent=False)

    def union_tokens(self, tokens: torch.Tensor, lang_ids: torch.Tensor) -> torch.Tensor:
        """Tokens (B, U) of each utterance's language → union ids (B, U) (padding positions: arbitrary)."""
        if not self.per_language_ids:
            return tokens
        rows = self.table[lang_ids.long()]  # (B, V_max)
        return rows.gather(1, tokens.long().clamp(0, rows.shape[1] - 1))

    def forward(
        self,
        encoded: torch.Tensor,
        encoded_len: torch.Tensor,
        tokens: torch.Tensor,
        token_lens: torch.Tensor,
        lang_ids: torch.Tensor,
    ) -> torch.Tensor:
        """CTC loss (NeMo's, mean over the batch): encoded (B, D, T), encoded_len (B,), tokens (B, U),
        token_lens (B,), lang_ids (B,) → scalar."""
        log_probs = self.decoder(encoder_output=encoded)  # (B, T, V + 1)
        return self.loss(
            log_probs=log_probs, targets=self.union_tokens(tokens, lang_ids),
            input_lengths=encoded_len, target_lengths=token_lens,
        )
