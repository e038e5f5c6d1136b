"""Teachers for knowledge distillation: loading and checks, the objective, offline output caches."""

from nemo_tl.distill.cache import TeacherCache, build_cache, cache_fingerprint
from nemo_tl.distill.config import DistillationConfig
from nemo_tl.distill.objective import (
    KDWeights,
    distillation_loss,
    distillation_terms,
    distillation_total,
    teacher_weights,
)
from nemo_tl.distill.teachers import Teacher, TeacherOutputs, check_teacher, load_teachers, teacher_outputs

__all__ = [
    "DistillationConfig",
    "KDWeights",
    "Teacher",
    "TeacherCache",
    "TeacherOutputs",
    "build_cache",
    "cache_fingerprint",
    "check_teacher",
    "distillation_loss",
    "distillation_terms",
    "distillation_total",
    "load_teachers",
    "teacher_outputs",
    "teacher_weights",
]
