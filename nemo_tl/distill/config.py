"""The ``model.distillation`` config section (key names are the public contract)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from nemo_tl.config_checks import checked_choice, checked_flag, checked_int_list, checked_number, checked_section
from nemo_tl.distill.objective import TEACHER_WEIGHTINGS, KDWeights
from nemo_tl.errors import input_error

__all__ = ["DistillationConfig", "HiddenKDConfig"]

WHERE = "model.distillation"
_BLOCKS_FIX = "e.g. student_blocks: [2] with teacher_blocks: [8]"


def _kd_number(value: Any, where: str, *, positive: bool = False) -> float:
    """T, α, β, φ, w_h: finite and ≥ 0 (T > 0)."""
    fix = "see conf/distill_ctc.yaml for the defaults (α = 2.5, β = 1 as Kim et al.)"
    return checked_number(value, where, positive=positive, finite=True, fix=fix)


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
        if section is None:
            raise input_error(
                "the distillation section is missing",
                where=WHERE,
                fix="add model.distillation with at least `teachers: [{model: teacher.nemo, weight: 1.0}]` "
                "(see conf/distill_ctc.yaml)",
            )
        section = checked_section(
            section, WHERE, [f.name for f in fields(cls)], fix="write distillation: {teachers: [{model: t.nemo}]}"
        )
        teachers = section.get("teachers")
        if not isinstance(teachers, list) or not teachers:
            raise input_error(
                f"the teacher list is empty or missing (got {teachers!r})",
                where=f"{WHERE}.teachers",
                fix="list at least one teacher, e.g. teachers: [{model: teacher.nemo, weight: 1.0}]",
            )
        hidden_where = f"{WHERE}.hidden"
        hidden = checked_section(
            section.get("hidden"), hidden_where, [f.name for f in fields(HiddenKDConfig)],
            fix="e.g. hidden: {student_blocks: [2], teacher_blocks: [8], weight: 0.1}",
        )
        hidden_cfg = HiddenKDConfig(
            student_blocks=checked_int_list(hidden.get("student_blocks"), f"{hidden_where}.student_blocks",
                                            fix=_BLOCKS_FIX),
            teacher_blocks=checked_int_list(hidden.get("teacher_blocks"), f"{hidden_where}.teacher_blocks",
                                            fix=_BLOCKS_FIX),
            weight=_kd_number(hidden.get("weight") or 0.0, f"{hidden_where}.weight"),
            projections=tuple(tuple(int(x) for x in p) for p in hidden.get("projections") or ()),
        )
        if len(hidden_cfg.student_blocks) != len(hidden_cfg.teacher_blocks):
            raise input_error(
                f"student_blocks {list(hidden_cfg.student_blocks)} and teacher_blocks "
                f"{list(hidden_cfg.teacher_blocks)} must pair up (same length)",
                where=hidden_where,
                fix="list one teacher block per student block",
            )
        if hidden_cfg.weight > 0 and not hidden_cfg.student_blocks:
            raise input_error(
                "hidden.weight > 0 but no blocks are paired",
                where=hidden_where,
                fix="list student_blocks and teacher_blocks, or set hidden.weight: 0",
            )
        cache = section.get("cache")
        if cache is not None and (not isinstance(cache, str) or not cache):
            raise input_error(
                f"must be a directory path or null, got {cache!r}",
                where=f"{WHERE}.cache",
                fix="give a directory for the teachers' cached outputs, or null to run the teachers in every step",
            )
        return cls(
            teachers=tuple(teachers),
            temperature=_kd_number(section.get("temperature", 1.0), f"{WHERE}.temperature", positive=True),
            alpha=_kd_number(section.get("alpha", 2.5), f"{WHERE}.alpha"),
            beta=_kd_number(section.get("beta", 1.0), f"{WHERE}.beta"),
            hard_label_weight=_kd_number(section.get("hard_label_weight", 1.0), f"{WHERE}.hard_label_weight"),
            uncertainty=checked_flag(section.get("uncertainty", False), f"{WHERE}.uncertainty"),
            conditional=checked_flag(section.get("conditional", False), f"{WHERE}.conditional"),
            teacher_weighting=checked_choice(
                section.get("teacher_weighting", "fixed"), TEACHER_WEIGHTINGS, f"{WHERE}.teacher_weighting",
                what="teacher_weighting",
            ),
            hidden=hidden_cfg,
            cache=cache,
        )

    def with_projections(self, projections: tuple[tuple[int, int, int, int, int], ...]) -> DistillationConfig:
        """This config with ``hidden.projections`` set (written by the model once it knows the widths)."""
        return replace(self, hidden=replace(self.hidden, projections=tuple(tuple(p) for p in projections)))

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
