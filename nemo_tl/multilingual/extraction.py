"""``extract_language``: one language of a multilingual RNN-T as a plain NeMo ``EncDecRNNTModel``."""

from __future__ import annotations

import torch
from nemo.collections.asr.models.rnnt_models import EncDecRNNTModel
from omegaconf import OmegaConf

from nemo_tl.errors import input_error
from nemo_tl.multilingual.config import MULTILINGUAL_KEYS, NEMO_DECODER, NEMO_JOINT

__all__ = ["extract_language"]


def extract_language(model, lang: str) -> EncDecRNNTModel:
    """A plain NeMo EncDecRNNTModel for ``lang``: shared encoder/preprocessor + that language's decoder and joint.

    ``model`` is a :class:`~nemo_tl.models.MultiSoftmaxRNNTModel`. Multi-softmax: the language's
    embedding, (shared or LSP) prediction network and joint. Vanilla: the union model with its
    embedding and softmax cut to ``lang``'s labels + blank. The result saves as ``.nemo``, restores
    without nemo_tl and fine-tunes as a monolingual model.
    """
    if lang not in model.multilingual.vocabularies:
        raise input_error(
            f"unknown language {lang!r} (known: {', '.join(model.languages)})",
            where="extract_language",
            fix="use one of the model's languages",
        )
    if model.architecture == "onehot":
        raise input_error(
            "the onehot model's encoder needs the language one-hot, so it has no plain NeMo equivalent",
            where="model.architecture",
            fix="extract from a multisoftmax (or vanilla) model",
        )
    labels = model.vocabularies[lang]
    cfg = OmegaConf.to_container(model.cfg, resolve=True)
    for key in (*MULTILINGUAL_KEYS, "transfer"):
        cfg.pop(key, None)
    cfg["target"] = f"{EncDecRNNTModel.__module__}.{EncDecRNNTModel.__name__}"
    cfg["labels"] = labels
    dec = {k: v for k, v in cfg["decoder"].items() if k not in ("vocab_sizes", "language_specific_prediction")}
    dec.update({"_target_": NEMO_DECODER, "vocab_size": len(labels)})
    joint = {k: v for k, v in cfg["joint"].items() if k != "vocabularies"}
    joint.update({"_target_": NEMO_JOINT, "num_classes": len(labels), "vocabulary": labels})
    cfg["decoder"], cfg["joint"] = dec, joint
    for key in ("train_ds", "validation_ds", "test_ds"):
        if cfg.get(key) is not None:
            ds = {k: v for k, v in cfg[key].items() if k != "mixing"}
            ds.update({"manifest_filepath": None, "labels": labels})
            cfg[key] = ds
    mono = EncDecRNNTModel(cfg=OmegaConf.create(cfg))
    mono.preprocessor.load_state_dict(model.preprocessor.state_dict())
    mono.encoder.load_state_dict(model.encoder.state_dict())
    if model.is_multisoftmax:
        mono.decoder.load_state_dict(model.decoder[lang].state_dict())
        mono.joint.load_state_dict(model.joint[lang].state_dict())
        return mono
    union = list(model.cfg.labels)
    keep = torch.tensor([union.index(c) for c in labels] + [len(union)])  # + blank
    dec_state = model.decoder.state_dict()
    dec_state["prediction.embed.weight"] = dec_state["prediction.embed.weight"][keep]
    mono.decoder.load_state_dict(dec_state)
    joint_state = model.joint.state_dict()
    last = max(k for k in joint_state if k.startswith("joint_net.") and k.endswith(".weight"))
    for key in (last, last.replace(".weight", ".bias")):
        joint_state[key] = joint_state[key][keep]
    mono.joint.load_state_dict(joint_state)
    return mono
