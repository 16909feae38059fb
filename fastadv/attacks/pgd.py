"""Fixed-length attacks: PGD (L∞/L2; CE, CW or KL loss), FGSM, C&W∞ and GAIRAT's GA-PGD."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .base import Attack, AttackResult, full_result, resisted


class PGD(Attack):
    """K projected-gradient steps for every sample (Madry et al.).

    ``PGD(model, eps=8/255, alpha=2/255, steps=10, random_start="uniform", norm="linf", loss="ce")``.
    ``loss="kl"`` is TRADES' inner maximisation (use ``random_start="normal"`` as TRADES does);
    ``loss="cw"`` the C&W margin loss with ``confidence``. With ``norm="l2"``, the uniform random
    start is drawn in the L2 ball (a random direction times ε·U(0, 1), as torchattacks' PGDL2), not
    in the L∞ box of SPEC §1's ``ops.random_start``. The result's ``kappa`` counts the checks
    k = 0 … K−1 at which the sample was classified correctly (GAIRAT's κ, at no extra cost;
    targeted: not classified as its target).
    """

    def _attack(self, x_nat: Tensor, y: Tensor, eps: Tensor, alpha: Tensor,
                clean: Optional[Tensor], y_check: Tensor) -> AttackResult:
        x = self._start(x_nat, eps)
        kappa = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        for _ in range(self.steps):
            logits, grad = self._check(x, y, clean, self._targets)
            kappa += resisted(logits, y_check, self._targets)
            self._step_(x, grad, x_nat, eps, alpha)
        return full_result(x, kappa, self.steps, self.steps * x.shape[0])


class GAPGD(PGD):
    """GAIRAT's GA-PGD: K full PGD steps, with κ = the number of checks k ∈ {0 … K−1} at which
    ``argmax f(x^k) = y`` (SPEC §2.2; targeted: ``≠ target``). A trajectory that flips back to
    correct keeps counting."""


class FGSM(PGD):
    """One step of size ``alpha`` (default ``eps``). The FAT papers' evaluation starts it from a
    uniform random point (``random_start="uniform"``); the default is Goodfellow's, from x."""

    def __init__(self, model, eps=8 / 255, alpha=None, random_start=None, **kw):
        super().__init__(model, eps=eps, alpha=eps if alpha is None else alpha, steps=1,
                         random_start=random_start, **kw)


class CW(PGD):
    """The FAT papers' C&W∞: PGD on the C&W margin loss (confidence 50), 30 steps, α = ε/4."""

    def __init__(self, model, eps=8 / 255, alpha=None, steps: int = 30, confidence: float = 50.0,
                 random_start="uniform", **kw):
        if alpha is None:
            alpha = eps / 4
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start,
                         loss="cw", confidence=confidence, **kw)
