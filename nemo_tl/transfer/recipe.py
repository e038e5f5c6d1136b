"""The fine-tuning recipe of Huang et al. 2020 (§3, §6) as a NeMo ``model.optim`` section.

NovoGrad with β = (0.95, 0.25) and weight decay 0.001, cosine annealing with 12% warmup, and a
learning rate 10x below the from-scratch one (0.01 → 0.001). ``conf/quartznet_finetune.yaml``
states the same section (a test holds them equal); ``TransferCTCModel.from_base``, the demo and
``examples/reproduce_transfer.py`` call :func:`finetune_optim`.
"""

from __future__ import annotations

__all__ = ["FINETUNE_LR", "SCRATCH_LR", "finetune_optim"]

SCRATCH_LR = 0.01  # QuartzNet trained from scratch (conf/quartznet_15x5.yaml)
FINETUNE_LR = SCRATCH_LR / 10


def finetune_optim(lr: float = FINETUNE_LR, *, warmup_ratio: float = 0.12) -> dict:
    """The ``optim`` section of the recipe at peak learning rate ``lr`` (cosine down to lr / 100)."""
    return {
        "name": "novograd",
        "lr": lr,
        "betas": [0.95, 0.25],
        "weight_decay": 0.001,
        "sched": {"name": "CosineAnnealing", "warmup_ratio": warmup_ratio, "min_lr": lr / 100},
    }
