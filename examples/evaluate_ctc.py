"""Greedy WER and CER of a model per manifest; with a baseline, the forgetting table.

Any NeMo ASR model: CTC, RNN-T, TDT or hybrid (decoded with its RNN-T head), characters or BPE.

    python examples/evaluate_ctc.py model_path=TUNED.nemo manifests=[target_dev.json,source_dev.json]
    python examples/evaluate_ctc.py model_path=TUNED.nemo baseline=BASE.nemo manifests=[...] output=eval.json

Writes ``{manifest_path: {"wer": %, "cer": %, "utterances": n}}`` as JSON to ``output``
(default: beside the model), and with ``baseline`` also the base-vs-tuned table as JSON and Markdown.
The JSON is strict: a figure that does not exist (the relative change against a base WER of 0)
is ``null`` there and "n/a" in the tables.
"""

import os
from dataclasses import dataclass, field

import torch
from nemo.collections.asr.models import ASRModel
from nemo.core.config import hydra_runner

import nemo_tl  # noqa: F401  (lets nemo_tl .nemo files restore)
from nemo_tl.evaluation import evaluate_manifests, forgetting_table, results_table, to_strict_json
from nemo_tl.utils.atomic import atomic_write
from nemo_tl.utils.training import quiet_restore_logs


@dataclass
class EvaluateConfig:
    model_path: str = "???"
    manifests: list[str] = field(default_factory=list)
    baseline: str | None = None
    output: str | None = None
    batch_size: int = 16


def _restore(path: str) -> ASRModel:
    from nemo_tl.transfer.base import load_base_model

    return load_base_model(path, what="model", where="model_path", expected=ASRModel, vocabulary="any")


@hydra_runner(config_name="EvaluateConfig", schema=EvaluateConfig)
def main(cfg: EvaluateConfig) -> None:
    quiet_restore_logs()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = _restore(cfg.model_path).to(device).eval()
    tuned = evaluate_manifests(model, list(cfg.manifests), batch_size=cfg.batch_size)
    print(results_table(tuned, title=cfg.model_path))
    output = cfg.output or os.path.splitext(cfg.model_path)[0] + "_eval.json"
    payload, written = tuned, [output]
    if cfg.baseline:
        base = evaluate_manifests(_restore(cfg.baseline).to(device).eval(), list(cfg.manifests), cfg.batch_size)
        rows, md = forgetting_table(base, tuned)
        print(f"\nBase {cfg.baseline} vs tuned {cfg.model_path} (rel. change n/a where the base WER is 0):\n{md}")
        payload = {"tuned": tuned, "base": base, "comparison": rows}
        written.append(os.path.splitext(output)[0] + ".md")
        with atomic_write(written[-1], "w", encoding="utf-8") as f:
            f.write(md + "\n")
    with atomic_write(output, "w", encoding="utf-8") as f:
        f.write(to_strict_json(payload, indent=2) + "\n")
    print(f"\nwritten: {', '.join(written)}")


if __name__ == "__main__":
    main()
