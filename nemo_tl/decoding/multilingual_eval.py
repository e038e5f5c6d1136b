"""Multilingual evaluation (Joshi et al. 2021, Tables 2, 4, 5, 7): WER and CER per language, averages, WERR, LID, T_avg.

Pure metric functions (:func:`language_wers`, :func:`language_cers`, :func:`werr`) and a runner (:func:`evaluate`) that
decodes manifests with a :class:`~nemo_tl.models.MultiSoftmaxRNNTModel` in one of three modes:

- ``known``: the language of each utterance is given (``transcribe(lang=...)``);
- ``lid_free``: no language; the model's LID picks it (early stopping with τ, s_th);
- ``oracle``: every language's decoder runs (no early stopping) and the true language's
  hypothesis is scored, which separates recognition errors from LID errors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from nemo.collections.asr.metrics.wer import word_error_rate_detail

from nemo_tl.data.manifest import read_manifest
from nemo_tl.decoding.lid_free import choose_language, early_stopping
from nemo_tl.errors import input_error
from nemo_tl.evaluation import fmt, to_strict_json

__all__ = [
    "MODES",
    "AllLanguagesDecoding",
    "EvalResult",
    "decode_all_languages",
    "evaluate",
    "evaluate_modes",
    "format_table",
    "language_cers",
    "language_error_rates",
    "language_wers",
    "plot_sweep",
    "sweep",
    "to_json",
    "werr",
]

MODES = ("known", "lid_free", "oracle")


def language_error_rates(
    hyps: Sequence[str], refs: Sequence[str], langs: Sequence[str], use_cer: bool = False
) -> dict[str, tuple[float, int]]:
    """WER (or CER) per language and weighted average (key ``"avg"``): ``{lang: (rate %, reference units)}``.

    Units are words (WER) or characters (CER, spaces included, as NeMo's ``use_cer``). The average
    weights each language by its number of reference units (Σ errors / Σ units), as Joshi et al.
    Table 2 does for words.
    """
    out: dict[str, tuple[float, int]] = {}
    errors_total = units_total = 0.0
    for lang in dict.fromkeys(langs):
        idx = [i for i, x in enumerate(langs) if x == lang]
        rate, units, *_ = word_error_rate_detail([hyps[i] for i in idx], [refs[i] for i in idx], use_cer=use_cer)
        out[lang] = (100.0 * rate, int(units))
        errors_total += rate * units
        units_total += units
    out["avg"] = (100.0 * errors_total / units_total if units_total else math.nan, int(units_total))
    return out


def language_wers(hyps: Sequence[str], refs: Sequence[str], langs: Sequence[str]) -> dict[str, tuple[float, int]]:
    """WER per language and word-weighted average (key ``"avg"``): ``{lang: (WER %, reference words)}``."""
    return language_error_rates(hyps, refs, langs, use_cer=False)


def language_cers(hyps: Sequence[str], refs: Sequence[str], langs: Sequence[str]) -> dict[str, tuple[float, int]]:
    """CER per language and character-weighted average (key ``"avg"``): ``{lang: (CER %, reference characters)}``."""
    return language_error_rates(hyps, refs, langs, use_cer=True)


def werr(wer: float, baseline_wer: float) -> float:
    """Relative WER reduction in % against a baseline: 100 (WER_b − WER) / WER_b (positive = better)."""
    return 100.0 * (baseline_wer - wer) / baseline_wer if baseline_wer else math.nan


@dataclass
class EvalResult:
    """One model in one mode: WERs, utterance LID accuracy (%), mean T_avg, the raw outputs and CERs.

    ``cers`` is computed from ``hyps``, ``refs`` and ``langs`` when not given.
    """

    mode: str
    wers: dict[str, tuple[float, int]]
    lid_accuracy: float | None
    t_avg: float
    langs: list[str] = field(repr=False, default_factory=list)
    hyps: list[str] = field(repr=False, default_factory=list)
    refs: list[str] = field(repr=False, default_factory=list)
    predicted: list[str | None] = field(repr=False, default_factory=list)
    cers: dict[str, tuple[float, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.cers and self.langs:
            self.cers = language_cers(self.hyps, self.refs, self.langs)


def _load(manifests: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    audio, refs, langs = [], [], []
    for path in manifests:
        for number, entry in enumerate(read_manifest(path), start=1):
            if not entry.get("lang"):
                raise input_error("missing key 'lang'", where=f"{path}:{number}", fix='add "lang" to every line')
            audio.append(entry["audio_filepath"])
            refs.append(entry.get("text", ""))
            langs.append(entry["lang"])
    return audio, refs, langs


def evaluate(
    model,
    manifests: Sequence[str],
    mode: str = "known",
    batch_size: int = 8,
    min_frames: float | None = None,
    threshold: float | None = None,
) -> EvalResult:
    """Decode ``manifests`` (every line with ``lang``) with ``model`` in ``mode`` and score it.

    ``model`` is a MultiSoftmaxRNNTModel, or a plain NeMo model (scored as ``known``; no LID).
    ``min_frames`` / ``threshold`` override τ / s_th for ``lid_free``.
    """
    if mode not in MODES:
        raise input_error(f"unknown mode {mode!r}", where="mode", fix=f"use one of {', '.join(MODES)}")
    audio, refs, langs = _load(manifests)
    multilingual = hasattr(model, "lid_log_posteriors")
    if not multilingual:
        out = model.transcribe(audio, batch_size=batch_size, verbose=False)
        hyps = [h.text if hasattr(h, "text") else str(h) for h in out]
        return EvalResult(mode, language_wers(hyps, refs, langs), None, 1.0, langs, hyps, refs, [None] * len(hyps))
    if mode == "known":
        out = model.transcribe(audio, batch_size=batch_size, verbose=False, lang=langs)
    elif mode == "lid_free":
        out = model.transcribe(audio, batch_size=batch_size, verbose=False, min_frames=min_frames, threshold=threshold)
    else:
        if not model.is_multisoftmax:
            raise input_error(
                "oracle mode needs per-language decoders", where="mode", fix="use architecture multisoftmax"
            )
        out = model.transcribe(audio, batch_size=batch_size, verbose=False, min_frames=math.inf)
    hyps = [h.lang_hypotheses[lang] if mode == "oracle" else h.text for h, lang in zip(out, langs)]
    predicted = [h.lang for h in out]
    lid = 100.0 * sum(p == t for p, t in zip(predicted, langs)) / len(langs) if mode == "lid_free" else None
    t_avg = sum(h.t_avg for h in out) / len(out)
    return EvalResult(mode, language_wers(hyps, refs, langs), lid, t_avg, langs, hyps, refs, predicted)


@dataclass
class AllLanguagesDecoding:
    """A multi-softmax model's LID-free decoding with every language's decoder run to the end, once.

    Every LID-free result follows from it without decoding again: the row at any (τ, s_th) (:meth:`at`: the
    early-stopping rule and the language choice rerun on the kept frame LID posteriors) and the oracle row
    (:meth:`oracle`). :func:`decode_all_languages` builds it. The language chosen is always a decoder still on,
    and a decoder still on decodes every frame, so :meth:`at` gives what decoding at (τ, s_th) gives: exactly
    with the batched all-languages decoder (shared prediction network, greedy); with one decoder after another
    (language-specific prediction networks, beam search), up to the floating-point effects of batching other
    utterances together.
    """

    languages: list[str]
    refs: list[str]
    langs: list[str]
    hypotheses: list[dict[str, str]]  # per utterance {language: text}
    scores: list[dict[str, float]]  # per utterance {language: hypothesis log-score}
    avg_post: torch.Tensor  # (N, L) average LID posteriors
    log_post: torch.Tensor  # (N, T, L) frame LID log-posteriors, padded
    lengths: torch.Tensor  # (N,) encoder frames

    def at(self, min_frames: float, threshold: float) -> EvalResult:
        """The LID-free result at (τ, s_th) = (``min_frames``, ``threshold``)."""
        t_off, active, t_avg = early_stopping(self.log_post, self.lengths, min_frames=min_frames, threshold=threshold)
        predicted = [self.languages[j] for j in choose_language(self.avg_post, active, t_off).tolist()]
        hyps = [h[lang] for h, lang in zip(self.hypotheses, predicted)]
        lid = 100.0 * sum(p == t for p, t in zip(predicted, self.langs)) / len(self.langs)
        return EvalResult("lid_free", language_wers(hyps, self.refs, self.langs), lid, float(t_avg.mean()),
                          self.langs, hyps, self.refs, predicted)

    def oracle(self) -> EvalResult:
        """Every language's decoder to the end, the true language's hypothesis scored."""
        hyps = [h[lang] for h, lang in zip(self.hypotheses, self.langs)]
        return EvalResult("oracle", language_wers(hyps, self.refs, self.langs), None, float(len(self.languages)),
                          self.langs, hyps, self.refs, list(self.langs))

    def write_jsonl(self, path: str) -> str:
        """One JSON line per utterance: reference, language, every language's hypothesis and score, the average
        LID posteriors and the encoder frames (to study language-choice rules without decoding again)."""
        import json

        with open(path, "w", encoding="utf-8") as f:
            for i, (ref, lang) in enumerate(zip(self.refs, self.langs)):
                f.write(json.dumps({
                    "text": ref, "lang": lang, "hypotheses": self.hypotheses[i], "scores": self.scores[i],
                    "lid_posteriors": dict(zip(self.languages, self.avg_post[i].tolist())),
                    "frames": int(self.lengths[i]),
                }, ensure_ascii=False) + "\n")
        return path


def _decodes_all_languages(model) -> bool:
    """Whether :func:`decode_all_languages` takes ``model``: a multi-softmax model with a LID head."""
    return bool(getattr(model, "is_multisoftmax", False)) and getattr(model, "lid_head", None) is not None


def decode_all_languages(model, manifests: Sequence[str], batch_size: int = 8) -> AllLanguagesDecoding:
    """Decode ``manifests`` (every line with ``lang``) with every language of a multi-softmax ``model`` with a LID head."""
    if not _decodes_all_languages(model):
        raise input_error("decoding every language needs a multi-softmax model with a LID head", where="model",
                          fix="use architecture multisoftmax with lid.enabled: true, or evaluate() per setting")
    from nemo_tl.multilingual.transcribe import MultilingualTranscribeConfig

    audio, refs, langs = _load(manifests)
    trcfg = MultilingualTranscribeConfig(batch_size=batch_size, verbose=False, keep_lid_posteriors=True)
    out = model.transcribe(audio, override_config=trcfg, min_frames=math.inf)
    languages = list(model.languages)
    return AllLanguagesDecoding(
        languages, refs, langs,
        hypotheses=[dict(h.lang_hypotheses) for h in out],
        scores=[dict(h.lang_scores) for h in out],
        avg_post=torch.tensor([[h.lang_posteriors[lang] for lang in languages] for h in out]),
        log_post=torch.nn.utils.rnn.pad_sequence([h.lid_log_posteriors for h in out], batch_first=True),
        lengths=torch.tensor([h.lid_log_posteriors.shape[0] for h in out]),
    )


def evaluate_modes(
    model, manifests: Sequence[str], modes: Sequence[str], batch_size: int = 8, decode_all: bool = False
) -> tuple[dict[str, EvalResult], AllLanguagesDecoding | None]:
    """``{mode: EvalResult}`` for each of ``modes``, and the all-languages decoding where one was made.

    A multi-softmax model with a LID head decodes every language once (:func:`decode_all_languages`) for the
    ``lid_free`` row (at the model's τ, s_th) and the ``oracle`` row, and also when ``decode_all`` (to pass to
    :func:`sweep`); every other row, and every row of other models, is decoded by :func:`evaluate`.
    """
    every = None
    if _decodes_all_languages(model) and (decode_all or {"lid_free", "oracle"} & set(modes)):
        every = decode_all_languages(model, manifests, batch_size)
    rows = {}
    for mode in modes:
        if every is not None and mode == "lid_free":
            rows[mode] = every.at(model.multilingual.lid_free.min_frames, model.multilingual.lid_free.threshold)
        elif every is not None and mode == "oracle":
            rows[mode] = every.oracle()
        else:
            rows[mode] = evaluate(model, manifests, mode, batch_size)
    return rows, every


def sweep(
    model,
    manifests: Sequence[str] | AllLanguagesDecoding,
    settings: Sequence[tuple[float, float]],
    batch_size: int = 8,
) -> list[dict[str, float]]:
    """LID-free average WER / CER, T_avg and LID accuracy for each (τ, s_th) (Joshi et al. Table 7).

    A multi-softmax model with a LID head is decoded once (:func:`decode_all_languages`; or pass its result as
    ``manifests``) and every point follows from that decoding; other models are decoded once per setting.
    """
    if isinstance(manifests, AllLanguagesDecoding):
        every = manifests
    elif _decodes_all_languages(model):
        every = decode_all_languages(model, manifests, batch_size)
    else:
        return [_sweep_row(tau, s_th, evaluate(model, manifests, "lid_free", batch_size, min_frames=tau,
                                              threshold=s_th)) for tau, s_th in settings]
    return [_sweep_row(tau, s_th, every.at(tau, s_th)) for tau, s_th in settings]


def _sweep_row(tau: float, s_th: float, r: EvalResult) -> dict[str, float]:
    """One point of :func:`sweep`: τ, s_th, average WER and CER, T_avg, LID accuracy."""
    return {"tau": tau, "s_th": s_th, "wer": r.wers["avg"][0], "cer": r.cers["avg"][0], "t_avg": r.t_avg,
            "lid_accuracy": r.lid_accuracy}


def format_table(rows: Mapping[str, EvalResult], languages: Sequence[str], baseline: EvalResult | None = None) -> str:
    """Rows of WER per language and its word-weighted average, CER per language and its character-weighted
    average, WERR and CERR against ``baseline``, LID accuracy and T_avg."""
    head = ["model", *languages, "Avg.", *(f"{lang} CER" for lang in languages), "Avg. CER", "WERR", "CERR",
            "LID acc", "T_avg"]
    lines = ["\t".join(head)]
    for name, r in rows.items():
        cells = [name]
        for rates in (r.wers, r.cers):
            cells += [fmt(rates[lang][0]) if lang in rates else "-" for lang in languages]
            cells.append(fmt(rates["avg"][0]) if "avg" in rates else "n/a")
        for key in ("wers", "cers"):
            avg, base = getattr(r, key).get("avg"), getattr(baseline, key).get("avg") if baseline is not None else None
            cells.append(fmt(werr(avg[0], base[0])) if avg is not None and base is not None else "-")
        cells.append(fmt(r.lid_accuracy, ".1f") if r.lid_accuracy is not None else "-")
        cells.append(fmt(r.t_avg))
        lines.append("\t".join(cells))
    return "\n".join(lines)


def to_json(rows: Mapping[str, EvalResult]) -> str:
    """The rows as strict JSON (a WER or WERR that does not exist, such as NaN, is ``null``)."""
    return to_strict_json(
        {
            k: {"mode": r.mode, "wers": r.wers, "cers": r.cers, "lid_accuracy": r.lid_accuracy, "t_avg": r.t_avg}
            for k, r in rows.items()
        },
        indent=2,
    )


def plot_sweep(rows: Sequence[Mapping[str, float]], path: str) -> str:
    """Save the (τ, s_th) trade-off as a PNG: WER, CER and LID accuracy against T_avg, points labelled (τ, s_th)."""
    from nemo_tl.utils.extras import require

    require("matplotlib", "plots").use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    t_avg = [r["t_avg"] for r in rows]
    panels = (("wer", "WER [%]"), ("cer", "CER [%]"), ("lid_accuracy", "LID accuracy [%]"))
    for ax, (key, label) in zip(axes, panels):
        ax.plot(t_avg, [r[key] for r in rows], "o")
        for r in rows:
            ax.annotate(f"τ={r['tau']:g}, s_th={r['s_th']:g}", (r["t_avg"], r[key]), fontsize=7)
        ax.set_xlabel("T_avg (decoders running on average)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle("LID-free early stopping: trade-off of τ and s_th")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
