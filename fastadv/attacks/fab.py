"""FAB, the Fast Adaptive Boundary attack (Croce & Hein, ICML 2020), L∞ and L2, untargeted or
AutoAttack's targeted FAB-T; written from the paper and from the official code's behaviour.

Each iteration linearises the decision boundary at the iterate x (between the label and the
closest other class; FAB-T: the target class), projects both x and the original point x₀ onto that
hyperplane inside [0, 1] (``project_linf``/``project_l2``: the least-norm step reaching it), and
moves to the convex combination (x + η·d_x)(1 − a) + (x₀ + η·d₀)·a, a = min(‖d_x‖/(‖d_x‖ + ‖d₀‖),
α_max), clipped to [0, 1]. An iterate that is misclassified is pulled back towards x₀:
x ← x₀ + β·(x − x₀). FAB minimises the perturbation; for AutoAttack a point is broken when an
misclassified iterate lies within ε, and then (``compact=True``) the row leaves at once with that
iterate as its ``x_adv``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .base import _check_float, _check_int
from .eval_base import ActiveRows, EvalAttack, ranked_targets, success


# ---------------------------------------------------------------------------- the projections
def _least_budget(breaks: Tensor, weights: Tensor, need: Tensor) -> Tensor:
    """The least λ ≥ 0 with Σ_i weights_i·min(λ, breaks_i) ≥ need, per row (inf if even λ = ∞ is
    short). The sum is piecewise linear and concave in λ with kinks at the breaks: sort them, find
    the segment from the sums at the kinks, solve on it."""
    b, order = breaks.sort(dim=1)
    wt = weights.gather(1, order)
    cum_w = wt.cumsum(1)
    cum_wb = (wt * b).cumsum(1)
    total = cum_w[:, -1:]
    at_kinks = cum_wb + b * (total - cum_w)          # the sum at λ = each break
    j = (at_kinks < need[:, None]).sum(1, keepdim=True)  # kinks passed before reaching ``need``
    zero = torch.zeros_like(need[:, None])
    done_wb = torch.cat([zero, cum_wb], 1).gather(1, j)  # what the saturated coordinates give
    done_w = torch.cat([zero, cum_w], 1).gather(1, j)
    lam = (need[:, None] - done_wb) / (total - done_w).clamp_min(1e-30)
    feasible = j < b.shape[1]
    return torch.where(feasible, lam, torch.full_like(lam, float("inf"))).squeeze(1)


def project_linf(t: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """The step d of least ‖d‖∞ that takes each row of ``t`` [M, D] onto the hyperplane
    w·z = b within the box [0, 1]^D; where the box does not reach the hyperplane, the corner of
    the box closest to it (d = that corner − t). Coordinates with w = 0 do not move."""
    c = (w * t).sum(1) - b
    s = torch.where(c >= 0, 1.0, -1.0).to(w)
    w, c = w * s[:, None], c * s  # now w·(t + d) must come down by c ≥ 0
    room = torch.where(w > 0, t, 1 - t)  # how far each coordinate can move downhill
    lam = _least_budget(room, w.abs(), c)
    return -torch.sign(w) * torch.minimum(lam[:, None], room)


def project_l2(t: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """As :func:`project_linf`, for the least ‖d‖₂: d_i = −sign(w_i)·min(λ|w_i|, room_i) with the
    least λ that reaches the hyperplane (coordinates with |w| < 1e−8 do not move)."""
    c = (w * t).sum(1) - b
    s = torch.where(c >= 0, 1.0, -1.0).to(w)
    w, c = w * s[:, None], c * s
    live = w.abs() >= 1e-8
    aw = torch.where(live, w.abs(), torch.ones_like(w))
    room = torch.where(w > 0, t, 1 - t)
    breaks = torch.where(live, room / aw, torch.full_like(w, 1e12))  # λ at which i saturates
    lam = _least_budget(breaks, torch.where(live, w * w, torch.zeros_like(w)), c)
    d = -torch.sign(w) * torch.minimum(lam[:, None] * aw, room)
    return torch.where(live, d, torch.zeros_like(d))


# ---------------------------------------------------------------------------- the attack
class FAB(EvalAttack):
    """FAB, untargeted (``targeted=False``: the closest of all other classes' boundaries, C
    backward passes per iteration) or FAB-T (``targeted=True``: the target ranks 2 … n+1 of the
    clean logits in turn, one backward pass per iteration).

    ``FAB(model, norm="linf", eps=8/255, steps=100, restarts=1, targeted=False,
    n_target_classes=9, alpha_max=0.1, eta=1.05, beta=0.9, seed=0, compact=True)``. Restarts
    after the first start from x₀ + ε/2 · t/‖t‖ (t uniform for L∞, Gaussian for L2). With user
    ``targets`` a point is broken when classified as its target. Inputs [N, ...] in [0, 1].

    Example::

        res = fastadv.attacks.FAB(model, eps=8/255, targeted=True).run(x, y)
    """

    def __init__(self, model, norm: str = "linf", eps: float = 8 / 255, steps: int = 100,
                 restarts: int = 1, targeted: bool = False, n_target_classes: int = 9,
                 alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9, seed: int = 0,
                 compact: bool = True, rows_per_pass: Optional[int] = None):
        super().__init__(model, norm=norm, eps=eps, seed=seed, compact=compact, rows_per_pass=rows_per_pass)
        self.steps = _check_int("steps", steps, 1)
        self.restarts = _check_int("restarts", restarts, 1)
        self.targeted = bool(targeted)
        self.n_target_classes = _check_int("n_target_classes", n_target_classes, 1)
        self.alpha_max = _check_float("alpha_max", alpha_max)
        self.eta = _check_float("eta", eta)
        self.beta = _check_float("beta", beta)

    def __repr__(self) -> str:
        return (f"FAB(norm={self.norm!r}, eps={self.eps:.4g}, steps={self.steps}, restarts="
                f"{self.restarts}, targeted={self.targeted}, seed={self.seed})")

    def _rounds(self, clean: Tensor, targets: Optional[Tensor]):
        if targets is not None or not self.targeted:
            yield targets  # the user's targets, or untargeted
        else:
            yield from ranked_targets(clean, self.n_target_classes)

    def _boundary(self, x: Tensor, y: Tensor, tgt: Optional[Tensor], rows: Tensor):
        """(df [M, K], dg [M, K, ...]): the logit differences to the label and their gradients at
        ``x``; K = C − 1 + 1 untargeted (the label's own column is set far away), 1 targeted."""
        xr = x.detach().requires_grad_(True)
        logits = self.logits(xr, count=rows)
        u = torch.arange(x.shape[0], device=x.device)
        if tgt is not None:
            diff = -(logits[u, y] - logits[u, tgt])
            (g,) = torch.autograd.grad(diff.sum(), xr)
            self._backward[rows] += 1
            return diff.detach()[:, None], g[:, None]
        k = logits.shape[1]
        grads = []
        for cls in range(k):  # one backward pass per class: the Jacobian's rows
            onehot = torch.zeros_like(logits)
            onehot[:, cls] = 1.0
            (g,) = torch.autograd.grad(logits, xr, grad_outputs=onehot, retain_graph=cls < k - 1)
            grads.append(g)
        self._backward[rows] += k
        g = torch.stack(grads, 1)
        z = logits.detach()
        df = z - z[u, y][:, None]
        dg = g - g[u, y][:, None]
        df[u, y] = 1e10
        return df, dg

    def _dual_norm(self, dg: Tensor) -> Tensor:
        flat = dg.reshape(dg.shape[0], dg.shape[1], -1)
        return flat.abs().sum(-1) if self.norm == "linf" else (flat ** 2).sum(-1).sqrt()

    def _single_run(self, x0, y, tgt, idx, out, broken, gen, restart, targeted):
        """Restarts after the first start from a random point (the official ``use_rand_start``)."""
        m = x0.shape[0]
        view = (-1,) + (1,) * (x0.dim() - 1)
        x1 = x0.clone()
        if restart > 0:
            if self.norm == "linf":
                t = 2 * self._rand(x0.shape, gen, x0) - 1
                scale = t.reshape(m, -1).abs().amax(1).view(view)
            else:
                t = self._rand(x0.shape, gen, x0, normal=True)
                scale = (t ** 2).reshape(m, -1).sum(-1).sqrt().view(view)
            eps_t = torch.full((m,) + view[1:], self.eps, dtype=x0.dtype, device=x0.device)
            x1 = (x0 + eps_t * t / scale * 0.5).clamp(0.0, 1.0)
        project = project_linf if self.norm == "linf" else project_l2
        rows = ActiveRows(idx, out, broken, self.compact)
        state = dict(x1=x1, x0=x0, y=y, tgt=tgt)
        for _ in range(self.steps):
            if rows.m == 0:
                break
            s = state
            x1, x0 = s["x1"], s["x0"]
            k = x1.shape[0]
            df, dg = self._boundary(x1, s["y"], s["tgt"], rows.index)
            dist = df.abs() / (1e-12 + self._dual_norm(dg))
            u = torch.arange(k, device=x1.device)
            ind = dist.min(dim=1)[1]
            dg2 = dg[u, ind]
            b = -df[u, ind] + (dg2 * x1).reshape(k, -1).sum(-1)
            w = dg2.reshape(k, -1)
            d3 = project(torch.cat((x1.reshape(k, -1), x0.reshape(k, -1)), 0),
                         torch.cat((w, w), 0), torch.cat((b, b), 0))
            d1, d2 = d3[:k].reshape(x1.shape), d3[k:].reshape(x1.shape)
            a0 = d3.abs().amax(1) if self.norm == "linf" else (d3 ** 2).sum(1).sqrt()
            a0 = torch.clamp(a0, min=1e-8).view((-1,) + view[1:])
            a1, a2 = a0[:k], a0[k:]
            alpha = torch.clamp(torch.clamp(a1 / (a1 + a2), min=0.0), max=self.alpha_max)
            x1 = ((x1 + self.eta * d1) * (1 - alpha) + (x0 + d2 * self.eta) * alpha).clamp(0.0, 1.0)
            with torch.no_grad():
                logits = self.logits(x1, count=rows.index)
            is_adv = success(logits, s["y"], s["tgt"] if targeted else None)
            within = self._norm(x1 - x0).view(-1) <= self.eps
            # An adversarial iterate within ε breaks the point; others step back towards x₀.
            back = is_adv & ~within
            s["x1"] = torch.where(back.view(view), x0 + (x1 - x0) * self.beta, x1)
            state = rows.settle(is_adv & within, x1, s)
