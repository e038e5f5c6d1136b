"""Starting a multilingual RNN-T from a pretrained NeMo ASR model.

Three ways in, one set of checks:

- ``model.transfer`` (``base_model``, ``vocabulary``, ``new_label_init``, ``freeze_encoder_blocks``,
  ``reinitialize``) and :meth:`MultiSoftmaxRNNTModel.from_base`: :func:`config_from_base` takes the
  base's preprocessor and encoder into the config, :func:`start_from_base` copies their weights and,
  where the base is an RNN-T, each language's prediction-network embedding and joint rows of the labels
  it shares with the base (:func:`nemo_tl.transfer.vocabulary.transfer_rnnt_rows`);
- NeMo's top-level ``init_from_nemo_model`` / ``init_from_pretrained_model`` (string or dict form with
  ``include`` / ``exclude``), through NeMo's own ``maybe_init_from_pretrained_checkpoint``:
  :func:`nemo_init_sources` loads and checks every base first and hands NeMo the loaded models.

The base is any NeMo ``ASRModel`` (CTC, RNN-T, hybrid; characters or subwords), loaded with
``ASRModel.restore_from`` / ``ASRModel.from_pretrained`` (whose name list covers every ASR class). A
base whose preprocessor (sample rate, features, window) differs from the config's is an InputError.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from nemo.collections.asr.models import ASRModel, EncDecRNNTModel
from nemo.utils import logging
from omegaconf import DictConfig, OmegaConf, open_dict

from nemo_tl.compat import encoder_output_width
from nemo_tl.config_checks import to_plain
from nemo_tl.errors import input_error
from nemo_tl.transfer.base import load_base_model
from nemo_tl.transfer.config import TransferConfig, describe_model
from nemo_tl.transfer.tokens import model_tokens
from nemo_tl.transfer.vocabulary import transfer_decoder_rows, transfer_rnnt_rows
from nemo_tl.utils.configs import config_file

__all__ = [
    "INIT_KEYS",
    "check_transfer",
    "config_from_base",
    "from_base_config",
    "load_multilingual_base",
    "nemo_init_sources",
    "preprocessor_mismatches",
    "start_from_base",
]

INIT_KEYS = ("init_from_nemo_model", "init_from_pretrained_model")
# What fixes the features the encoder was trained on.
_PREPROCESSOR_KEYS = ("_target_", "sample_rate", "features", "window_size", "window_stride", "n_fft")
_DATASET_SECTIONS = ("train_ds", "validation_ds", "test_ds")


def _plain(cfg: Any) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(to_plain(cfg) or {})


def load_multilingual_base(spec: str | ASRModel, where: str = "model.transfer.base_model") -> ASRModel:
    """A pretrained NeMo ASR model (CTC, RNN-T or hybrid; chars or subwords): object, ``.nemo`` path or name."""
    return load_base_model(spec, what="base model", where=where, expected=(ASRModel,), vocabulary="any")


def check_transfer(transfer: TransferConfig, architecture: str) -> None:
    """InputError for ``model.transfer`` keys that do not apply to a multilingual model."""
    where = "model.transfer"
    if transfer.vocabulary == "same":
        raise input_error(
            "vocabulary: same needs the base's labels, but every language has its own",
            where=f"{where}.vocabulary", fix="use keep_shared (copy the rows of the labels shared with the base) or reinit",
        )
    if transfer.new_label_init == "compose":
        raise input_error(
            "new_label_init: compose splits new subword pieces; a multilingual model's labels are characters",
            where=f"{where}.new_label_init", fix="use zero or random",
        )
    for key, default in (("adapters", None), ("regularization", TransferConfig().regularization)):
        if getattr(transfer, key) != default:
            raise input_error(f"{key} are not supported by the multilingual model", where=f"{where}.{key}",
                              fix=f"remove {where}.{key}")
    if transfer.base_model is not None and architecture == "onehot":
        raise input_error(
            "the onehot model's encoder takes the features plus the language one-hot, so no base encoder fits it",
            where="model.architecture", fix="start a multisoftmax or vanilla model from the base",
        )


def preprocessor_mismatches(base_cfg: Any, cfg: Any) -> list[str]:
    """``model.<key>: base has X, config asks Y`` for each preprocessor key (and ``sample_rate``) that differs."""
    base_cfg, cfg = _plain(base_cfg), _plain(cfg)
    out = []
    if cfg.get("sample_rate") is not None and cfg["sample_rate"] != base_cfg.get("sample_rate"):
        out.append(f"model.sample_rate: base has {base_cfg.get('sample_rate')!r}, config asks {cfg['sample_rate']!r}")
    base_pre, pre = base_cfg.get("preprocessor") or {}, cfg.get("preprocessor") or {}
    for key in _PREPROCESSOR_KEYS:
        if key in pre and key in base_pre and pre[key] != base_pre[key]:
            out.append(f"model.preprocessor.{key}: base has {base_pre[key]!r}, config asks {pre[key]!r}")
    return out


def _raise_mismatches(problems: list[str], what: str) -> None:
    if problems:
        raise input_error(
            f"{what} computes different features than the config asks:\n    " + "\n    ".join(problems),
            where="model.preprocessor",
            fix="make the listed keys equal to the base's, or leave model.preprocessor out (from_base / "
            "model.transfer take it from the base)",
        )


def config_from_base(cfg: DictConfig, base: ASRModel) -> DictConfig:
    """``cfg`` (resolved) with the base's sample rate, preprocessor and encoder; ``model_defaults.enc_hidden``
    its encoder's output width. An RNN-T base also gives the prediction-network and joint sizes
    (``pred_hidden``, ``pred_rnn_layers``, ``joint_hidden``, activation), so its rows can be copied.

    Raises:
        InputError: the config's preprocessor differs from the base's (:func:`preprocessor_mismatches`).
    """
    cfg = OmegaConf.create(_plain(cfg))
    base_cfg = OmegaConf.create(_plain(base.cfg))
    _raise_mismatches(preprocessor_mismatches(base_cfg, cfg), "the base model")
    sample_rate = base_cfg.get("sample_rate", 16000)
    with open_dict(cfg):
        cfg.sample_rate = sample_rate
        cfg.preprocessor = OmegaConf.merge(base_cfg.preprocessor, cfg.get("preprocessor") or {})
        cfg.encoder = base_cfg.encoder
        if cfg.get("spec_augment") is None and base_cfg.get("spec_augment") is not None:
            cfg.spec_augment = base_cfg.spec_augment
        for section in _DATASET_SECTIONS:
            if cfg.get(section) is not None:
                cfg[section].sample_rate = sample_rate
        defaults = cfg.get("model_defaults") or OmegaConf.create({})
        defaults.enc_hidden = encoder_output_width(base.encoder)
        if isinstance(base, EncDecRNNTModel):
            base_defaults = base_cfg.get("model_defaults") or {}
            prednet = base_cfg.decoder.prednet
            jointnet = base_cfg.joint.jointnet
            defaults.pred_hidden = base_defaults.get("pred_hidden", prednet.pred_hidden)
            defaults.joint_hidden = base_defaults.get("joint_hidden", jointnet.joint_hidden)
            cfg.decoder.prednet.pred_hidden = defaults.pred_hidden
            cfg.decoder.prednet.pred_rnn_layers = prednet.get("pred_rnn_layers", 1)
            cfg.joint.jointnet.joint_hidden = defaults.joint_hidden
            cfg.joint.jointnet.activation = jointnet.get("activation", "relu")
        cfg.model_defaults = defaults
    return cfg


@torch.no_grad()
def start_from_base(model: Any, base: ASRModel, transfer: TransferConfig) -> dict[str, dict[str, int]]:
    """Copy the base's preprocessor and encoder into ``model`` and, for an RNN-T base, the head rows per language.

    ``model`` is a :class:`~nemo_tl.models.MultiSoftmaxRNNTModel` built from :func:`config_from_base`.
    With ``vocabulary: keep_shared`` and an RNN-T base, every language's (multi-softmax) or the union's
    (vanilla) prediction network and joint start from the base's: shared labels' embedding and joint
    output rows copied by string, new labels per ``new_label_init``. A language that shares no label
    with the base keeps its fresh head and is named in a warning.

    With an auxiliary CTC head (``model.aux_ctc``) and a base with a CTC decoder (CTC or hybrid), the
    head's rows of the shared labels come from that decoder (``"aux_ctc"`` in the report).

    Returns:
        ``{lang: {"shared": n, "new": m}}`` for every head whose rows were copied.
    """
    model.preprocessor.load_state_dict(base.preprocessor.state_dict())
    model.encoder.load_state_dict(base.encoder.state_dict())
    if transfer.vocabulary == "reinit":
        return {}
    base_tokens = model_tokens(base)
    report = {}
    base_ctc = _ctc_decoder(base)
    if model.aux_ctc is not None and base_ctc is not None:  # the auxiliary CTC head starts from the base's
        report["aux_ctc"] = transfer_decoder_rows(
            base_ctc, base_tokens, model.aux_ctc.decoder, list(model.cfg.labels), new_label_init=transfer.new_label_init
        )
    if not isinstance(base, EncDecRNNTModel):
        return report
    if model.is_multisoftmax:
        heads = {lang: (model.decoder[lang], model.joint[lang], labels) for lang, labels in model.vocabularies.items()}
    else:
        heads = {"union": (model.decoder, model.joint, list(model.cfg.labels))}
    for lang, (decoder, joint, labels) in heads.items():
        if not set(labels) & set(base_tokens):
            logging.warning(
                f"the base RNN-T shares no label with language {lang!r}: its prediction-network embedding and "
                "joint start untrained (the encoder still comes from the base)"
            )
            continue
        try:
            report[lang] = transfer_rnnt_rows(
                base.decoder, base.joint, base_tokens, decoder, joint, labels, new_label_init=transfer.new_label_init
            )
        except ValueError as e:
            raise input_error(
                f"the base's RNN-T head cannot start language {lang!r}'s: {e}", where="model.transfer.vocabulary",
                fix="use vocabulary: reinit (encoder only), or a base with a plain RNN-T head",
            ) from e
    return report


def from_base_config(
    spec: str | ASRModel,
    base: ASRModel,
    languages: Mapping[str, Any] | Sequence[str],
    *,
    architecture: str = "multisoftmax",
    vocabulary: str = "keep_shared",
    new_label_init: str = "zero",
    freeze_encoder_blocks: int = 0,
    reinitialize: bool = False,
    cfg: DictConfig | Mapping | None = None,
) -> DictConfig:
    """The model config of ``MultiSoftmaxRNNTModel.from_base``: ``conf/multisoftmax_rnnt.yaml``'s model
    section without its sample rate, preprocessor and encoder (the base's), then ``cfg``, the languages,
    the architecture and ``model.transfer`` (``base_model``: ``spec`` as given, or a description of an object).
    """
    full = OmegaConf.to_container(OmegaConf.load(config_file("multisoftmax_rnnt.yaml")), resolve=True)["model"]
    for key in ("sample_rate", "preprocessor", "encoder"):
        full.pop(key, None)
    if not isinstance(languages, Mapping):
        languages = {lang: lang for lang in languages}
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    full = OmegaConf.merge(full, cfg or {})
    with open_dict(full):
        full.languages = {
            lang: spec_ if isinstance(spec_, Mapping) else {"labels": spec_} for lang, spec_ in languages.items()
        }
        full.architecture = architecture
        full.transfer = {
            "base_model": spec if isinstance(spec, str) else describe_model(base),
            "vocabulary": vocabulary,
            "new_label_init": new_label_init,
            "freeze_encoder_blocks": freeze_encoder_blocks,
            "reinitialize": reinitialize,
        }
    return full


def _ctc_decoder(base: ASRModel) -> torch.nn.Module | None:
    """The CTC decoder of a CTC (``decoder``) or hybrid (``ctc_decoder``) base, or None."""
    for attr in ("ctc_decoder", "decoder"):
        module = getattr(base, attr, None)
        if module is not None and hasattr(module, "decoder_layers"):
            return module
    return None


def _init_entries(cfg: Mapping) -> Iterator[tuple[str, str, str, dict]]:
    """``(key, where, spec, entry)`` for every model NeMo's init keys name (string or dict form)."""
    for key in INIT_KEYS:
        value = to_plain(cfg.get(key))
        if value is None:
            continue
        field = "path" if key == "init_from_nemo_model" else "name"
        if isinstance(value, str):
            yield key, key, value, {}
            continue
        if not isinstance(value, Mapping):
            raise input_error(f"must be a string or a mapping, got {value!r}", where=key,
                              fix=f"write {key}: <{field}>, or {key}: {{base: {{{field}: ..., include: [encoder]}}}}")
        for name, entry in value.items():
            if not isinstance(entry, Mapping) or not entry.get(field):
                raise input_error(f"entry {name!r} has no {field}", where=f"{key}.{name}",
                                  fix=f"write {key}.{name}: {{{field}: ..., include: [encoder]}}")
            yield key, f"{key}.{name}.{field}", str(entry[field]), dict(entry)


def _shape_mismatches(model: torch.nn.Module, base: ASRModel, include: list[str], exclude: list[str]) -> list[str]:
    own = model.state_dict()
    out = []
    for name, tensor in base.state_dict().items():
        if not any(i in name for i in include) or any(e in name for e in exclude):
            continue
        if name in own and own[name].shape != tensor.shape:
            out.append(f"{name}: base {tuple(tensor.shape)}, model {tuple(own[name].shape)}")
    return out


@contextmanager
def nemo_init_sources(model: Any, cfg: Mapping) -> Iterator[None]:
    """Load and check the models of ``init_from_nemo_model`` / ``init_from_pretrained_model`` in ``cfg``,
    and while the context is open let ``model.restore_from`` / ``model.from_pretrained`` return them.

    NeMo's ``maybe_init_from_pretrained_checkpoint`` loads a base with ``self.restore_from`` (the model's
    own class, which refuses a CTC base's config) or ``self.from_pretrained`` (whose names are the model
    class's only); inside this context both give the base loaded as an ``ASRModel``, so NeMo's own code
    copies the weights with its ``include`` / ``exclude`` handling.

    Raises:
        InputError (before any weight is copied): a missing or unreadable ``.nemo``, an unknown name, a
        model that is not an ASR model, a preprocessor that differs from the model's, or parameters
        whose shapes differ (listed, with the key to exclude them).
    """
    loaded: dict[str, ASRModel] = {}
    for key, where, spec, entry in _init_entries(cfg):
        if key == "init_from_nemo_model" and not os.path.isfile(spec):
            raise input_error(
                f"no such file: {spec!r}", where=where,
                fix="give the path of an existing .nemo file (init_from_pretrained_model takes NeMo model names)",
            )
        base = loaded.get(spec) or load_multilingual_base(spec, where=where)
        _raise_mismatches(preprocessor_mismatches(base.cfg, model.cfg), f"{spec} ({where})")
        include, exclude = list(entry.get("include", [""])), list(entry.get("exclude", []))
        problems = _shape_mismatches(model, base, include, exclude)
        if problems:
            raise input_error(
                f"{len(problems)} parameters of {spec} do not fit the model:\n    " + "\n    ".join(problems[:8]),
                where=where,
                fix=f"load only what fits, e.g. {key}: {{base: {{{'path' if 'nemo' in key else 'name'}: {spec}, "
                "include: [encoder]}}, or make model.encoder equal to the base's",
            )
        loaded[spec] = base

    def _loaded(spec: str, *args: Any, **kwargs: Any) -> ASRModel:
        return loaded[spec]

    shadowed = {"restore_from": _loaded, "from_pretrained": _loaded}
    model.__dict__.update(shadowed)  # an instance attribute wins over the classmethod
    try:
        yield
    finally:
        for name in shadowed:
            model.__dict__.pop(name, None)
