"""Adversarial training: ``fastadv.train`` (a whole run from options), :class:`Trainer` (the loop
for your own model/optimizer/data), methods (:mod:`.methods`: an attack recipe + an objective),
schedules, objectives, checkpoints and logs."""
from .api import TrainResult, train
from .config import TrainConfig, resolve_config
from .label_noise import LabelNoise
from .methods import (METHODS, AttackRecipe, CurriculumAttack, DynamicTau, EarlyStopAttack,
                      FOSCAttack, GairRSTAttack, GAPGDAttack, Method, PGDAttack, get_method,
                      lam_at, tau_at)
from .objectives import (CE, DatCE, GairCE, GairTrades, Mart, Objective, Trades, ce_loss,
                         mart_loss, trades_loss)
from .schedules import lr_at
from .trainer import Trainer

__all__ = ["train", "TrainResult", "Trainer", "TrainConfig", "resolve_config", "METHODS", "Method",
           "get_method", "AttackRecipe", "PGDAttack", "EarlyStopAttack", "GAPGDAttack",
           "FOSCAttack", "CurriculumAttack", "GairRSTAttack", "DynamicTau", "LabelNoise",
           "Objective", "CE", "GairCE", "DatCE", "Trades", "Mart", "GairTrades", "ce_loss",
           "trades_loss", "mart_loss", "lr_at", "tau_at", "lam_at"]
