"""Losses as functions of tensors and lengths: token KD, uncertainty KD, hidden-state KD, frame LID; the frame mask."""

from nemo_tl.losses.kd import hidden_kd_loss, token_kd_loss, uncertainty_kd_loss
from nemo_tl.losses.lid import frame_lid_loss
from nemo_tl.losses.masks import frame_mask

__all__ = ["frame_lid_loss", "frame_mask", "hidden_kd_loss", "token_kd_loss", "uncertainty_kd_loss"]
