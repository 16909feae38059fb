"""Attacks (SPEC §2), torchattacks-style: ``atk = PGD(model, eps=8/255, ...)``; ``atk(x, y)`` returns
the adversarial tensor, ``atk.run(x, y)`` an :class:`AttackResult` with per-sample statistics.

=================  =========================================================================
``PGD``            K steps, L∞ or L2, loss ``"ce"``, ``"cw"`` or ``"kl"`` (TRADES)
``FGSM``           one step of size ε
``CW``             the FAT papers' C&W∞: 30 PGD steps on the CW margin loss, confidence 50
``EarlyStopPGD``   FAT's PGD-K-τ, compacting still-active samples after every check
``GAPGD``          GAIRAT's κ-counting PGD
``CurriculumPGD``  CAT's batch mixing: chunk i of the batch takes i steps, in one call
``FOSCPGD``        DAT's PGD: a row stops once its FOSC falls to a threshold (computed in the step)
=================  =========================================================================
"""
from .base import Attack, AttackResult
from .curriculum import CurriculumPGD
from .early_stop import EarlyStopPGD
from .fosc import FOSCPGD
from .pgd import CW, FGSM, GAPGD, PGD

__all__ = ["Attack", "AttackResult", "PGD", "FGSM", "CW", "EarlyStopPGD", "GAPGD",
           "CurriculumPGD", "FOSCPGD"]
