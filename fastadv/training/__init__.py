"""Adversarial training: ``fastadv.train`` (a whole run from options), :class:`Trainer` (the loop
for your own model/optimizer/data), schedules, objectives, checkpoints and logs."""
from .api import TrainResult, train
from .config import METHODS, MethodSpec, TrainConfig, resolve_config
from .objectives import ce_loss, mart_loss, trades_loss
from .schedules import lam_at, lr_at, tau_at
from .trainer import Trainer

__all__ = ["train", "TrainResult", "Trainer", "TrainConfig", "resolve_config", "METHODS",
           "MethodSpec", "ce_loss", "trades_loss", "mart_loss", "lr_at", "tau_at", "lam_at"]
