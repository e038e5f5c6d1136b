"""Encoder output frames: how many a model makes of an utterance, and how many its transcript needs.

CTC emits at most one label per encoder frame and needs a blank between two equal labels, so a
transcript of U labels with R adjacent repeats needs U + R frames. With fewer, NeMo's CTC loss
(``zero_infinity``) gives the utterance loss 0: it trains nothing, silently. RNN-T can emit
several labels per frame and needs only one frame.

:func:`model_encoder_frames` asks a model's own modules for the output length (the
preprocessor's ``featurizer.get_seq_len``, then every masked convolution's ``get_seq_len``
of a ``ConvASREncoder``, the way their ``forward`` computes it); other encoders are run once per
length. :func:`config_encoder_frames` builds the same from a model config (a ``.nemo``'s).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

__all__ = ["EncoderFrames", "config_encoder_frames", "ctc_frames_needed", "encoder_frames", "model_encoder_frames"]


def ctc_frames_needed(tokens: Sequence[int]) -> int:
    """Encoder frames CTC needs to emit ``tokens``: U labels plus one blank between equal neighbours."""
    return len(tokens) + sum(a == b for a, b in zip(tokens, tokens[1:]))


@dataclass(frozen=True)
class EncoderFrames:
    """A model's encoder output length as a function of its input audio's length.

    ``count``: (N,) int64 audio lengths in samples at ``sample_rate`` → (N,) int64 encoder
    output frames. ``ctc``: True for CTC models (a transcript needs
    :func:`ctc_frames_needed` frames), False for RNN-T (any transcript needs one frame).
    """

    count: Callable[[torch.Tensor], torch.Tensor]
    sample_rate: int
    ctc: bool = True
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def frames(self, num_samples: Sequence[int]) -> list[int]:
        """Encoder frames of each audio length (in samples at ``sample_rate``)."""
        if not len(num_samples):
            return []
        with torch.no_grad():
            out = self.count(torch.as_tensor(list(num_samples), dtype=torch.long))
        return [int(x) for x in out.reshape(-1).tolist()]

    def needed(self, tokens: Sequence[int]) -> int:
        """Frames a transcript of label ids ``tokens`` needs: CTC U + repeats, RNN-T 1."""
        return ctc_frames_needed(tokens) if self.ctc else 1

    def shortest(self) -> int:
        """The fewest samples that give one encoder frame (the output length never falls as audio grows)."""
        if "shortest" not in self._cache:
            lo, hi = 1, max(2, self.sample_rate)
            while self.frames([hi])[0] < 1 and hi < 1_000 * self.sample_rate:
                lo, hi = hi, hi * 2
            while lo < hi:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if self.frames([mid])[0] >= 1 else (mid + 1, hi)
            self._cache["shortest"] = lo
        return self._cache["shortest"]


def _feature_frames(preprocessor: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Samples → feature frames, as the preprocessor's own featurizer computes its lengths."""
    get_seq_len = getattr(getattr(preprocessor, "featurizer", None), "get_seq_len", None)
    if get_seq_len is None:
        return None
    return lambda n: get_seq_len(n).to(torch.long)


def _jasper_frames(encoder: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Feature frames → encoder frames of a ConvASREncoder: its blocks' masked convolutions in order.

    ``JasperBlock.forward`` updates the lengths with ``get_seq_len`` of every ``MaskedConv1d`` of
    ``mconv`` (residual branches keep the block's input length); None for other encoders.
    """
    from nemo.collections.asr.parts.submodules.jasper import JasperBlock, MaskedConv1d

    blocks = list(getattr(encoder, "encoder", None) or [])
    if not blocks or not all(isinstance(b, JasperBlock) for b in blocks):
        return None
    convs = [m for b in blocks for m in b.mconv if isinstance(m, MaskedConv1d)]

    def count(lengths: torch.Tensor) -> torch.Tensor:
        for conv in convs:
            lengths = conv.get_seq_len(lengths)
        return lengths.to(torch.long)

    return count


def _probed_frames(encoder: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Feature frames → encoder frames by running ``encoder`` (in eval, without gradient) once per length.

    None for an encoder that cannot make an input example (NeMo's ``Exportable.input_example``).
    """
    if not hasattr(encoder, "input_example"):
        return None
    example = encoder.input_example(max_batch=1, max_dim=8)[0]
    features = int(example.shape[1])

    @functools.cache
    def one(length: int) -> int:
        if length <= 0:
            return 0
        device = next(encoder.parameters()).device
        x = torch.zeros(1, features, length, device=device)
        was_training = encoder.training
        encoder.eval()
        try:
            with torch.no_grad():
                out = encoder(audio_signal=x, length=torch.tensor([length], device=device))[1]
        finally:
            encoder.train(was_training)
        return int(out.reshape(-1)[0])

    return lambda lengths: torch.tensor([one(int(n)) for n in lengths.tolist()], dtype=torch.long)


def encoder_frames(
    preprocessor: torch.nn.Module, encoder: torch.nn.Module, sample_rate: int, *, ctc: bool
) -> EncoderFrames | None:
    """:class:`EncoderFrames` of a preprocessor + encoder pair; None when either cannot tell its lengths."""
    features = _feature_frames(preprocessor)
    encoded = _jasper_frames(encoder) or _probed_frames(encoder)
    if features is None or encoded is None:
        return None
    return EncoderFrames(lambda n: encoded(features(n)), int(sample_rate), ctc)


def _is_rnnt(cfg: Any) -> bool:
    """An RNN-T model without a CTC head to train: a ``joint`` and no ``aux_ctc.ctc_loss_weight`` > 0.

    A model with an auxiliary CTC head on its encoder (NeMo's hybrid RNN-T/CTC models, the multilingual
    RNN-T's ``model.aux_ctc``) trains CTC on the same transcripts, so its lines are counted as CTC counts them.
    """
    if cfg is None or "joint" not in cfg:
        return False
    weight = OmegaConf.select(cfg, "aux_ctc.ctc_loss_weight", default=None) if isinstance(cfg, DictConfig) else (
        (cfg.get("aux_ctc") or {}).get("ctc_loss_weight"))
    return not (weight is not None and float(weight) > 0)


def model_encoder_frames(model: Any) -> EncoderFrames | None:
    """:class:`EncoderFrames` of a NeMo ASR model (CTC unless its config has a ``joint`` and no
    ``aux_ctc.ctc_loss_weight`` > 0: RNN-T).

    Uses the model's own preprocessor and encoder; while the model is being built (NeMo sets up
    its data before it makes them), modules built from its config.
    """
    cfg = getattr(model, "cfg", None)
    preprocessor, encoder = getattr(model, "preprocessor", None), getattr(model, "encoder", None)
    if preprocessor is None or encoder is None:
        return config_encoder_frames(cfg) if cfg is not None else None
    rate = OmegaConf.select(cfg, "preprocessor.sample_rate", default=None) or cfg.get("sample_rate")
    if not rate:
        return None
    return encoder_frames(preprocessor, encoder, int(rate), ctc=not _is_rnnt(cfg))


_BUILT: dict[str, EncoderFrames | None] = {}  # config → frames: a model's data is set up more than once


def config_encoder_frames(cfg: DictConfig) -> EncoderFrames | None:
    """:class:`EncoderFrames` from a model config: its ``preprocessor`` and ``encoder`` built (untrained).

    None when the config lacks either section or its sample rate.
    """
    from nemo.core.classes import ModelPT

    pre, enc = cfg.get("preprocessor"), cfg.get("encoder")
    rate = OmegaConf.select(cfg, "preprocessor.sample_rate", default=None) or cfg.get("sample_rate")
    if pre is None or enc is None or not rate or "_target_" not in pre or "_target_" not in enc:
        return None
    pre, enc = (OmegaConf.create(OmegaConf.to_container(c, resolve=True)) for c in (pre, enc))
    key = OmegaConf.to_yaml({"pre": pre, "enc": enc, "rate": rate, "rnnt": _is_rnnt(cfg)})
    if key not in _BUILT:
        if len(_BUILT) >= 4:
            _BUILT.pop(next(iter(_BUILT)))
        preprocessor, encoder = ModelPT.from_config_dict(pre), ModelPT.from_config_dict(enc)
        _BUILT[key] = encoder_frames(preprocessor, encoder, int(rate), ctc=not _is_rnnt(cfg))
    return _BUILT[key]
