"""What a nemo_tl model adds to NeMo's training, one piece per concern.

- :class:`SkipNonFiniteStepMixin` (:mod:`.nonfinite`): a NaN/Inf loss on any rank skips the step
  on every rank and puts back the BatchNorm statistics it moved.
- :class:`ResumeRNGState` (:mod:`.rng_state`): a Lightning callback that keeps every rank's RNG
  states in the checkpoint, for an exact mid-epoch resume.
- :class:`AtomicSaveMixin` (:mod:`.saves`): atomic ``save_to`` and checkpoints; ``restore_from``
  names a truncated or foreign file.

Mixed-manifest data and the sampler's resume state are :class:`nemo_tl.models.mixins.ManifestDataMixin`.
A model lists the mixins before its NeMo class and returns the callback from ``configure_callbacks``.
"""

from nemo_tl.training.nonfinite import SKIPPED_LOG_KEY, RunningStatistics, SkipNonFiniteStepMixin
from nemo_tl.training.rng_state import RNG_CHECKPOINT_KEY, ResumeRNGState
from nemo_tl.training.saves import AtomicSaveMixin

__all__ = [
    "RNG_CHECKPOINT_KEY",
    "SKIPPED_LOG_KEY",
    "AtomicSaveMixin",
    "ResumeRNGState",
    "RunningStatistics",
    "SkipNonFiniteStepMixin",
]
