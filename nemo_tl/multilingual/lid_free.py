"""LID-free decoding of the multi-softmax RNN-T: every language's decoder on one encoder output.

:func:`lid_free_decode` composes the pure early-stopping rule (:mod:`nemo_tl.decoding.lid_free`:
which decoders stay on, t_l^off, T_avg, the chosen language) with the decoders: the batched
all-languages greedy decoding (:class:`~nemo_tl.decoding.stacked.StackedLanguageDecoding`) where it
applies, else one language's decoder after another. :func:`stacked_decoding` keeps a model's batched
decoder, built once per decoding config. :func:`script_language` names the language of a
union-softmax (vanilla) hypothesis.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from nemo.collections.asr.parts.utils.rnnt_utils import Hypothesis
from omegaconf import DictConfig

from nemo_tl.decoding.lid_free import choose_language, early_stopping
from nemo_tl.decoding.stacked import StackedLanguageDecoding
from nemo_tl.multilingual.cuda_graphs import limit_graphs_mode

__all__ = ["build_stacked_decoding", "built_stacked_decoding", "lid_free_decode", "script_language", "stacked_decoding"]

# decode(lang, encoded (B, D, T), encoded_len (B,)) -> B hypotheses of lang's own decoder
DecodeFn = Callable[[str, torch.Tensor, torch.Tensor], list[Hypothesis]]


def build_stacked_decoding(
    decoder, joint, vocabularies: Mapping[str, Sequence[str]], decoding_cfg: DictConfig, graphs_mode: str
) -> StackedLanguageDecoding | None:
    """The batched all-languages greedy decoder of a multi-softmax decoder and joint, or None where it cannot stack."""
    if not StackedLanguageDecoding.supports(decoder, decoding_cfg):
        return None
    languages = list(vocabularies)
    stacked = StackedLanguageDecoding(
        {lang: decoder[lang] for lang in languages},
        {lang: joint[lang] for lang in languages},
        {lang: list(labels) for lang, labels in vocabularies.items()},
        decoding_cfg,
    )
    limit_graphs_mode(stacked.decoding, graphs_mode)
    return stacked


_STACKED = "_stacked"  # model.__dict__[_STACKED]: (the decoding config it was built for, its stacked decoding or None)


def stacked_decoding(model: Any) -> StackedLanguageDecoding | None:
    """The batched all-languages greedy decoder of a multi-softmax ``model`` (built once per decoding config), or None."""
    cached = model.__dict__.get(_STACKED)
    if cached is not None and cached[0] is model.cfg.decoding:
        return cached[1]
    stacked = build_stacked_decoding(
        model.decoder, model.joint, model.vocabularies, model.cfg.decoding, model.multilingual.cuda_graphs_mode
    )
    model.__dict__[_STACKED] = (model.cfg.decoding, stacked)
    return stacked


def built_stacked_decoding(model: Any) -> StackedLanguageDecoding | None:
    """The batched decoder :func:`stacked_decoding` last built for ``model`` (None if none yet), without building one."""
    cached = model.__dict__.get(_STACKED)
    return cached[1] if cached is not None else None


def lid_free_decode(
    encoded: torch.Tensor,
    encoded_len: torch.Tensor,
    languages: Sequence[str],
    decode: DecodeFn,
    stacked: StackedLanguageDecoding | None = None,
    log_post: torch.Tensor | None = None,
    avg_post: torch.Tensor | None = None,
    *,
    min_frames: float,
    threshold: float,
) -> tuple[list[Hypothesis], list[str], torch.Tensor]:
    """Decode every utterance in every language; early stopping (τ, s_th) picks which decoders run to the end.

    Args:
        encoded: (B, D, T) encoder output; encoded_len: (B,).
        languages: language codes in LID order (L).
        decode: one language's decoder (used when ``stacked`` is None).
        stacked: the batched all-languages decoder, or None.
        log_post: (B, T, L) frame LID log-posteriors, or None (no LID head: every decoder runs to the
            end and the best-scoring hypothesis is chosen); avg_post: (B, L) average posteriors.
        min_frames, threshold: τ and s_th.

    Returns:
        ``(hyps, chosen, t_avg)``: the chosen hypothesis per utterance, with ``.lang_hypotheses``
        ``{lang: text}`` and ``.lang_scores`` ``{lang: score}`` of the decoders still on; the chosen
        language codes; T_avg per utterance ((B,) double, CPU). A decoder switched off at t_l^off
        decodes only its first t_l^off frames; its partial output is never chosen.
    """
    batch, num_langs = encoded.shape[0], len(languages)
    best: list[int] | None = None
    if log_post is not None:
        t_off, active, t_avg = early_stopping(log_post, encoded_len, min_frames=min_frames, threshold=threshold)
        run, t_off = active.cpu(), t_off.cpu()
        best = choose_language(avg_post.cpu(), run, t_off).tolist()
    else:
        run = torch.ones(batch, num_langs, dtype=torch.bool)
        t_avg = torch.full((batch,), float(num_langs), dtype=torch.double)
    per_lang: list[dict[str, Hypothesis]] = [{} for _ in range(batch)]
    if stacked is not None:  # one batched decoding of every (utterance, language) pair
        lengths = encoded_len.cpu().unsqueeze(1).expand(batch, num_langs)
        if log_post is not None:  # a decoder switched off stops at t_l^off
            lengths = torch.where(run, lengths, torch.minimum(t_off, lengths))
        every = stacked(encoded, lengths)
        for i in range(batch):
            per_lang[i] = {lang: every[i][j] for j, lang in enumerate(languages) if run[i, j]}
    else:  # one decoder after another, each on the utterances where it is still on
        for j, lang in enumerate(languages):
            rows = run[:, j].nonzero(as_tuple=True)[0].tolist()
            if rows:
                for i, h in zip(rows, decode(lang, encoded[rows], encoded_len[rows])):
                    per_lang[i][lang] = h
    if best is None:
        best = [max(range(num_langs), key=lambda j, d=d: d[languages[j]].score) for d in per_lang]
    hyps, chosen = [], []
    for i in range(batch):
        lang = languages[best[i]]
        h = per_lang[i][lang]
        h.lang_hypotheses = {k: v.text for k, v in per_lang[i].items()}
        h.lang_scores = {k: float(v.score) for k, v in per_lang[i].items()}
        hyps.append(h)
        chosen.append(lang)
    return hyps, chosen, t_avg.cpu()


def script_language(text: str, vocabularies: Mapping[str, Sequence[str]], avg_post: torch.Tensor | None) -> str:
    """Language of a union-softmax hypothesis: most characters unique to one language (then LID (L,), then first)."""
    owners = {c: [lang for lang, labels in vocabularies.items() if c in labels] for c in set(text)}
    counts = {lang: sum(1 for c in text if owners.get(c) == [lang]) for lang in vocabularies}
    if counts and max(counts.values()) > 0:
        return max(counts, key=counts.get)
    languages = list(vocabularies)
    if avg_post is not None:
        return languages[int(avg_post.argmax())]
    return languages[0]
