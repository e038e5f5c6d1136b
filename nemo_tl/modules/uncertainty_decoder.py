"""A CTC decoder with an aleatoric-uncertainty head (Kim et al. 2021 §3.1, after Kendall & Gal)."""

from __future__ import annotations

import torch
from nemo.collections.asr.modules import ConvASRDecoder
from nemo.collections.asr.parts.submodules.jasper import init_weights
from nemo.core.classes.common import typecheck

__all__ = ["UncertaintyConvASRDecoder", "corrupt_logits"]


def corrupt_logits(logits: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """g = f + σ² · ε, ε ~ N(0, I) (Kim et al. eq. 4), with σ² = exp(log σ²).

    Args:
        logits: (B, T, V) logits f (or log-probabilities: softmax(g) is the same, up to a shift of g).
        logvar: (B, T, V) log σ².
        noise: (B, T, V) ε; drawn from N(0, I) when None.
    """
    if noise is None:
        noise = torch.randn_like(logits)
    return logits + torch.exp(logvar) * noise


class UncertaintyConvASRDecoder(ConvASRDecoder):
    """NeMo's ConvASRDecoder plus a log σ² head of the same size; swap it in by ``_target_``.

    Beside the logits f (NeMo's 1x1 convolution ``decoder_layers``) a second 1x1 convolution
    ``logvar_layers`` of the same input h predicts log σ² (eq. 3 without the nonlinearity, as
    Kim et al. do in practice). The forward returns log-probabilities (B, T, V+1), as NeMo's
    CTC models expect:

    - training: log_softmax(g), g = f + σ² · ε, ε ~ N(0, I) (eqs. 4-5), the input of the CTC loss;
    - eval: log_softmax(f), exactly the output of a plain ConvASRDecoder with the same weights.

    After each forward, ``last_logits`` holds the (B, T, V+1) logits that were turned into the
    output (g in training, f in eval, shifted by a per-frame constant, which softmax ignores) and
    ``last_logvar`` the (B, T, V+1) log σ², so that KD losses need no second pass.

    Args:
        feat_in, num_classes, init_mode, vocabulary, add_blank: as for ``ConvASRDecoder``.
        logvar_bias_init: initial bias of the log σ² head; the default -4 (σ² ≈ 0.02) keeps the
            noise small while the model is untrained.
    """

    def __init__(
        self,
        feat_in: int,
        num_classes: int,
        init_mode: str = "xavier_uniform",
        vocabulary: list[str] | None = None,
        add_blank: bool = True,
        logvar_bias_init: float = -4.0,
    ):
        super().__init__(
            feat_in=feat_in, num_classes=num_classes, init_mode=init_mode, vocabulary=vocabulary, add_blank=add_blank
        )
        self.logvar_layers = torch.nn.Sequential(
            torch.nn.Conv1d(self._feat_in, self._num_classes, kernel_size=1, bias=True)
        )
        self.logvar_layers.apply(lambda m: init_weights(m, mode=init_mode))
        torch.nn.init.constant_(self.logvar_layers[0].bias, logvar_bias_init)
        self.last_logits: torch.Tensor | None = None
        self.last_logvar: torch.Tensor | None = None
        self._head_input: torch.Tensor | None = None
        # h as ConvASRDecoder feeds it to its logit layer (after any adapters), for the σ² head.
        self.decoder_layers.register_forward_pre_hook(self._keep_head_input)

    def _keep_head_input(self, module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self._head_input = args[0]

    @typecheck()
    def forward(self, encoder_output: torch.Tensor) -> torch.Tensor:
        """(B, D, T) encoder output -> (B, T, V+1) log-probabilities (noisy in training)."""
        log_probs = super().forward(encoder_output=encoder_output)
        logvar = self.logvar_layers(self._head_input).transpose(1, 2)
        self._head_input = None
        if self.training:
            logits = corrupt_logits(log_probs, logvar)
            log_probs = torch.nn.functional.log_softmax(logits, dim=-1)
        else:
            logits = log_probs
        self.last_logits = logits
        self.last_logvar = logvar
        return log_probs
