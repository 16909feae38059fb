"""Attacks (SPEC §2), torchattacks-style: ``atk = PGD(model, eps=8/255, ...)``; ``atk(x, y)`` returns
the adversarial tensor, ``atk.run(x, y)`` a result with per-sample statistics.

Training attacks (:class:`AttackResult`: updates, checks, κ per sample):

=================  =========================================================================
``PGD``            K steps, L∞ or L2, loss ``"ce"``, ``"cw"`` or ``"kl"`` (TRADES)
``FGSM``           one step of size ε
``CW``             the FAT papers' C&W∞: 30 PGD steps on the CW margin loss, confidence 50
``EarlyStopPGD``   FAT's PGD-K-τ, compacting still-active samples after every check
``GAPGD``          GAIRAT's κ-counting PGD
``CurriculumPGD``  CAT's batch mixing: chunk i of the batch takes i steps, in one call
``FOSCPGD``        DAT's PGD: a row stops once its FOSC falls to a threshold (computed in the step)
=================  =========================================================================

Evaluation attacks (:class:`EvalResult`: robust, forward and backward passes per point), each
compacting the rows it breaks:

=================  =========================================================================
``APGD``           Auto-PGD, CE or DLR loss, L∞ or L2
``APGDT``          AutoAttack's APGD-T: targeted DLR on the 2nd … 10th most likely classes
``FAB``            FAB (untargeted) and FAB-T (``targeted=True``), L∞ or L2
``Square``         the Square Attack (score-based, no gradients), L∞ or L2
``AutoAttack``     the standard evaluation: versions standard, plus, rand and lite
=================  =========================================================================
"""
from .apgd import APGD, APGDT
from .autoattack import AutoAttack
from .base import Attack, AttackResult
from .curriculum import CurriculumPGD
from .early_stop import EarlyStopPGD
from .eval_base import EvalAttack, EvalResult
from .fab import FAB
from .fosc import FOSCPGD
from .pgd import CW, FGSM, GAPGD, PGD
from .square import Square

__all__ = ["Attack", "AttackResult", "PGD", "FGSM", "CW", "EarlyStopPGD", "GAPGD",
           "CurriculumPGD", "FOSCPGD", "EvalAttack", "EvalResult", "APGD", "APGDT", "FAB",
           "Square", "AutoAttack"]
