"""Teachers for knowledge distillation: loading, freezing, teacher/student checks, outputs.

A teacher is a frozen NeMo CTC model in eval mode. For CTC models the KD "tokens" are encoder
frames, so a teacher must share the student's vocabulary and frame rate (preprocessor hop ×
encoder subsampling); with ``uncertainty: true`` both need an
:class:`~nemo_tl.modules.UncertaintyConvASRDecoder`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from nemo.collections.asr.models import ASRModel

from nemo_tl.compat import preprocessor_sample_rate
from nemo_tl.config_checks import checked_number, checked_section
from nemo_tl.errors import input_error
from nemo_tl.modules.uncertainty_decoder import UncertaintyConvASRDecoder
from nemo_tl.transfer.base import load_base_model
from nemo_tl.transfer.freezing import encoder_blocks

__all__ = [
    "Teacher",
    "TeacherOutputs",
    "block_frame_shift",
    "capture_encoder_blocks",
    "check_teacher",
    "freeze_teacher",
    "frame_shift",
    "has_uncertainty_head",
    "load_teachers",
    "teacher_outputs",
]

TEACHERS_KEY = "model.distillation.teachers"


@dataclass
class Teacher:
    """A frozen teacher θ_T and its weight γ_k (``model`` is deliberately not an nn.Module attribute of the student)."""

    model: ASRModel
    weight: float
    name: str


@dataclass
class TeacherOutputs:
    """What the KD losses need from one teacher on one batch.

    Attributes:
        log_probs: (B, T, V+1) teacher log-probabilities (eval mode, no noise).
        lengths: (B,) valid frames per utterance.
        logvar: (B, T, V+1) teacher log σ², or None without an uncertainty head.
        hidden: block index -> (B, D, T) block output, for the blocks asked for.
    """

    log_probs: torch.Tensor
    lengths: torch.Tensor
    logvar: torch.Tensor | None = None
    hidden: dict[int, torch.Tensor] = field(default_factory=dict)


def has_uncertainty_head(model: ASRModel) -> bool:
    """True when the model's decoder predicts log σ² (an UncertaintyConvASRDecoder)."""
    return isinstance(getattr(model, "decoder", None), UncertaintyConvASRDecoder)


def freeze_teacher(model: ASRModel) -> ASRModel:
    """Eval mode and no parameter requiring grad; returns ``model``."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_teachers(specs: Sequence[Any] | None, *, where: str = TEACHERS_KEY) -> list[Teacher]:
    """Load and freeze the teachers of a ``model.distillation.teachers`` list.

    Each entry is ``{model: <.nemo path | pretrained name>, weight: γ_k}`` (weight defaults to 1)
    or just the path/name. Raises InputError for an empty list, a bad entry or a model that
    cannot be loaded.
    """
    if not specs:
        raise input_error(
            "the teacher list is empty",
            where=where,
            fix="list at least one teacher, e.g. teachers: [{model: teacher.nemo, weight: 1.0}]",
        )
    teachers = []
    for k, spec in enumerate(specs):
        here = f"{where}[{k}]"
        if isinstance(spec, str | ASRModel):
            spec = {"model": spec}
        if not isinstance(spec, Mapping) or spec.get("model") in (None, "", "???"):
            raise input_error(
                f"teacher entry {spec!r} names no model",
                where=here,
                fix="write {model: path/to/teacher.nemo, weight: 1.0}",
            )
        spec = checked_section(spec, here, ("model", "weight"), fix="write {model: path/to/teacher.nemo, weight: 1.0}")
        weight = checked_number(
            spec.get("weight", 1.0), f"{here}.weight", finite=True,
            fix="use e.g. weight: 1.0 (equal weights as Kim et al.)",
        )
        model = load_base_model(spec["model"], what=f"teacher {k}", where=f"{here}.model")
        name = spec["model"] if isinstance(spec["model"], str) else type(spec["model"]).__name__
        teachers.append(Teacher(model=freeze_teacher(model), weight=float(weight), name=name))
    if sum(t.weight for t in teachers) <= 0:
        raise input_error("all teacher weights are 0", where=where, fix="give at least one teacher a weight > 0")
    return teachers


# ---------------------------------------------------------------------------- frame rate
def _sample_rate(model: ASRModel) -> int | None:
    rate = preprocessor_sample_rate(model.preprocessor) or model.cfg.get("sample_rate")
    return None if rate is None else int(rate)


def frame_shift(model: ASRModel) -> float:
    """Seconds per encoder output frame: preprocessor hop / sample rate × encoder subsampling."""
    pre = model.preprocessor
    hop = getattr(pre, "hop_length", None) or getattr(getattr(pre, "featurizer", None), "hop_length", None)
    rate = _sample_rate(model)
    if hop is None or rate is None:
        raise input_error(
            f"cannot tell the frame rate of a {type(pre).__name__} preprocessor",
            where=TEACHERS_KEY,
            fix="use models with NeMo's AudioToMelSpectrogramPreprocessor",
        )
    return float(hop) / float(rate) * int(getattr(model.encoder, "subsampling_factor", 1))


def _block_strides(model: ASRModel) -> list[int]:
    strides = []
    for block_cfg in model.cfg.encoder.get("jasper", []):
        stride = block_cfg.get("stride", [1])
        strides.append(int(stride[0] if isinstance(stride, Sequence) else stride))
    return strides


def block_frame_shift(model: ASRModel, block: int) -> float:
    """Seconds per frame at the output of encoder block ``block`` (0 = the first block, C1)."""
    strides = _block_strides(model)
    factor = 1
    for s in strides[: block + 1]:
        factor *= s
    return frame_shift(model) / int(getattr(model.encoder, "subsampling_factor", 1)) * factor


def check_teacher(
    teacher: ASRModel,
    student: ASRModel,
    *,
    uncertainty: bool,
    where: str,
    student_blocks: Sequence[int] = (),
    teacher_blocks: Sequence[int] = (),
) -> None:
    """Raise InputError unless ``teacher`` can teach ``student`` frame by frame.

    Checks: same vocabulary (same labels in the same order), same frame rate, uncertainty
    heads in both when ``uncertainty``, and hidden-KD block pairs at the same frame rate.
    """
    t_vocab, s_vocab = list(teacher.decoder.vocabulary), list(student.decoder.vocabulary)
    if t_vocab != s_vocab:
        only_t = [c for c in t_vocab if c not in s_vocab]
        only_s = [c for c in s_vocab if c not in t_vocab]
        raise input_error(
            f"the teacher's vocabulary differs from the student's (only teacher: {only_t!r}, only student: "
            f"{only_s!r}{', same labels in another order' if not only_t and not only_s else ''}); "
            "frame-level KD needs the same output units",
            where=where,
            fix="set the student's model.labels to the teacher's labels, or distil from a teacher with the "
            "student's vocabulary (e.g. one transferred with TransferCTCModel)",
        )
    t_rate, s_rate = _sample_rate(teacher), _sample_rate(student)
    if t_rate != s_rate:
        raise input_error(
            f"the teacher expects {t_rate} Hz audio, the student {s_rate} Hz; both read the same audio",
            where=where,
            fix="distil from a teacher with the student's sample rate (or resample the data and retrain one side)",
        )
    t_shift, s_shift = frame_shift(teacher), frame_shift(student)
    if abs(t_shift - s_shift) > 1e-9:
        raise input_error(
            f"the teacher emits a frame every {t_shift * 1000:g} ms, the student every {s_shift * 1000:g} ms; "
            "frame-level KD needs the same frame rate",
            where=where,
            fix="give the student the teacher's preprocessor window_stride and the same total encoder stride "
            "(product of the `stride` entries of model.encoder.jasper)",
        )
    if uncertainty:
        for who, model in (("teacher", teacher), ("student", student)):
            if not has_uncertainty_head(model):
                raise input_error(
                    f"uncertainty: true, but the {who}'s decoder is a {type(model.decoder).__name__} without a "
                    "log σ² head",
                    where=where if who == "teacher" else "model.decoder._target_",
                    fix="set uncertainty: false, or use nemo_tl.modules.UncertaintyConvASRDecoder as decoder "
                    f"_target_ in the {who} (a teacher must have been trained with it)",
                )
    if len(student_blocks) != len(teacher_blocks):
        raise input_error(
            f"hidden KD pairs student_blocks {list(student_blocks)} with teacher_blocks {list(teacher_blocks)}: "
            "the lists must have the same length",
            where="model.distillation.hidden",
            fix="list one teacher block per student block",
        )
    if not student_blocks:
        return
    shift = {"student": s_shift, "teacher": t_shift}
    for who, model, blocks in (("student", student, student_blocks), ("teacher", teacher, teacher_blocks)):
        n = len(encoder_blocks(model.encoder, where=f"model.distillation.hidden.{who}_blocks"))
        for block in blocks:
            if not isinstance(block, int) or isinstance(block, bool) or not 0 <= block < n:
                raise input_error(
                    f"{who} block {block!r} does not exist; the {who} encoder has blocks 0..{n - 1}",
                    where=f"model.distillation.hidden.{who}_blocks",
                    fix=f"use indices of model.encoder.jasper entries (0..{n - 1})",
                )
            at = block_frame_shift(model, block)
            if abs(at - shift[who]) > 1e-9:
                raise input_error(
                    f"{who} block {block} runs at {at * 1000:g} ms/frame, before the encoder's last stride "
                    f"({shift[who] * 1000:g} ms/frame at its output)",
                    where=f"model.distillation.hidden.{who}_blocks",
                    fix="distil hidden states of blocks after the last strided block (QuartzNet strides only in "
                    "C1, block 0, so any block works there)",
                )


# ---------------------------------------------------------------------------- outputs
@contextlib.contextmanager
def capture_encoder_blocks(model: ASRModel, blocks: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Within the context, forwards of ``model`` record the (B, D, T) output of each encoder block in ``blocks``."""
    captured: dict[int, torch.Tensor] = {}
    if not blocks:
        yield captured
        return
    seq = encoder_blocks(model.encoder, where="model.distillation.hidden")
    handles = []
    for index in blocks:

        def keep(module, args, output, index=index):
            captured[index] = output[0][-1]  # a JasperBlock returns ([..., out], lengths)

        handles.append(seq[index].register_forward_hook(keep))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def teacher_outputs(
    model: ASRModel,
    signal: torch.Tensor,
    signal_len: torch.Tensor,
    hidden_blocks: Sequence[int] = (),
) -> TeacherOutputs:
    """Run a teacher in eval mode, without gradient, on raw audio (B, S) with lengths (B,).

    The teacher computes its own features (its preprocessor, no dither in eval, no SpecAugment)
    and is moved to the audio's device first.
    """
    device = signal.device
    if next(model.parameters()).device != device:
        model.to(device)
    if model.training:
        model.eval()
    with capture_encoder_blocks(model, hidden_blocks) as hidden:
        log_probs, lengths, _ = model.forward(input_signal=signal, input_signal_length=signal_len)
    logvar = model.decoder.last_logvar if has_uncertainty_head(model) else None
    return TeacherOutputs(log_probs=log_probs, lengths=lengths, logvar=logvar, hidden=dict(hidden))
