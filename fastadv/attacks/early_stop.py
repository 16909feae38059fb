"""FAT's early-stopped PGD-K-τ (SPEC §2.1), with mid-batch compaction.

After each check the samples that leave are written to their rows of the output and the others are
packed to the front, so the next forward/backward pass runs on fewer rows. Per check there is one
host read (the new active count, which sizes the next batch); no per-sample synchronisation, no
growing ``torch.cat``, and the input order is restored by scattering through the carried row index.
``compact=False`` runs the same semantics on the fixed-shape batch with a mask, for comparison.

Policy: compact at every check where a sample left. On the CPU that is measured to be right: all of
fastadv's own ops (steps, early-stop update, plan, row moves) take 0.25–0.32 % of an early-stopped
PGD-10 on MNIST (``benchmarks/compaction_cost.py``), so every row saved is time saved. On a GPU,
where small batches are latency-bound, the policy is still to be chosen from ``benchmarks/gpu_check.py
attack`` (issue #11 §7: compact only below an active fraction, or bucket the active count).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import ops
from .base import Attack, AttackResult, _check_int, check_targeted_classes, resisted
from ..errors import UserTypeError

# Columns of the per-row integer state, compacted together in one op per check.
_INDEX, _LABEL, _BUDGET, _KAPPA, _UPDATES, _CHECK_LABEL, _TARGET = range(7)


def verdict_labels(logits: Tensor, y_check: Tensor, targets: Optional[Tensor]) -> Tensor:
    """The labels ``ops.early_stop_update_`` judges against. Its verdict is "argmax ≠ label"
    (misclassified). In a targeted run the verdict is "argmax = target": the kernel then gets the
    prediction itself where the target is missed and another class where it is hit."""
    if targets is None:
        return y_check
    check_targeted_classes(logits)
    pred = logits.argmax(dim=1)
    return torch.where(pred == targets, (pred + 1) % logits.shape[1], pred)


class EarlyStopPGD(Attack):
    """PGD-K-τ: each sample stops once it is misclassified and its budget τ is spent.

    ``EarlyStopPGD(model, eps=8/255, alpha=2/255, steps=10, tau=0, random_start="uniform",
    loss="ce", omega=0.0, compact=True)``. At check k (k = 0 … K−1) a sample classified wrongly
    with budget 0 leaves with output x^k (k updates); wrong with budget left: budget −= 1; the others
    and these get one update ``x ← clip(proj(x + α·sign(g) + ω·N(0, I)))``. Survivors output x^K,
    unchecked. τ is cumulative (correct checks do not restore it); τ ≥ K is exactly PGD-K.
    ``kappa`` counts correct checks before leaving (GAIR-FAT's κ). The wrong/right test is always
    against the true label, also with ``loss="kl"``. Targeted (``targets=`` or a
    ``set_mode_targeted_*`` mode), "wrong" reads "classified as the target": a sample stops at its
    target once τ is spent, and κ counts the checks at which it was not at its target.
    """

    def __init__(self, model, eps=8 / 255, alpha=2 / 255, steps: int = 10, tau: int = 0,
                 random_start="uniform", norm: str = "linf", loss: str = "ce", omega: float = 0.0,
                 compact: bool = True, **kw):
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start,
                         norm=norm, loss=loss, omega=omega, **kw)
        self.tau = _check_int("tau", tau)
        if not isinstance(compact, bool):
            raise UserTypeError(f"compact must be a bool, got {type(compact).__name__}")
        self.compact = compact

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", tau={self.tau}, compact={self.compact})"

    def _attack(self, x_nat, y, eps, alpha, clean, y_check) -> AttackResult:
        run = self._attack_compact if self.compact else self._attack_masked
        return run(x_nat, y, eps, alpha, clean, y_check)

    # ------------------------------------------------------------------ compacted
    def _attack_compact(self, x_nat: Tensor, y: Tensor, eps: Tensor, alpha: Tensor,
                        clean: Optional[Tensor], y_check: Tensor) -> AttackResult:
        n, dev, K = x_nat.shape[0], x_nat.device, self.steps
        out = torch.empty_like(x_nat)            # x_adv in input order, filled as rows leave
        final = torch.empty(n, 7, dtype=torch.int64, device=dev)  # the rows' final state
        x = self._start(x_nat, eps)
        index = torch.arange(n, device=dev)
        budget = torch.full((n,), self.tau, dtype=torch.int64, device=dev)
        kappa = torch.zeros(n, dtype=torch.int64, device=dev)
        per_row = torch.stack([eps, alpha], dim=1)  # [M, 2] float32, compacted with the rows
        targets = self._targets
        target_col = y_check if targets is None else targets  # a placeholder when untargeted
        m, rows_computed = n, 0
        for k in range(K):
            logits, grad = self._check(x, y, clean, targets)
            rows_computed += m
            leave = ops.early_stop_update_(logits, verdict_labels(logits, y_check, targets), budget, kappa)
            dest, m_next = ops.compaction_plan(leave)  # the one host read of this check
            if m_next == m:  # nobody left: a plain in-place step, nothing to move
                self._step_(x, grad, x_nat, eps, alpha)
                continue
            state = torch.stack([index, y, budget, kappa, index.new_full((m,), k), y_check, target_col],
                                dim=1)
            # Leavers' state goes to final[index] (k updates); the rest is packed in stable order.
            packed = ops.compact_rows(state, dest, m_next, index=index, leavers=final, check=False).t().contiguous()
            per_row = ops.compact_rows(per_row, dest, m_next, check=False)
            x, x_nat = self._step_compact(x, grad, x_nat, eps, alpha, dest, m_next, index, out,
                                          per_row)
            if clean is not None:
                clean = ops.compact_rows(clean, dest, m_next, check=False)
            index, y, budget, kappa, y_check, target_col = (
                packed[c] for c in (_INDEX, _LABEL, _BUDGET, _KAPPA, _CHECK_LABEL, _TARGET))
            targets = None if targets is None else target_col
            eps, alpha = per_row.t().contiguous().unbind(0)
            m = m_next
            if m == 0:
                break
        if m:  # survivors: x^K, unchecked, K updates, back to their input rows
            no_dest = torch.full((m,), -1, dtype=torch.int64, device=dev)
            ops.compact_rows(x, no_dest, 0, index=index, leavers=out, check=False)
            state = torch.stack([index, y, budget, kappa, index.new_full((m,), K), y_check, target_col],
                                dim=1)
            ops.compact_rows(state, no_dest, 0, index=index, leavers=final, check=False)
        return self._result(out, final[:, _UPDATES], final[:, _KAPPA], rows_computed)

    def _step_compact(self, x, grad, x_nat, eps, alpha, dest, m_next, index, out, per_row_next):
        """Leavers → ``out[index]`` unchanged; stayers packed and stepped. Returns (x, x_nat).
        Every compaction passes ``check=False``: its plan comes from ``compaction_plan``, and a
        kernel's out-of-range flag is read with the next plan or the attack's final read."""
        with torch.no_grad():
            if self.norm == "linf":  # one fused pass over memory
                return ops.linf_step_compact(x, grad, x_nat, eps, alpha, dest, m_next, index, out,
                                             self.clip_min, self.clip_max, noise=self._noise(x),
                                             check=False)
            # L2 needs each row's norm first: pack, then step the packed rows.
            x_next = ops.compact_rows(x, dest, m_next, index=index, leavers=out, check=False)
            g_next = ops.compact_rows(grad, dest, m_next, check=False)
            xn_next = ops.compact_rows(x_nat, dest, m_next, check=False)
            e_next, a_next = per_row_next.t().contiguous().unbind(0)
            self._step_(x_next, g_next, xn_next, e_next, a_next)
            return x_next, xn_next

    # ------------------------------------------------------------------ fixed shape, masked
    def _attack_masked(self, x_nat: Tensor, y: Tensor, eps: Tensor, alpha: Tensor,
                       clean: Optional[Tensor], y_check: Tensor) -> AttackResult:
        """The same semantics on the full batch: every check runs on all N rows."""
        n, dev = x_nat.shape[0], x_nat.device
        x = self._start(x_nat, eps)
        active = torch.ones(n, dtype=torch.bool, device=dev)
        budget = torch.full((n,), self.tau, dtype=torch.int64, device=dev)
        kappa = torch.zeros(n, dtype=torch.int64, device=dev)
        updates = torch.zeros(n, dtype=torch.int64, device=dev)
        rows_computed = 0
        view = (-1,) + (1,) * (x.dim() - 1)
        for _ in range(self.steps):
            logits, grad = self._check(x, y, clean, self._targets)
            rows_computed += n
            wrong = ~resisted(logits, y_check, self._targets)
            leave = active & wrong & (budget == 0)
            budget -= (active & wrong & ~leave).long()
            kappa += active & ~wrong
            active &= ~leave
            stepped = self._step_(x.clone(), grad, x_nat, eps, alpha)
            x = torch.where(active.view(view), stepped, x)
            updates += active
            if not bool(active.any()):  # one host read per check
                break
        return self._result(x, updates, kappa, rows_computed)

    def _result(self, x_adv: Tensor, updates: Tensor, kappa: Tensor, rows_computed: int) -> AttackResult:
        # A sample that left at check k had k updates and k + 1 checks; survivors K and K. The
        # counts come back in the attack's one host read, with its output checks.
        checks = torch.clamp(updates + 1, max=self.steps)
        bp, bp_executed = self.host_read([updates.sum(), checks.sum()])
        return AttackResult(x_adv, updates.clone(), checks, kappa.clone(), bp, bp_executed, rows_computed)
