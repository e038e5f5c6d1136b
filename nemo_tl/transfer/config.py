"""The ``model.transfer`` config section and merging a base model's architecture into a config."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from nemo_tl.config_checks import checked_choice, checked_flag, checked_int, checked_section, to_plain
from nemo_tl.errors import input_error

VOCABULARY_MODES = ("keep_shared", "same", "reinit")
NEW_LABEL_INITS = ("zero", "random")
WHERE = "model.transfer"


@dataclass(frozen=True)
class TransferConfig:
    """The ``model.transfer`` section (key names are the public contract)."""

    base_model: str | None = None  # .nemo path or pretrained name; None: no base (a plain EncDecCTCModel)
    vocabulary: str = "keep_shared"
    new_label_init: str = "zero"
    freeze_encoder_blocks: int = 0
    reinitialize: bool = False

    @classmethod
    def from_section(cls, section: Any) -> TransferConfig:
        """Validate a ``transfer`` section (DictConfig, dict or None) and fill defaults."""
        section = checked_section(
            section, WHERE, [f.name for f in fields(cls)],
            fix="write transfer: {base_model: base.nemo, vocabulary: keep_shared, freeze_encoder_blocks: 0}",
        )
        given = {k: v for k, v in section.items() if v is not None}
        return cls(
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
        )

    def as_section(self) -> dict:
        return {
            "base_model": self.base_model,
            "vocabulary": self.vocabulary,
            "new_label_init": self.new_label_init,
            "freeze_encoder_blocks": self.freeze_encoder_blocks,
            "reinitialize": self.reinitialize,
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
_ENCODER_SHAPE_KEYS = ("_target_", "feat_in", "activation")
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


def merge_base_architecture(cfg: DictConfig, base_cfg: DictConfig, labels: list[str], decoder_feat_in: int) -> DictConfig:
    """Return ``cfg`` with the preprocessor and encoder of the base model and a decoder for ``labels``.

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
        decoder = OmegaConf.create(to_plain(cfg.get("decoder")) or {})
        if "_target_" not in decoder:
            decoder["_target_"] = base_cfg.decoder.get("_target_", "nemo.collections.asr.modules.ConvASRDecoder")
        decoder.feat_in = decoder_feat_in
        decoder.num_classes = len(labels)
        decoder.vocabulary = list(labels)
        cfg.decoder = decoder
        cfg.labels = list(labels)
    return cfg
