"""Fine-tuning that forgets less: L2-SP, EWC and LwF against the base model (``model.transfer.regularization``).

For a model θ fine-tuned from a base θ_base, with the task loss L (CTC):

- L2-SP (Li et al. 2018):  L + (w/2) ‖θ − θ_base‖²
- EWC (Kirkpatrick et al. 2017):  L + (w/2) Σ F (θ − θ_base)², F the empirical diagonal Fisher at
  θ_base: the mean over ``batches`` source batches of the squared gradient of the base's training
  loss (eval mode: no SpecAugment, dither or dropout).
- LwF (Li & Hoiem 2016):  L + w · L_tok(θ, θ_base; T), the token KD loss of
  :func:`nemo_tl.losses.kd.token_kd_loss` between the model and the frozen base on the current
  batch, over the labels both vocabularies hold plus blank (each side's distribution renormalized
  over those), at temperature T. CTC models compare the decoder's frames (the base online or from the
  teacher cache); RNN-T models, whose base must have the same vocabulary, compare the joint's outputs
  at every node of the lattice (:func:`lwf_lattice_loss`; the base runs online).

L2-SP and EWC act on the gradients: once per optimizer step, after the backward (and before
gradient clipping), :func:`add_penalty_gradients` adds their gradient w F (θ − θ_base) to every
anchored parameter's ``.grad`` with two fused kernels, so the optimizer sees the gradient of the
objective above; their values are computed only on the steps Lightning logs. LwF is part of the loss.

The sums run over the *transferred* parameters: every parameter the base and the model share by
name and shape, plus the output rows ``keep_shared`` maps (:func:`mapped_output_rows`); frozen
parameters do not move and are left out. All three are off by default (weight 0) and combine
freely (with replay too). A weight of 0 leaves training exactly as without the section.

Config::

    model:
      transfer:
        base_model: base_en.nemo
        regularization:
          lwf: {weight: 1.0, temperature: 2.0, cache: null}   # cache: a teacher-cache directory
          l2sp: {weight: 0.01}
          ewc: {weight: 100.0, manifest: en_train.json, batches: 50, batch_size: 8, cache: null}

Where θ_base lives: the base is loaded from ``transfer.base_model`` when training starts (also
for a restored model trained further) and held outside the module tree, like the distillation
teachers: it is not in the ``state_dict``, the checkpoints or the ``.nemo``, which restores
without it. The Fisher is cached in ``ewc.cache`` or the run's directory (``<log_dir>/ewc_fisher``), with a
fingerprint of the base's weights, the manifest's content, its audio files' sizes and
modification times, ``batches`` and ``batch_size`` (:func:`nemo_tl.distill.cache.cache_fingerprint`);
a second identical run reuses it, a changed base or manifest recomputes it.

The pieces: :mod:`.config` (the section, validated once), :mod:`.penalties` (the pure terms and the
anchors they are measured from), :mod:`.fisher` (EWC's Fisher and its cache) and :mod:`.mixin` (the
terms in a transfer model's training).
"""

from nemo_tl.transfer.regularization.config import (
    EWCConfig,
    L2SPConfig,
    LwFConfig,
    RegularizationConfig,
)
from nemo_tl.transfer.regularization.fisher import FISHER_DIR, empirical_fisher, fisher_for_run, training_loss
from nemo_tl.transfer.regularization.mixin import ForgettingRegularizationMixin
from nemo_tl.transfer.regularization.penalties import (
    Anchor,
    add_penalty_gradients,
    anchors_from_base,
    ewc_penalty,
    l2sp_penalty,
    lwf_lattice_loss,
    lwf_loss,
    rnnt_joint_outputs,
    transferred_parameters,
)

__all__ = [
    "FISHER_DIR",
    "Anchor",
    "EWCConfig",
    "ForgettingRegularizationMixin",
    "L2SPConfig",
    "LwFConfig",
    "RegularizationConfig",
    "add_penalty_gradients",
    "anchors_from_base",
    "empirical_fisher",
    "ewc_penalty",
    "fisher_for_run",
    "l2sp_penalty",
    "lwf_lattice_loss",
    "lwf_loss",
    "rnnt_joint_outputs",
    "training_loss",
    "transferred_parameters",
]
