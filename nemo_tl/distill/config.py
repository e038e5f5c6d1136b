"""The ``model.distillation`` config section (key names are the public contract)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from nemo_tl.distill.objective import TEACHER_WEIGHTINGS, KDWeights
from nemo_tl.errors import input_error

__all__ = ["DistillationConfig", "HiddenKDConfig"]

WHERE = "model.distillation"


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value


def _number(value: Any, key: str, *, positive: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or value < 0 or (positive and value == 0):
        raise input_error(
            f"must be a number {'> 0' if positive else '>= 0'}, got {value!r}",
            where=f"{WHERE}.{key}",
            fix="see conf/distill_ctc.yaml for the defaults (α = 2.5, β = 1 as Kim et al.)",
        )
    return float(value)


def _flag(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise input_error(f"must be true or false, got {value!r}", where=f"{WHERE}.{key}")
    return value


def _blocks(value: Any, key: str) -> tuple[int, ...]:
    value = [] if value is None else value
    if not isinstance(value, list | tuple) or any(isinstance(b, bool) or not isinstance(b, int) for b in value):
        raise input_error(
            f"must be a list of encoder block indices, got {value!r}",
            where=f"{WHERE}.hidden.{key}",
            fix="e.g. student_blocks: [2] with teacher_blocks: [8]",
        )
    return tuple(value)


@dataclass(frozen=True)
class HiddenKDConfig:
    """``hidden``: intermediate-layer KD between paired encoder blocks, weight w_h."""

    student_blocks: tuple[int, ...] = ()
    teacher_blocks: tuple[int, ...] = ()
    weight: float = 0.0
    # Written by the model: (teacher k, student block, teacher block, D_s, D_t) of each learned
    # projection, so that a restored student rebuilds them without loading its teachers.
    projections: tuple[tuple[int, int, int, int, int], ...] = ()

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """(student block, teacher block) pairs; empty when w_h = 0."""
        return list(zip(self.student_blocks, self.teacher_blocks)) if self.weight > 0 else []


@dataclass(frozen=True)
class DistillationConfig:
    """The ``model.distillation`` section.

    L = φ L_CTC + α Σ_k γ_k (L_tok^k + β L_unc^k) + w_h Σ_k γ_k L_hidden^k.
    """

    teachers: tuple[dict, ...] = ()  # [{model: .nemo path | pretrained name, weight: γ_k}]
    temperature: float = 1.0  # T
    alpha: float = 2.5  # α
    beta: float = 1.0  # β
    hard_label_weight: float = 1.0  # φ
    uncertainty: bool = False
    conditional: bool = False
    teacher_weighting: str = "fixed"
    hidden: HiddenKDConfig = field(default_factory=HiddenKDConfig)
    cache: str | None = None

    @classmethod
    def from_section(cls, section: Any) -> DistillationConfig:
        """Validate a ``distillation`` section (DictConfig, dict) and fill defaults."""
        section = _plain(section)
        if section is None:
            raise input_error(
                "the distillation section is missing",
                where=WHERE,
                fix="add model.distillation with at least `teachers: [{model: teacher.nemo, weight: 1.0}]` "
                "(see conf/distill_ctc.yaml)",
            )
        if not isinstance(section, dict):
            raise input_error(f"must be a mapping, got {type(section).__name__}", where=WHERE)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise input_error(f"unknown key(s) {', '.join(unknown)}", where=WHERE, fix=f"use only {sorted(known)}")
        teachers = section.get("teachers")
        if not isinstance(teachers, list) or not teachers:
            raise input_error(
                f"the teacher list is empty or missing (got {teachers!r})",
                where=f"{WHERE}.teachers",
                fix="list at least one teacher, e.g. teachers: [{model: teacher.nemo, weight: 1.0}]",
            )
        weighting = section.get("teacher_weighting", "fixed")
        if weighting not in TEACHER_WEIGHTINGS:
            raise input_error(
                f"unknown teacher_weighting {weighting!r}",
                where=f"{WHERE}.teacher_weighting",
                fix=f"use one of {', '.join(TEACHER_WEIGHTINGS)}",
            )
        hidden = section.get("hidden") or {}
        if not isinstance(hidden, dict) or set(hidden) - {f.name for f in fields(HiddenKDConfig)}:
            raise input_error(
                f"hidden must be {{student_blocks, teacher_blocks, weight}}, got {hidden!r}",
                where=f"{WHERE}.hidden",
                fix="e.g. hidden: {student_blocks: [2], teacher_blocks: [8], weight: 0.1}",
            )
        hidden_cfg = HiddenKDConfig(
            student_blocks=_blocks(hidden.get("student_blocks"), "student_blocks"),
            teacher_blocks=_blocks(hidden.get("teacher_blocks"), "teacher_blocks"),
            weight=_number(hidden.get("weight", 0.0) or 0.0, "hidden.weight"),
            projections=tuple(tuple(int(x) for x in p) for p in hidden.get("projections") or ()),
        )
        if len(hidden_cfg.student_blocks) != len(hidden_cfg.teacher_blocks):
            raise input_error(
                f"student_blocks {list(hidden_cfg.student_blocks)} and teacher_blocks "
                f"{list(hidden_cfg.teacher_blocks)} must pair up (same length)",
                where=f"{WHERE}.hidden",
                fix="list one teacher block per student block",
            )
        if hidden_cfg.weight > 0 and not hidden_cfg.student_blocks:
            raise input_error(
                "hidden.weight > 0 but no blocks are paired",
                where=f"{WHERE}.hidden",
                fix="list student_blocks and teacher_blocks, or set hidden.weight: 0",
            )
        cache = section.get("cache")
        if cache is not None and (not isinstance(cache, str) or not cache):
            raise input_error(f"must be a directory path or null, got {cache!r}", where=f"{WHERE}.cache")
        return cls(
            teachers=tuple(teachers),
            temperature=_number(section.get("temperature", 1.0), "temperature", positive=True),
            alpha=_number(section.get("alpha", 2.5), "alpha"),
            beta=_number(section.get("beta", 1.0), "beta"),
            hard_label_weight=_number(section.get("hard_label_weight", 1.0), "hard_label_weight"),
            uncertainty=_flag(section.get("uncertainty", False), "uncertainty"),
            conditional=_flag(section.get("conditional", False), "conditional"),
            teacher_weighting=weighting,
            hidden=hidden_cfg,
            cache=cache,
        )

    @property
    def weights(self) -> KDWeights:
        """φ, α, β, T, w_h for :func:`~nemo_tl.distill.objective.distillation_loss`."""
        return KDWeights(
            hard_label_weight=self.hard_label_weight,
            alpha=self.alpha,
            beta=self.beta,
            temperature=self.temperature,
            hidden_weight=self.hidden.weight,
        )

    def as_section(self) -> dict:
        return {
            "teachers": [dict(t) if isinstance(t, dict) else t for t in self.teachers],
            "temperature": self.temperature,
            "alpha": self.alpha,
            "beta": self.beta,
            "hard_label_weight": self.hard_label_weight,
            "uncertainty": self.uncertainty,
            "conditional": self.conditional,
            "teacher_weighting": self.teacher_weighting,
            "hidden": {
                "student_blocks": list(self.hidden.student_blocks),
                "teacher_blocks": list(self.hidden.teacher_blocks),
                "weight": self.hidden.weight,
                "projections": [list(p) for p in self.hidden.projections],
            },
            "cache": self.cache,
        }
