"""Tiny Conformer ASR models of each NeMo class (CTC, RNN-T, TDT, hybrid; chars or BPE) and tokenizers, for tests."""

from __future__ import annotations

import os

import torch
from omegaconf import OmegaConf

EN_TEXT = (
    "one two three four five six seven eight nine ten the cat sat on the mat a quick brown fox jumps over the lazy dog "
    "she sells sea shells by the sea shore where there is a will there is a way seventeen eighteen nineteen twenty"
)
DE_TEXT = (
    "eins zwei drei vier fünf sechs sieben acht neun zehn die katze sitzt auf der matte größe süß schön "
    "über grüne wiesen läuft der fuchs straße fußball mädchen häuser zwölf dreizehn vierzehn siebzehn"
)
DURATIONS = [0, 1, 2, 3, 4]
HIDDEN = 32


def make_tokenizer(directory: str, text: str, vocab_size: int, kind: str = "bpe") -> str:
    """A SentencePiece BPE tokenizer trained on ``text`` (lines of it repeated) with NeMo's ``create_spt_model``."""
    from nemo.collections.common.tokenizers.sentencepiece_tokenizer import create_spt_model

    os.makedirs(directory, exist_ok=True)
    data = os.path.join(directory, "text.txt")
    words = text.split()
    with open(data, "w", encoding="utf-8") as f:
        for i in range(0, len(words), 4):
            f.write(" ".join(words[i:i + 4]) + "\n")
    create_spt_model(data, vocab_size, sample_size=-1, do_lower_case=True, tokenizer_type=kind, output_dir=directory)
    return directory


def _preprocessor() -> dict:
    return {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor", "normalize": "per_feature",
            "window_size": 0.02, "window_stride": 0.01, "sample_rate": 16000, "features": 16, "n_fft": 512,
            "frame_splicing": 1, "dither": 0.0}


def _encoder() -> dict:
    return {"_target_": "nemo.collections.asr.modules.ConformerEncoder", "feat_in": 16, "n_layers": 2,
            "d_model": HIDDEN, "subsampling": "striding", "subsampling_factor": 4, "subsampling_conv_channels": 16,
            "ff_expansion_factor": 2, "self_attention_model": "rel_pos", "n_heads": 2, "conv_kernel_size": 9,
            "dropout": 0.0, "dropout_pre_encoder": 0.0, "dropout_emb": 0.0, "dropout_att": 0.0}


def _ctc_decoder(labels: list[str] | None) -> dict:
    return {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": HIDDEN,
            "num_classes": len(labels) if labels else -1, "vocabulary": list(labels or [])}


def _rnnt_sections(labels: list[str] | None, tdt: bool) -> dict:
    n = len(labels) if labels else -1
    sections = {
        "model_defaults": {"enc_hidden": HIDDEN, "pred_hidden": HIDDEN, "joint_hidden": HIDDEN},
        "decoder": {"_target_": "nemo.collections.asr.modules.RNNTDecoder", "normalization_mode": None,
                    "random_state_sampling": False, "blank_as_pad": True, "vocab_size": n,
                    "prednet": {"pred_hidden": HIDDEN, "pred_rnn_layers": 1, "t_max": None, "dropout": 0.0}},
        "joint": {"_target_": "nemo.collections.asr.modules.RNNTJoint", "log_softmax": None, "preserve_memory": False,
                  "fuse_loss_wer": False, "fused_batch_size": 4, "num_classes": n, "vocabulary": list(labels or []),
                  "jointnet": {"joint_hidden": HIDDEN, "activation": "relu", "dropout": 0.0,
                               "encoder_hidden": HIDDEN, "pred_hidden": HIDDEN}},
        "decoding": {"strategy": "greedy_batch", "greedy": {"max_symbols": 5}},
        "loss": {"loss_name": "default"},
    }
    if tdt:
        sections["model_defaults"]["tdt_durations"] = list(DURATIONS)
        sections["joint"]["num_extra_outputs"] = len(DURATIONS)
        sections["loss"] = {"loss_name": "tdt", "tdt_kwargs": {"durations": list(DURATIONS), "sigma": 0.02,
                                                              "omega": 0.1}}
        sections["decoding"].update({"model_type": "tdt", "durations": list(DURATIONS)})
    return sections


def model_config(kind: str, *, labels: list[str] | None = None, tokenizer_dir: str | None = None,
                 tdt: bool = False):
    """The ``model`` config of a tiny 2-layer Conformer model: ``kind`` is ctc | rnnt | hybrid."""
    cfg = {"sample_rate": 16000, "preprocessor": _preprocessor(), "encoder": _encoder(), "spec_augment": None,
           "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.0}}
    if labels is not None:
        cfg["labels"] = list(labels)
    if tokenizer_dir is not None:
        cfg["tokenizer"] = {"dir": tokenizer_dir, "type": "bpe"}
    if kind == "ctc":
        cfg["decoder"] = _ctc_decoder(labels)
    else:
        cfg.update(_rnnt_sections(labels, tdt))
    if kind == "hybrid":
        cfg["aux_ctc"] = {"ctc_loss_weight": 0.3, "use_cer": False, "ctc_reduction": "mean_batch",
                          "decoder": _ctc_decoder(None), "decoding": {"strategy": "greedy"}}
    return OmegaConf.create(cfg)


def build_base(nemo_class: type, path: str, **config) -> str:
    """Build a ``nemo_class`` model from :func:`model_config` with random non-zero weights, save it; return ``path``."""
    kind = {"EncDecCTCModel": "ctc", "EncDecCTCModelBPE": "ctc", "EncDecHybridRNNTCTCBPEModel": "hybrid"}
    torch.manual_seed(0)
    model = nemo_class(cfg=model_config(kind.get(nemo_class.__name__, "rnnt"), **config))
    with torch.no_grad():  # non-zero biases and blank rows, so that a copy can be told from a fresh start
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.uniform_(-0.5, 0.5)
    model.save_to(path)
    return path


def fit_steps(model, manifest: str, steps: int = 2, **trainer_kwargs):
    """Train ``model`` (character or subword, CTC or RNN-T) ``steps`` steps on ``manifest``; returns the trainer."""
    from tests.helpers import cpu_trainer

    trainer = cpu_trainer(steps, **trainer_kwargs)
    model.set_trainer(trainer)
    data = {"manifest_filepath": manifest, "sample_rate": 16000, "batch_size": 4, "shuffle": True, "num_workers": 0}
    if getattr(model, "tokenizer", None) is None:
        data["labels"] = list(model.cfg.labels)
    model.setup_training_data(data)
    trainer.fit(model)
    return trainer
