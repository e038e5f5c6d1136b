"""Loading the pretrained model a transfer or a distillation starts from."""

from __future__ import annotations

import os

import torch
from nemo.collections.asr.models import ASRModel, EncDecCTCModel

from nemo_tl.errors import input_error
from nemo_tl.utils.nemo_file import check_nemo_file

_PATH_HINTS = (os.sep, ".nemo", ".ckpt")


def _looks_like_path(spec: str) -> bool:
    return any(h in spec for h in _PATH_HINTS) or spec.startswith(".")


def load_base_model(
    spec: str | ASRModel,
    *,
    what: str = "base model",
    where: str = "model.transfer.base_model",
    expected: type[ASRModel] | tuple[type[ASRModel], ...] = EncDecCTCModel,
    vocabulary: str = "chars",
) -> ASRModel:
    """Return the model named by ``spec``, on CPU, in eval mode.

    Args:
        spec: a model object, a local ``.nemo`` path, or a NeMo pretrained model name
            (resolved with ``expected.from_pretrained``).
        what: how error messages call the model ("base model", "teacher 2", ...).
        where: the config key the spec came from, named in error messages.
        expected: the class (or classes: the model family) the model must be an instance of; the
            first one resolves pretrained names.
        vocabulary: what output vocabulary the model must have: ``"chars"`` (labels),
            ``"subword"`` (a tokenizer) or ``"any"``.

    Raises:
        InputError: the path does not exist, is not a readable ``.nemo`` archive, the name is
            unknown or cannot be downloaded, the model is not an ``expected``, or its vocabulary
            is not of the ``vocabulary`` kind.
    """
    if isinstance(spec, ASRModel):
        model = spec
    elif not isinstance(spec, str) or not spec:
        raise input_error(
            f"{what} must be a .nemo path, a NeMo pretrained model name or a model object, got {spec!r}",
            where=where,
            fix=f"set {where} to a .nemo file or a name such as 'stt_en_quartznet15x5'",
        )
    elif os.path.exists(spec) or _looks_like_path(spec):
        model = _restore_local(spec, what=what, where=where)
    else:
        family = expected if isinstance(expected, tuple) else (expected,)
        model = _from_pretrained(spec, what=what, where=where, expected=family[0])
    check_model_kind(model, what=what, where=where, expected=expected, vocabulary=vocabulary)
    return model


def _restore_local(path: str, *, what: str, where: str) -> ASRModel:
    check_nemo_file(path, what=what, where=where)
    try:
        return ASRModel.restore_from(path, map_location=torch.device("cpu"))
    except Exception as e:  # NeMo raises many kinds; the user needs the file named
        raise input_error(
            f"could not restore {what} from {path!r}: {type(e).__name__}: {e}",
            where=where,
            fix="check that the file is a complete NeMo ASR model (.nemo) and that `import nemo_tl` ran first "
            "if it was written by nemo_tl",
        ) from e


def _from_pretrained(name: str, *, what: str, where: str, expected: type[ASRModel]) -> ASRModel:
    try:
        return expected.from_pretrained(name, map_location=torch.device("cpu"))
    except Exception as e:
        raise input_error(
            f"could not load {what} {name!r} with {expected.__name__}.from_pretrained: {type(e).__name__}: {e}",
            where=where,
            fix=f"use a name from {expected.__name__}.list_available_models() on a machine that can reach NGC, "
            "or download the model once and give the local .nemo path",
        ) from e


VOCABULARY_KINDS = ("chars", "subword", "any")


def check_model_kind(
    model: ASRModel,
    *,
    what: str,
    where: str,
    expected: type[ASRModel] | tuple[type[ASRModel], ...] = EncDecCTCModel,
    vocabulary: str = "chars",
) -> None:
    """Raise InputError unless ``model`` is an ``expected`` with a vocabulary of kind ``vocabulary``."""
    if vocabulary not in VOCABULARY_KINDS:
        raise ValueError(f"vocabulary must be one of {VOCABULARY_KINDS}, got {vocabulary!r}")
    family = expected if isinstance(expected, tuple) else (expected,)
    names = " or ".join(c.__name__ for c in family)
    subword = getattr(model, "tokenizer", None) is not None
    if not isinstance(model, family):
        kind = "subword" if subword else "character"
        raise input_error(
            f"{what} is a {type(model).__name__}, not a {names} (it is a {kind} model)",
            where=where,
            fix=f"use a {names} as {what}, or nemo_tl.transfer.from_base(base, ...), which picks the transfer "
            "class that fits the base",
        )
    if vocabulary == "chars" and subword:
        raise input_error(
            f"{what} is a subword (BPE) model ({type(model).__name__}); this needs a character-vocabulary model",
            where=where,
            fix="use a character model (labels), or, for a transfer, the subword class: TransferCTCBPEModel / "
            "TransferRNNTBPEModel with tokenizer_dir= (nemo_tl.transfer.from_base picks it)",
        )
    if vocabulary == "subword" and not subword:
        raise input_error(
            f"{what} is a character model ({type(model).__name__}, no tokenizer); this needs a subword model",
            where=where,
            fix="use a subword (BPE/WPE) model, or, for a transfer, the character class: TransferCTCModel / "
            "TransferRNNTModel with labels= (nemo_tl.transfer.from_base picks it)",
        )
