"""The ``model.transfer`` config section and merging a base model's architecture into a config."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from nemo_tl.config_checks import checked_choice, checked_flag, checked_int, checked_section, to_plain
from nemo_tl.errors import input_error
from nemo_tl.transfer.adapters import AdapterConfig
from nemo_tl.transfer.regularization import RegularizationConfig
from nemo_tl.transfer.vocabulary import NEW_ROW_INITS

VOCABULARY_MODES = ("keep_shared", "same", "reinit")
NEW_LABEL_INITS = NEW_ROW_INITS  # zero | random | compose (compose: SentencePiece targets only)
WHERE = "model.transfer"


@dataclass(frozen=True)
class TransferConfig:
    """The ``model.transfer`` section (key names are the public contract)."""

    base_model: str | None = None  # .nemo path or pretrained name; None: no base (a plain EncDecCTCModel)
    vocabulary: str = "keep_shared"
    new_label_init: str = "zero"
    freeze_encoder_blocks: int = 0
    reinitialize: bool = False
    adapters: AdapterConfig | None = None  # encoder adapters (nemo_tl.transfer.adapters); None: none
    regularization: RegularizationConfig = field(default_factory=RegularizationConfig)  # L2-SP, EWC, LwF

    @classmethod
    def from_section(cls, section: Any) -> TransferConfig:
        """Validate a ``transfer`` section (DictConfig, dict or None) and fill defaults."""
        section = checked_section(
            section, WHERE, [f.name for f in fields(cls)],
            fix="write transfer: {base_model: base.nemo, vocabulary: keep_shared, freeze_encoder_blocks: 0}",
        )
        given = {k: v for k, v in section.items() if v is not None}
        config = cls(
            base_model=given.get("base_model"),  # checked where it is loaded (load_base_model)
            vocabulary=checked_choice(
                given.get("vocabulary", cls.vocabulary), VOCABULARY_MODES, f"{WHERE}.vocabulary", what="vocabulary mode"
            ),
            new_label_init=checked_choice(
                given.get("new_label_init", cls.new_label_init), NEW_LABEL_INITS, f"{WHERE}.new_label_init",
                what="new_label_init",
            ),
            freeze_encoder_blocks=checked_int(
                given.get("freeze_encoder_blocks", cls.freeze_encoder_blocks), f"{WHERE}.freeze_encoder_blocks",
                fix="use 0 to freeze nothing, k to freeze the k lowest blocks",
            ),
            reinitialize=checked_flag(given.get("reinitialize", cls.reinitialize), f"{WHERE}.reinitialize"),
            adapters=AdapterConfig.from_section(given.get("adapters"), f"{WHERE}.adapters"),
            regularization=RegularizationConfig.from_section(given.get("regularization"), f"{WHERE}.regularization"),
        )
        if config.adapters is not None and (config.freeze_encoder_blocks or config.reinitialize):
            key = "freeze_encoder_blocks" if config.freeze_encoder_blocks else "reinitialize"
            raise input_error(
                f"adapters train on a frozen pretrained encoder; {key} does not combine with them",
                where=f"{WHERE}.{key}",
                fix=f"remove {WHERE}.{key} (adapters already freeze the whole base encoder) or remove {WHERE}.adapters",
            )
        return config

    def as_section(self) -> dict:
        return {
            "base_model": self.base_model,
            "vocabulary": self.vocabulary,
            "new_label_init": self.new_label_init,
            "freeze_encoder_blocks": self.freeze_encoder_blocks,
            "reinitialize": self.reinitialize,
            "adapters": None if self.adapters is None else self.adapters.as_section(),
            "regularization": self.regularization.as_section(),
        }


def describe_model(model: Any) -> str:
    """A string standing for an in-memory base model in the saved config."""
    return f"<in-memory {type(model).__name__}>"


# Keys that fix the shape of the features and of the encoder; anything else (dither,
# dropout, ...) a fine-tuning config may change.
_PREPROCESSOR_SHAPE_KEYS = (
    "_target_", "sample_rate", "features", "n_fft", "window_size", "window_stride", "window", "normalize",
    "frame_splicing", "nfilt", "lowfreq", "highfreq", "log", "mag_power", "preemph",
)
_ENCODER_SHAPE_KEYS = (
    "_target_", "feat_in", "activation",
    # Conformer / FastConformer
    "n_layers", "d_model", "n_heads", "subsampling", "subsampling_factor", "subsampling_conv_channels",
    "ff_expansion_factor", "self_attention_model", "conv_kernel_size", "conv_norm_type", "untie_biases", "feat_out",
)
_BLOCK_SHAPE_KEYS = ("filters", "repeat", "kernel", "stride", "dilation", "separable", "residual", "groups", "se")


def _mismatches(section: str, base: DictConfig, asked: DictConfig, keys: tuple[str, ...]) -> list[str]:
    out = []
    for key in keys:
        if key in asked and key in base and to_plain(asked[key]) != to_plain(base[key]):
            out.append(f"{section}.{key}: base model has {to_plain(base[key])!r}, config asks {to_plain(asked[key])!r}")
    return out


def _encoder_mismatches(base: DictConfig, asked: DictConfig) -> list[str]:
    out = _mismatches("model.encoder", base, asked, _ENCODER_SHAPE_KEYS)
    if "jasper" in asked and "jasper" in base:
        if len(asked.jasper) != len(base.jasper):
            out.append(
                f"model.encoder.jasper: base model has {len(base.jasper)} blocks, config asks {len(asked.jasper)}"
            )
        else:
            for i, (b, a) in enumerate(zip(base.jasper, asked.jasper)):
                out += _mismatches(f"model.encoder.jasper[{i}]", b, a, _BLOCK_SHAPE_KEYS)
    return out


def merge_base_encoder(cfg: DictConfig, base_cfg: DictConfig) -> DictConfig:
    """Return ``cfg`` with the sample rate, preprocessor, encoder (and spec_augment, unless set) of the base model.

    A preprocessor or encoder section in ``cfg`` may change training-only settings (dither,
    dropout) but not shapes; any shape difference is an InputError listing each key.
    """
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    base_cfg = OmegaConf.create(OmegaConf.to_container(base_cfg, resolve=True))
    problems = []
    if "sample_rate" in cfg and cfg.sample_rate is not None and cfg.sample_rate != base_cfg.get("sample_rate"):
        problems.append(f"model.sample_rate: base model has {base_cfg.get('sample_rate')!r}, config asks {cfg.sample_rate!r}")
    for section, keys in (("preprocessor", _PREPROCESSOR_SHAPE_KEYS), ("encoder", None)):
        asked = cfg.get(section)
        if asked is None:
            continue
        asked = OmegaConf.create(OmegaConf.to_container(asked, resolve=True))
        if keys is None:
            problems += _encoder_mismatches(base_cfg[section], asked)
        else:
            problems += _mismatches(f"model.{section}", base_cfg[section], asked, keys)
    if problems:
        raise input_error(
            "the config asks for a different preprocessor or encoder than the base model has:\n    "
            + "\n    ".join(problems),
            where="model",
            fix="remove model.preprocessor / model.encoder from the config (they come from the base model), "
            "or make the listed keys match it",
        )
    with open_dict(cfg):
        cfg.sample_rate = base_cfg.get("sample_rate", 16000)
        for section in ("preprocessor", "encoder"):
            merged = base_cfg[section]
            if cfg.get(section) is not None:
                merged = OmegaConf.merge(merged, OmegaConf.create(OmegaConf.to_container(cfg[section], resolve=True)))
            cfg[section] = merged
        if "spec_augment" not in cfg:
            cfg.spec_augment = base_cfg.get("spec_augment")
    return cfg


def merge_base_ctc_head(
    cfg: DictConfig, base_cfg: DictConfig, decoder_feat_in: int, labels: list[str] | None = None,
    section: str | None = None,
) -> DictConfig:
    """Return ``cfg`` with a CTC decoder built like the base model's, for the target vocabulary.

    The decoder section is ``model.decoder``, or ``model.{section}.decoder`` (the hybrid's ``aux_ctc``,
    whose other keys come from the base unless ``cfg`` gives them). It keeps the base decoder's
    ``_target_`` and input width ``decoder_feat_in``; with ``labels`` (characters) it is sized for
    them and ``model.labels`` is set, else NeMo sizes it from the tokenizer (``num_classes: -1``).
    The base's ``decoding`` section is used unless ``cfg`` gives one.
    """
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    base_cfg = OmegaConf.create(OmegaConf.to_container(base_cfg, resolve=True))
    base_holder = base_cfg if section is None else base_cfg[section]
    holder = cfg
    if section is not None:
        own = {k: v for k, v in base_holder.items() if k != "decoder"}
        holder = OmegaConf.merge(own, cfg.get(section) or {})
    decoder = OmegaConf.create(to_plain(holder.get("decoder")) or {})
    with open_dict(decoder):
        if "_target_" not in decoder:
            decoder["_target_"] = base_holder.decoder.get("_target_", "nemo.collections.asr.modules.ConvASRDecoder")
        decoder.feat_in = decoder_feat_in
        decoder.num_classes = -1 if labels is None else len(labels)
        decoder.vocabulary = [] if labels is None else list(labels)
    with open_dict(holder):
        holder.decoder = decoder
        if holder.get("decoding") is None and base_holder.get("decoding") is not None:
            holder.decoding = base_holder.decoding
    with open_dict(cfg):
        if section is not None:
            cfg[section] = holder
        if labels is not None:
            cfg.labels = list(labels)
    return cfg


# Keys of an RNN-T head that fix the shape of its weights (the prediction network and the joint).
_RNNT_SHAPE_KEYS = (
    "model_defaults.enc_hidden", "model_defaults.pred_hidden", "model_defaults.joint_hidden",
    "decoder._target_", "decoder.blank_as_pad", "decoder.prednet.pred_hidden", "decoder.prednet.pred_rnn_layers",
    "joint._target_", "joint.num_extra_outputs", "joint.jointnet.joint_hidden", "joint.jointnet.activation",
    "loss.loss_name",
)
_DURATION_KEYS = ("model_defaults.tdt_durations", "loss.tdt_kwargs.durations", "decoding.durations")


def merge_base_rnnt_head(cfg: DictConfig, base_cfg: DictConfig) -> DictConfig:
    """Return ``cfg`` with the base model's RNN-T head sections (``model_defaults``, ``decoder``, ``joint``,
    ``loss``, ``decoding``) under the keys ``cfg`` gives; NeMo then sizes them for the target vocabulary.

    Raises:
        InputError: ``cfg`` changes a shape key of the head, or a TDT head's durations list.
    """
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    base_cfg = OmegaConf.create(OmegaConf.to_container(base_cfg, resolve=True))
    sections = ("model_defaults", "decoder", "joint", "loss", "decoding")
    merged = {}
    for section in sections:
        base_section = base_cfg.get(section)
        asked = cfg.get(section)
        merged[section] = base_section if asked is None else OmegaConf.merge(base_section or {}, asked)
    merged = OmegaConf.create(merged)
    for key in _DURATION_KEYS:
        base_value, value = OmegaConf.select(base_cfg, key), OmegaConf.select(merged, key)
        if base_value is not None and to_plain(value) != to_plain(base_value):
            raise input_error(
                f"the base model is a TDT model with durations {to_plain(base_value)}; the config asks "
                f"{to_plain(value)} (its joint's duration outputs are copied whole, so the list must stay)",
                where=f"model.{key}",
                fix=f"remove model.{key} from the config, or set it to {to_plain(base_value)}",
            )
    problems = []
    for key in _RNNT_SHAPE_KEYS:
        base_value, value = OmegaConf.select(base_cfg, key), OmegaConf.select(merged, key)
        if to_plain(value) != to_plain(base_value):
            problems.append(f"model.{key}: base model has {to_plain(base_value)!r}, config asks {to_plain(value)!r}")
    if problems:
        raise input_error(
            "the config asks for a different RNN-T head than the base model has:\n    " + "\n    ".join(problems),
            where="model",
            fix="remove the listed keys from the config (the head comes from the base model), or make them match it",
        )
    with open_dict(cfg):
        for section in sections:
            if merged.get(section) is not None:
                cfg[section] = merged[section]
    return cfg
