"""CAT's batch mixing (Cai et al., "Curriculum adversarial training", IJCAI 2018;
sunblaze-ucb/curriculum-adversarial-training-CAT): one attack call in which the rows of a batch
take different numbers of PGD steps."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .base import Attack, AttackResult, _check_float, _check_int, resisted


def curriculum_budgets(n: int, k: int) -> Tensor:
    """Steps of each row of an ``n``-row batch at curriculum level ``k``: k + 1 chunks in row
    order, chunk i attacked with PGD-i (chunk 0 stays clean); the chunks have ``n // (k + 1)``
    rows and the last takes the remainder (the official split). With ``n < k + 1`` every row
    takes k steps (the official code skips such a batch)."""
    rows = torch.arange(n)
    each = n // (k + 1)
    if each == 0:
        return torch.full((n,), k, dtype=torch.int64)
    return torch.clamp(rows // each, max=k)


class CurriculumPGD(Attack):
    """PGD at curriculum level ``k``: the batch is split into k + 1 chunks (see
    :func:`curriculum_budgets`), chunk i (i ≥ 1) takes i steps of size
    ``step_scale·ε/i · U(1, 10/i)`` (one draw per chunk and call, the official schedule, whose
    step is 2ε spread over the i steps), from a uniform start; chunk 0 is the clean batch.

    The chunks are in row order, so the rows still stepping at step s are a suffix of the batch:
    each step computes only those rows (a slice; finished rows are never touched again), and the
    whole mixed batch costs Σ_i i·|chunk i| row passes, as the official per-chunk calls do.
    ``alpha`` is unused (the step follows ε and i). The result's ``updates`` are the rows'
    budgets; ``kappa`` counts the checks at which a row was classified correctly (targeted: not
    classified as its target). Targeted, each chunk's PGD pulls towards the rows' targets."""

    def __init__(self, model, eps=8 / 255, k: int = 1, step_scale: float = 2.0,
                 random_start="uniform", loss: str = "ce", **kw):
        super().__init__(model, eps=eps, alpha=0.0, steps=max(k, 1), random_start=random_start,
                         loss=loss, **kw)
        self.k = _check_int("k", k)
        self.step_scale = _check_float("step_scale", step_scale)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", k={self.k}, step_scale={self.step_scale:g})"

    def chunk_factors(self) -> Tensor:
        """α/ε of chunks 0 … k (chunk 0: 0): ``step_scale/i · U(1, 10/i)``, one draw per chunk;
        numpy's ``uniform(1, 10/i)`` with 10/i < 1 draws from (10/i, 1], as this formula does."""
        i = torch.arange(1, self.k + 1, dtype=torch.float64)
        factor = 1 + (10 / i - 1) * torch.rand(self.k, dtype=torch.float64)
        return torch.cat([torch.zeros(1, dtype=torch.float64), self.step_scale / i * factor])

    def _attack(self, x_nat: Tensor, y: Tensor, eps: Tensor, alpha: Tensor,
                clean: Optional[Tensor], y_check: Tensor) -> AttackResult:
        n, dev = x_nat.shape[0], x_nat.device
        budget_cpu = curriculum_budgets(n, self.k)
        budget = budget_cpu.to(dev)
        if self.k == 0:  # every row clean
            z = torch.zeros(n, dtype=torch.int64, device=dev)
            self.host_read([])
            return AttackResult(x_nat.clone(), z, z.clone(), z.clone(), 0, 0, 0)
        alpha = eps * self.chunk_factors().to(dev, eps.dtype)[budget]
        # Row r steps while budget[r] > s; budgets ascend, so those rows are the suffix [lo[s], n).
        lo = torch.searchsorted(budget_cpu, torch.arange(self.k), right=True).tolist()
        x = x_nat.clone()
        x[lo[0]:] = self._start(x_nat[lo[0]:], eps[lo[0]:])  # the clean chunk keeps x_nat
        if lo[0]:  # the first check sees the stepping rows only: range-check every label there
            self._check_labels = y if self._check_labels is None else torch.cat(
                [y, self._check_labels])
        kappa = torch.zeros(n, dtype=torch.int64, device=dev)
        targets = self._targets
        rows_computed = 0
        for s in range(self.k):
            a = lo[s]
            if a == n:
                break
            t = None if targets is None else targets[a:]
            logits, grad = self._check(x[a:], y[a:], None if clean is None else clean[a:], t)
            kappa[a:] += resisted(logits, y_check[a:], t)
            rows_computed += n - a
            self._step_(x[a:], grad, x_nat[a:], eps[a:], alpha[a:])  # in place on the view
        bp = int(budget_cpu.sum())
        self.host_read([])
        return AttackResult(x, budget, budget.clone(), kappa, bp, bp, rows_computed)
