"""Losses as functions of tensors and lengths: token KD, uncertainty KD, hidden-state KD, frame LID."""

from nemo_tl.losses.kd import hidden_kd_loss, token_kd_loss, uncertainty_kd_loss
from nemo_tl.losses.lid import frame_lid_loss

__all__ = ["frame_lid_loss", "hidden_kd_loss", "token_kd_loss", "uncertainty_kd_loss"]
