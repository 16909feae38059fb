"""DAT's attack (Wang et al., "On the convergence and robustness of adversarial training", ICML
2019; YisenWang/dynamic_adv_training): PGD-K whose rows stop once their first-order stationary
condition (FOSC) falls to a threshold."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import ops
from .base import Attack, AttackResult, _check_float, resisted
from ..errors import UserError

# Columns of the per-row integer state, compacted together.
_INDEX, _LABEL, _CHECK_LABEL, _KAPPA, _UPDATES, _TARGET = range(6)


class FOSCPGD(Attack):
    """PGD-K with DAT's per-row stop: at each iterate xᵏ (k ≥ 1) with gradient g,
    ``c(xᵏ) = ε·‖g‖₁ − ⟨xᵏ − x⁰, g⟩`` (x⁰: the random start, as the official code, here clipped
    to [clip_min, clip_max] as every start of SPEC §2; the official one is not); a row whose
    ``c ≤ threshold`` stops there for good (output xᵏ, k updates), the others step. The first step
    always moves. c is computed inside the fused step kernel (``ops.linf_fosc_step_``: one more
    per-row reduction in the step's pass); stopped rows are compacted away, so later checks
    compute only the rows still moving. L∞ only.

    ``FOSCPGD(model, eps=8/255, alpha=2/255, steps=10, threshold=0.5, random_start="uniform",
    loss="ce")``. The result's ``updates`` count each row's steps, ``checks`` its forward/backward
    passes (a row that stops at check k paid k + 1), ``kappa`` its correctly classified checks
    (targeted: the checks not at its target). Targeted, the loss is −CE to the target (the FOSC
    then measures how far the row is from that loss's stationary point).
    """

    def __init__(self, model, eps=8 / 255, alpha=2 / 255, steps: int = 10, threshold: float = 0.5,
                 random_start="uniform", loss: str = "ce", **kw):
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start,
                         loss=loss, **kw)
        if self.norm != "linf":
            raise UserError("norm: DAT's FOSC is defined for the L-inf ball only")
        self.threshold = _check_float("threshold", threshold, minimum=-float("inf"))

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", threshold={self.threshold:g})"

    def _attack(self, x_nat: Tensor, y: Tensor, eps: Tensor, alpha: Tensor,
                clean: Optional[Tensor], y_check: Tensor) -> AttackResult:
        n, dev, K = x_nat.shape[0], x_nat.device, self.steps
        out = torch.empty_like(x_nat)  # x_adv in input order, filled as rows stop
        final = torch.empty(n, 6, dtype=torch.int64, device=dev)
        x = self._start(x_nat, eps)
        x_start = x.clone()  # x⁰ of the FOSC
        index = torch.arange(n, device=dev)
        kappa = torch.zeros(n, dtype=torch.int64, device=dev)
        per_row = torch.stack([eps, alpha], dim=1)
        targets = self._targets
        target_col = y_check if targets is None else targets  # a placeholder when untargeted
        m, rows_computed = n, 0
        for k in range(K):
            logits, grad = self._check(x, y, clean, targets)
            rows_computed += m
            kappa += resisted(logits, y_check, targets)
            with torch.no_grad():  # c(xᵏ) and the step of the rows that go on, one pass
                c = ops.linf_fosc_step_(x, grad, x_nat, x_start, eps, alpha, self.threshold,
                                        always=k == 0, clip_min=self.clip_min,
                                        clip_max=self.clip_max, check=False)
            if k == 0:
                continue
            stop = ~(c > self.threshold)  # the kernel's own test (NaN stops)
            dest, m_next = ops.compaction_plan(stop)  # the one host read of this check
            if m_next == m:
                continue
            state = torch.stack([index, y, y_check, kappa, index.new_full((m,), k), target_col], dim=1)
            packed = ops.compact_rows(state, dest, m_next, index=index, leavers=final,
                                      check=False).t().contiguous()
            x = ops.compact_rows(x, dest, m_next, index=index, leavers=out, check=False)
            x_nat = ops.compact_rows(x_nat, dest, m_next, check=False)
            x_start = ops.compact_rows(x_start, dest, m_next, check=False)
            if clean is not None:
                clean = ops.compact_rows(clean, dest, m_next, check=False)
            per_row = ops.compact_rows(per_row, dest, m_next, check=False)
            eps, alpha = per_row.t().contiguous().unbind(0)
            index, y, y_check, kappa, target_col = (
                packed[c] for c in (_INDEX, _LABEL, _CHECK_LABEL, _KAPPA, _TARGET))
            targets = None if targets is None else target_col
            m = m_next
            if m == 0:
                break
        if m:  # rows that never stopped: x^K, K updates
            no_dest = torch.full((m,), -1, dtype=torch.int64, device=dev)
            ops.compact_rows(x, no_dest, 0, index=index, leavers=out, check=False)
            state = torch.stack([index, y, y_check, kappa, index.new_full((m,), K), target_col], dim=1)
            ops.compact_rows(state, no_dest, 0, index=index, leavers=final, check=False)
        updates = final[:, _UPDATES]
        checks = torch.clamp(updates + 1, max=K)  # a row stopped at check k ran k + 1 checks
        bp, bp_executed = self.host_read([updates.sum(), checks.sum()])
        return AttackResult(out, updates.clone(), checks, final[:, _KAPPA].clone(), bp,
                            bp_executed, rows_computed)
