"""Auto-PGD (Croce & Hein, ICML 2020): PGD with momentum and a step size that halves at
checkpoints, written from the paper and from the official code's behaviour (fra31/auto-attack).

One run on M rows, iterations i = 0 … K−1 after a random start x⁰ (L∞: x + ε·t/‖t‖∞, t ~ U(−1, 1);
L2: x + ε·t/‖t‖₂, t ~ N(0, I); clipped to [0, 1]):

- step: z = P(x + η·sign(g)) (L2: η·g/‖g‖₂), then x ← P(x + a·(z − x) + (1 − a)·(x − x_prev)),
  a = 1 at i = 0 and 0.75 after (the momentum); P projects onto the ε-ball and [0, 1]; η = 2ε;
- bookkeeping: the best loss and its point and gradient per row;
- checkpoints: the first after ⌈0.22 K⌉ iterations, then every period p, p shrinking by
  ⌈0.03 K⌉ down to ⌈0.06 K⌉ (``apgd_checkpoints``). At a checkpoint a row halves η and restarts
  from its best point when the loss rose in at most ρ·p of the last p iterations, or when η was not
  halved at the previous checkpoint and the best loss has not improved since (``halve_step``).

A row is broken the moment an iterate is misclassified: that iterate is its ``x_adv`` and, with
``compact=True``, the row leaves and every later iteration runs on fewer rows (its state: iterate,
previous iterate, best point, gradients, step size, best losses, loss history, labels, targets).
With EOT (``eot_iter`` > 1, a randomised model) rows stay to the end instead (see :class:`APGD`).
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from ..losses import ce_per_sample, ce_targeted_per_sample, dlr_loss, dlr_targeted_loss
from .base import _check_float, _check_int
from .eval_base import ActiveRows, EvalAttack, ranked_targets, success
from ..errors import UserError

LOSSES = ("ce", "dlr")


def apgd_checkpoints(steps: int) -> tuple[int, int, int]:
    """(the first checkpoint's period, the smallest period, the period's decrease) for K steps:
    (max(⌊0.22 K⌋, 1), max(⌊0.06 K⌋, 1), max(⌊0.03 K⌋, 1)), as the official code sets them."""
    return max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)


def apgd_schedule(steps: int) -> dict:
    """{iteration i: the period p ending there} for the checkpoints of a K-step run (counting
    the iterations i = 0 … K−1 after the start): the first after ``first`` iterations, then periods
    shrinking by ``decrease`` down to ``smallest`` (K = 100: 21, 40, 56, 69, 79, 86, 92, 98)."""
    first, smallest, decrease = apgd_checkpoints(steps)
    out, i, period = {}, first - 1, first
    while i < steps:
        out[i] = period
        period = max(period - decrease, smallest)
        i += period
    return out


def oscillates(loss_steps: Tensor, i: int, period: int, rho: float) -> Tensor:
    """Bool [M]: at checkpoint iteration ``i``, the loss rose in at most ρ·period of the last
    ``period`` iterations. ``loss_steps`` [M, K] holds the loss of iteration j in column j (zeros
    where not yet run); like the official code, the comparison before column 0 wraps around to
    column K − 1 (0 until the last iteration)."""
    k = loss_steps.shape[1]
    cur = [(i - c) % k for c in range(period)]
    prev = [(i - c - 1) % k for c in range(period)]
    rises = (loss_steps[:, cur] > loss_steps[:, prev]).sum(1)
    return rises <= period * rho


def halve_step(loss_steps: Tensor, i: int, period: int, rho: float, loss_best: Tensor,
               best_at_last_check: Tensor, halved_last_check: Tensor) -> Tensor:
    """Bool [M]: the rows that halve their step at checkpoint iteration ``i`` (condition 1:
    :func:`oscillates`; condition 2: not halved at the last checkpoint and no better loss since)."""
    stalled = ~halved_last_check & (best_at_last_check >= loss_best)
    return oscillates(loss_steps, i, period, rho) | stalled


class APGD(EvalAttack):
    """Auto-PGD, untargeted (or targeted with ``targets``/a ``set_mode_targeted_*`` mode).

    ``APGD(model, norm="linf", eps=8/255, steps=100, restarts=1, loss="ce", rho=0.75,
    eot_iter=1, seed=0, compact=True)``. ``loss``: ``"ce"``, ``"dlr"`` (Croce & Hein's scale-invariant
    loss; ≥ 3 classes), or a callable ``loss(logits, y)`` → per-sample losses [N] to maximise
    (``loss(logits, y, targets)`` in a targeted mode). Targeted, ``"ce"`` maximises −CE(z, t) and
    ``"dlr"`` the targeted DLR. ``eot_iter``: gradients averaged over that many passes
    (Expectation over Transformation, for randomised models); with ``eot_iter`` > 1 no row leaves
    early (one misclassified pass of a random model is no verdict): every row runs every iteration
    and its ``x_adv`` is its latest misclassified iterate, as in the official code. ``restarts``:
    further runs from new random points on the rows still robust.

    Shapes: ``x`` [N, C, H, W] in [0, 1], ``y`` [N]. Example::

        atk = fastadv.attacks.APGD(model, eps=8/255, loss="dlr")
        x_adv = atk(x, y)
        res = atk.run(x, y)   # res.robust, res.forward, res.backward per point
    """

    def __init__(self, model, norm: str = "linf", eps: float = 8 / 255, steps: int = 100,
                 restarts: int = 1, loss: Union[str, Callable] = "ce", rho: float = 0.75,
                 eot_iter: int = 1, seed: int = 0, compact: bool = True,
                 rows_per_pass: Optional[int] = None):
        super().__init__(model, norm=norm, eps=eps, seed=seed, compact=compact, rows_per_pass=rows_per_pass)
        self.steps = _check_int("steps", steps, 1)
        self.restarts = _check_int("restarts", restarts, 1)
        self.eot_iter = _check_int("eot_iter", eot_iter, 1)
        self.rho = _check_float("rho", rho)
        if not 0 < self.rho <= 1:
            raise UserError(f"rho must be in (0, 1], got {rho}")
        if not callable(loss) and loss not in LOSSES:
            raise UserError(f"loss must be 'ce', 'dlr' or a callable, got {loss!r}")
        self.loss = loss

    def __repr__(self) -> str:
        loss = self.loss if isinstance(self.loss, str) else getattr(self.loss, "__name__", "callable")
        return (f"{type(self).__name__}(norm={self.norm!r}, eps={self.eps:.4g}, steps={self.steps}, "
                f"restarts={self.restarts}, loss={loss!r}, seed={self.seed})")

    def _run(self, x, y, targets, clean, gen):
        self._zero_grad_rows = 0
        out, robust = super()._run(x, y, targets, clean, gen)
        if self._zero_grad_rows:
            msg = (f"{type(self).__name__}: {self._zero_grad_rows} points had a zero gradient at "
                   f"the start: gradient-based attacks may be unreliable on this model")
            self.warnings.append(msg)
            warnings.warn(msg, stacklevel=3)
        return out, robust

    # ------------------------------------------------------------------ one run
    def _loss(self, logits: Tensor, y: Tensor, tgt: Optional[Tensor]) -> Tensor:
        logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        if callable(self.loss):
            return self.loss(logits, y) if tgt is None else self.loss(logits, y, tgt)
        if tgt is None:
            return ce_per_sample(logits, y) if self.loss == "ce" else dlr_loss(logits, y)
        return ce_targeted_per_sample(logits, y, tgt) if self.loss == "ce" else dlr_targeted_loss(logits, y, tgt)

    def _gradient(self, x: Tensor, y: Tensor, tgt: Optional[Tensor], rows: Tensor):
        """(d loss/dx averaged over ``eot_iter`` passes, the last logits, the last losses)."""
        grad = torch.zeros_like(x)
        for _ in range(self.eot_iter):
            xr = x.detach().requires_grad_(True)
            logits = self.logits(xr, count=rows)
            loss = self._loss(logits, y, tgt)
            grad += torch.autograd.grad(loss.sum(), xr)[0].detach()
            self._backward[rows] += 1
        grad /= float(self.eot_iter)
        return grad, logits.detach(), loss.detach()

    def _start(self, x_nat: Tensor, gen) -> Tensor:
        if self.norm == "linf":
            t = 2 * self._rand(x_nat.shape, gen, x_nat) - 1
        else:
            t = self._rand(x_nat.shape, gen, x_nat, normal=True)
        return (x_nat + self.eps * (t / (self._norm(t) + 1e-12))).clamp(0.0, 1.0)

    def _project(self, z: Tensor, x_nat: Tensor) -> Tensor:
        if self.norm == "linf":
            return torch.clamp(torch.min(torch.max(z, x_nat - self.eps), x_nat + self.eps), 0.0, 1.0)
        d = z - x_nat
        norm = self._norm(d)
        return torch.clamp(x_nat + d / (norm + 1e-12) * torch.clamp(norm, max=self.eps), 0.0, 1.0)

    def _step(self, x, grad, x_prev, x_nat, step, a: float) -> Tensor:
        view = (-1,) + (1,) * (x.dim() - 1)
        direction = grad.sign() if self.norm == "linf" else grad / (self._norm(grad) + 1e-12)
        z = self._project(x + step.view(view) * direction, x_nat)
        return self._project(x + (z - x) * a + (x - x_prev) * (1 - a), x_nat)

    def _single_run(self, x_nat, y, tgt, idx, out, broken, gen, restart, targeted):
        checkpoints = apgd_schedule(self.steps)
        x = self._start(x_nat, gen)
        # With EOT (a randomised model) one misclassified pass settles nothing: as in the official
        # code every row runs every iteration and keeps its latest misclassified iterate.
        eot = self.eot_iter > 1
        rows = ActiveRows(idx, out, broken, self.compact and not eot, last=eot)
        grad, logits, loss = self._gradient(x, y, tgt, rows.index)
        if isinstance(self.loss, str) and self.loss == "dlr":
            self._zero_grad_rows += int((grad.reshape(grad.shape[0], -1).abs().sum(1) == 0).sum())
        state = dict(x=x, x_nat=x_nat, x_prev=x, x_best=x, grad=grad, grad_best=grad, y=y, tgt=tgt,
                     step=torch.full((x.shape[0],), 2.0 * self.eps, dtype=x.dtype, device=x.device),
                     loss_best=loss, best_at_check=loss, halved_at_check=torch.ones_like(loss, dtype=torch.bool),
                     loss_steps=torch.zeros(x.shape[0], self.steps, dtype=loss.dtype, device=x.device))
        state = rows.settle(success(logits, y, tgt if targeted else None), x, state)
        view = (-1,) + (1,) * (x.dim() - 1)
        for i in range(self.steps):
            if rows.m == 0:
                break
            s = state
            x = self._step(s["x"], s["grad"], s["x_prev"], s["x_nat"], s["step"], 0.75 if i > 0 else 1.0)
            s["x_prev"] = s["x"]
            grad, logits, loss = self._gradient(x, s["y"], s["tgt"], rows.index)
            s["x"], s["grad"] = x, grad
            # Broken rows leave now, with this iterate; the bookkeeping below is for the others.
            s = rows.settle(success(logits, s["y"], s["tgt"] if targeted else None), x,
                            dict(s, loss=loss))
            loss = s.pop("loss")
            s["loss_steps"][:, i] = loss
            better = loss > s["loss_best"]
            s["x_best"] = torch.where(better.view(view), s["x"], s["x_best"])
            s["grad_best"] = torch.where(better.view(view), s["grad"], s["grad_best"])
            s["loss_best"] = torch.where(better, loss, s["loss_best"])
            if i in checkpoints:
                halve = halve_step(s["loss_steps"], i, checkpoints[i], self.rho, s["loss_best"],
                                   s["best_at_check"], s["halved_at_check"])
                s["halved_at_check"], s["best_at_check"] = halve, s["loss_best"].clone()
                s["step"] = torch.where(halve, s["step"] / 2.0, s["step"])
                s["x"] = torch.where(halve.view(view), s["x_best"], s["x"])
                s["grad"] = torch.where(halve.view(view), s["grad_best"], s["grad"])
            state = s


class APGDT(APGD):
    """APGD-T, AutoAttack's targeted APGD: for the target ranks 2 … n_target_classes + 1 in turn
    (the classes with the 2nd, 3rd, … largest clean logit), one run (``restarts`` runs) on the
    targeted DLR loss on the points still robust. A point is broken when it is misclassified (any
    wrong class, not only the target). ``n_target_classes`` ≤ C − 1; needs ≥ 4 classes.

    ``APGDT(model, norm="linf", eps=8/255, steps=100, n_target_classes=9, restarts=1, seed=0)``.
    """

    def __init__(self, model, norm: str = "linf", eps: float = 8 / 255, steps: int = 100,
                 n_target_classes: int = 9, restarts: int = 1, loss="dlr", rho: float = 0.75,
                 eot_iter: int = 1, seed: int = 0, compact: bool = True,
                 rows_per_pass: Optional[int] = None):
        super().__init__(model, norm=norm, eps=eps, steps=steps, restarts=restarts, loss=loss,
                         rho=rho, eot_iter=eot_iter, seed=seed, compact=compact,
                         rows_per_pass=rows_per_pass)
        self.n_target_classes = _check_int("n_target_classes", n_target_classes, 1)

    def _rounds(self, clean, targets):
        if targets is not None:  # a user-targeted run: their targets, once
            yield targets
        else:
            yield from ranked_targets(clean, self.n_target_classes)
