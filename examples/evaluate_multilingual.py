"""Evaluate a multilingual RNN-T as in Joshi et al. 2021: Tables 2, 4, 5 and the (τ, s_th) sweep of Table 7.

    python examples/evaluate_multilingual.py model_path=ms.nemo \
        'manifests=[en_test.json,hi_test.json]' 'modes=[known,lid_free,oracle]' \
        baseline=vanilla.nemo baseline_mode=lid_free \
        'sweep=[[inf,inf],[100,0.2],[30,0.2],[30,0.5],[10,0.2]]' plot=sweep.png output_json=eval.json
    python examples/evaluate_multilingual.py model_path=ms.nemo 'manifests=[en_test.json,hi_test.json]' \
        'baseline={en:en_mono.nemo,hi:hi_mono.nemo}'

Prints WER and CER per language, the word-weighted average WER and the character-weighted average
CER, WERR and CERR against the baseline, utterance LID accuracy and mean T_avg per mode; then WER /
CER / T_avg / LID accuracy per (τ, s_th) (τ in encoder frames), saved as a PNG. ``baseline`` (named as in ``examples/evaluate_ctc.py``) is a .nemo, or
a mapping ``{lang: mono.nemo}`` of plain NeMo monolingual models (each scored on its own
language). ``output_json`` gets the table as strict JSON (a figure that does not exist is ``null``).
"""

from dataclasses import dataclass, field
from typing import Any

from nemo.collections.asr.models import ASRModel
from nemo.core.config import hydra_runner
from omegaconf import OmegaConf

import nemo_tl  # noqa: F401  (lets NeMo restore nemo_tl models)
from nemo_tl.decoding.multilingual_eval import (
    EvalResult,
    evaluate,
    evaluate_modes,
    format_table,
    language_wers,
    plot_sweep,
    sweep,
    to_json,
)
from nemo_tl.evaluation import fmt
from nemo_tl.utils.atomic import atomic_write
from nemo_tl.utils.training import quiet_restore_logs


def device() -> str:
    """Where the models decode: the GPU when there is one."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class EvalConfig:
    model_path: str = "???"
    manifests: list[str] = field(default_factory=list)
    modes: list[str] = field(default_factory=lambda: ["known", "lid_free", "oracle"])
    baseline: Any = None  # a .nemo, or {lang: monolingual .nemo}
    baseline_mode: str = "known"
    sweep: list[Any] = field(default_factory=list)  # [[τ, s_th], ...], τ in encoder frames; inf allowed
    plot: str = "lid_free_sweep.png"
    batch_size: int = 8
    output_json: str | None = None


def _baseline(cfg: EvalConfig) -> EvalResult | None:
    if cfg.baseline is None:
        return None
    if isinstance(cfg.baseline, str):
        return evaluate(
            ASRModel.restore_from(cfg.baseline, map_location=device()),
            cfg.manifests,
            cfg.baseline_mode,
            cfg.batch_size,
        )
    # One monolingual model per language: score each on its own manifests' utterances.
    hyps, refs, langs = [], [], []
    for lang, path in cfg.baseline.items():
        mono = ASRModel.restore_from(path, map_location=device())
        for manifest in cfg.manifests:
            r = evaluate(mono, [manifest], "known", cfg.batch_size)
            keep = [i for i, x in enumerate(r.langs) if x == lang]
            hyps += [r.hyps[i] for i in keep]
            langs += [lang] * len(keep)
            refs += [r.refs[i] for i in keep]
    return EvalResult("known", language_wers(hyps, refs, langs), None, 1.0, langs, hyps, refs)


@hydra_runner(config_name="EvalConfig", schema=EvalConfig)
def main(cfg: EvalConfig) -> None:
    quiet_restore_logs()
    cfg = OmegaConf.to_object(cfg) if not isinstance(cfg, EvalConfig) else cfg
    model = ASRModel.restore_from(cfg.model_path, map_location=device())
    model.eval()
    baseline = _baseline(cfg)
    rows = {f"baseline ({baseline.mode})": baseline} if baseline is not None else {}
    # A multi-softmax model with a LID head decodes every language once for the LID-free, oracle and sweep rows.
    found, every = evaluate_modes(model, cfg.manifests, cfg.modes, cfg.batch_size, decode_all=bool(cfg.sweep))
    rows.update(found)
    print(format_table(rows, model.languages, baseline))
    if cfg.output_json:
        with atomic_write(cfg.output_json, "w", encoding="utf-8") as f:
            f.write(to_json(rows) + "\n")
        print(f"written: {cfg.output_json}")
    if cfg.sweep:
        settings = [(float(t), float(s)) for t, s in cfg.sweep]
        points = sweep(model, every if every is not None else cfg.manifests, settings, cfg.batch_size)
        print("tau\ts_th\tWER\tCER\tT_avg\tLID acc")
        for p in points:
            print(
                f"{p['tau']:g}\t{p['s_th']:g}\t{fmt(p['wer'])}\t{fmt(p['cer'])}\t{fmt(p['t_avg'])}\t"
                f"{fmt(p['lid_accuracy'], '.1f')}"
            )
        print(f"saved {plot_sweep(points, cfg.plot)}")


if __name__ == "__main__":
    main()
