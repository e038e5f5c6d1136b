"""Transcribe audio with any NeMo ASR model, nemo_tl models included.

What NeMo's ``examples/asr/transcribe_speech.py`` offers, in a process that imported
nemo_tl (so that nemo_tl ``.nemo`` files restore):

    python -m nemo_tl.transcribe model_path=M.nemo dataset_manifest=dev.json [output_filename=out.json]
    python -m nemo_tl.transcribe model_path=M.nemo audio_dir=wavs/ batch_size=16
    python -m nemo_tl.transcribe pretrained_name=stt_en_quartznet15x5 dataset_manifest=dev.json

With ``calculate_wer=true`` and a manifest that has ``text``, WER (or CER with ``use_cer=true``)
is printed. ``lang=hi`` decodes a multi-softmax RNN-T with that language's decoder only.

Before any model is loaded, ``model_path`` must be a complete .nemo archive and every line of
``dataset_manifest`` must give audio NeMo can read (JSON, audio present, readable, mono, finite):
otherwise an InputError names the file (and line). Transcripts are not checked: transcription
does not read them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch
from nemo.collections.asr.metrics.wer import word_error_rate
from nemo.collections.asr.parts.utils import transcribe_utils
from nemo.core.config import hydra_runner
from omegaconf import OmegaConf

import nemo_tl  # noqa: F401  (registers the nemo_tl target prefix)
from nemo_tl.data.validate import check_manifests
from nemo_tl.errors import input_error
from nemo_tl.utils.nemo_file import check_nemo_file


@dataclass
class TranscriptionConfig:
    model_path: str | None = None
    pretrained_name: str | None = None
    audio_dir: str | None = None
    dataset_manifest: str | None = None
    output_filename: str | None = None
    batch_size: int = 16
    num_workers: int = 0
    append_pred: bool = False
    pred_name_postfix: str | None = None
    audio_type: str = "wav"
    presort_manifest: bool = True
    cuda: int | None = None
    lang: str | None = None
    calculate_wer: bool = False
    use_cer: bool = False
    # read by NeMo's transcribe_utils.write_transcription
    decoding: Any = field(default_factory=lambda: {"beam": {"return_best_hypothesis": True}})


def transcribe(cfg: TranscriptionConfig) -> str:
    """Run the transcription described by ``cfg``; returns the output manifest path."""
    cfg = OmegaConf.structured(cfg) if not OmegaConf.is_config(cfg) else cfg
    if not cfg.model_path and not cfg.pretrained_name:
        raise input_error("no model given", where="model_path", fix="set model_path=M.nemo or pretrained_name=NAME")
    if not cfg.audio_dir and not cfg.dataset_manifest:
        raise input_error("no audio given", where="dataset_manifest", fix="set dataset_manifest=... or audio_dir=...")
    if cfg.model_path and cfg.model_path != "None" and "://" not in cfg.model_path:
        check_nemo_file(cfg.model_path, where="model_path")
    if cfg.dataset_manifest and not (cfg.audio_dir and not cfg.append_pred):  # NeMo reads the manifest
        check_manifests(cfg.dataset_manifest, audio_only=True, where="dataset_manifest")
    device = transcribe_utils.get_inference_device(cuda=cfg.cuda, allow_mps=False)
    model, model_name = transcribe_utils.setup_model(cfg, device)
    model.eval()
    filepaths, sorted_manifest = transcribe_utils.prepare_audio_data(cfg)
    kwargs = {"lang": cfg.lang} if cfg.lang else {}
    with torch.inference_mode():
        hyps = model.transcribe(sorted_manifest or filepaths, batch_size=cfg.batch_size,
                                num_workers=cfg.num_workers, verbose=False, **kwargs)
    if isinstance(hyps, tuple):
        hyps = hyps[0]
    if sorted_manifest:
        hyps = transcribe_utils.restore_transcription_order(cfg.dataset_manifest, hyps)
    cfg = transcribe_utils.compute_output_filename(cfg, model_name)
    output, pred_key = transcribe_utils.write_transcription(hyps, cfg, model_name, filepaths=filepaths)
    print(f"transcripts written to {output}")
    if cfg.calculate_wer and cfg.dataset_manifest:
        refs, preds = [], []
        with open(output, encoding="utf-8") as f:
            for line in f:
                item = json.loads(line)
                if "text" in item:
                    refs.append(item["text"].strip().lower())
                    preds.append(item[pred_key].strip())
        metric = "CER" if cfg.use_cer else "WER"
        print(f"{metric}: {100 * word_error_rate(preds, refs, use_cer=cfg.use_cer):.2f}% over {len(refs)} utterances")
    return output


@hydra_runner(config_name="TranscriptionConfig", schema=TranscriptionConfig)
def main(cfg: TranscriptionConfig) -> None:
    from nemo_tl.utils.training import quiet_restore_logs

    quiet_restore_logs()
    transcribe(cfg)


if __name__ == "__main__":
    main()
