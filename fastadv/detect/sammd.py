"""SAMMD: the semantic-aware MMD test (Gao et al., "Maximum Mean Discrepancy Test is Aware of
Adversarial Attacks", ICML 2021; Sjtubrian/SAMMD). Are these inputs from the same distribution
as natural data?

The kernel mixes the classifier's penultimate features φ with the inputs:
``k(a, b) = (1 − ε)·exp(−‖φ(a) − φ(b)‖²/σ_φ − ‖a − b‖²/σ_q) + ε·exp(−‖a − b‖²/σ_q)``.
The classifier is frozen; only σ_φ, σ_q and ε are trained, maximising ``MMD²_u/√var`` on a
training pair of samples (Adam, lr 2e-4, 1,000 full-batch steps, as the official code: σ_φ
starts at the median squared feature distance between the two samples, σ_q = s² with s starting
at √(2·H·W), 2,048 on 32×32 images, ε = sigmoid(c) with c starting at log 1e-10). The test is a
wild bootstrap of the V-statistic with an AR(1) multiplier process (ℓ = 0.2, 100 draws) on held-out
samples of equal size; reject at α = 0.05 when p ≤ α.
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from .mmd import TestResult, _paired, mmd2_and_variance, sq_dists, wild_bootstrap
from ..errors import UserError

__all__ = ["SAMMD", "penultimate_features"]


def penultimate_features(model: nn.Module, x: Tensor, batch_size: int = 256) -> Tensor:
    """The input of ``model``'s last ``nn.Linear`` (its penultimate features), flattened, for the
    rows of ``x``, computed in eval mode without gradients, batch by batch."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise UserError("model: has no nn.Linear layer whose input could serve as its "
                        "penultimate features; pass features=<callable> instead")
    grabbed: List[Tensor] = []
    hook = last[-1].register_forward_pre_hook(lambda mod, inp: grabbed.append(inp[0].detach()))
    modes = [m.training for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, x.shape[0], batch_size):
                model(x[i:i + batch_size])
    finally:
        hook.remove()
        for m, mode in zip(model.modules(), modes):
            m.training = mode
    feats = torch.cat([g.reshape(g.shape[0], -1) for g in grabbed]) if grabbed else \
        x.new_zeros(0, last[-1].in_features)
    if feats.shape[0] != x.shape[0]:  # e.g. a compiled model whose graph skips Python hooks
        raise UserError(f"model: its last nn.Linear saw {feats.shape[0]} rows for {x.shape[0]} "
                        f"inputs, so its input is not the penultimate features; pass the "
                        f"uncompiled model or features=<callable>")
    return feats


class SAMMD:
    """The SAMMD two-sample test with the features of ``model`` (or ``features(x) -> [N, D]``).

    ```python
    det = fastadv.detect.SAMMD(model).fit(x_nat_train, x_adv_train)   # 500 + 500 images
    stat, p = det.test(x_nat_test, x_adv_test)                          # 500 + 500 held out
    det.test(x_nat_test, x_adv_test).rejects(0.05)                      # True: they differ
    ```

    Inputs are [N, ...] images in the model's input range, two samples of equal size, on any
    device; the features are computed on the model's device, the statistics in float64 on the CPU.
    ``steps``/``lr``: the kernel's training; ``sigma_q``: σ_q's start (default 2·H·W of the
    inputs); ``draws``/``ar_length``: the wild bootstrap; ``seed``: its random draws.
    """

    def __init__(self, model: Optional[nn.Module] = None, *,
                 features: Optional[Callable[[Tensor], Tensor]] = None, steps: int = 1000,
                 lr: float = 2e-4, sigma_q: Optional[float] = None, draws: int = 100,
                 ar_length: float = 0.2, batch_size: int = 256, seed: int = 0):
        if (model is None) == (features is None):
            raise UserError("model/features: pass the classifier (its penultimate features are "
                            "used) or a features callable, one of the two")
        for name, v in (("steps", steps), ("draws", draws), ("batch_size", batch_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "steps" else 1):
                raise UserError(f"{name} must be an int >= {0 if name == 'steps' else 1}, got {v!r}")
        for name, v in (("lr", lr), ("ar_length", ar_length)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise UserError(f"{name} must be a number > 0, got {v!r}")
        if sigma_q is not None and not sigma_q > 0:
            raise UserError(f"sigma_q must be > 0, got {sigma_q!r}")
        self.model, self.features = model, features
        self.steps, self.lr, self.sigma_q0 = steps, float(lr), sigma_q
        self.draws, self.ar_length, self.batch_size = draws, float(ar_length), batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.params: Optional[Tuple[Tensor, Tensor, Tensor]] = None  # σ_φ, s (σ_q = s²), c
        self.history: List[float] = []  # the objective −MMD²/√var at each training step

    # ------------------------------------------------------------------ the kernel
    def _phi(self, x: Tensor) -> Tensor:
        if self.features is not None:
            with torch.no_grad():
                f = self.features(x)
        else:
            dev = next((p.device for p in self.model.parameters()), x.device)
            f = penultimate_features(self.model, x.to(dev), self.batch_size)
        return f.reshape(f.shape[0], -1).double().cpu()

    uses_features = True  # detection_trials computes φ of its pools once, through _phi

    @staticmethod
    def _distances(fa: Tensor, ia: Tensor, fb: Tensor, ib: Tensor):
        """The squared feature and input distances [3, n, n]: within a, within b, across (one
        stacked tensor: the kernel's training then runs a few large ops per step)."""
        return (torch.stack([sq_dists(fa, fa), sq_dists(fb, fb), sq_dists(fa, fb)]),
                torch.stack([sq_dists(ia, ia), sq_dists(ib, ib), sq_dists(ia, ib)]))

    @staticmethod
    def _kernel_parts(d, sigma_phi: Tensor, s: Tensor, c: Tensor):
        """``(K, E, F, ε)``: K = E·(ε + (1 − ε)F) = (1 − ε)·exp(−D_φ/σ_φ − D_q/σ_q) + ε·E with
        E = exp(−D_q/σ_q), F = exp(−D_φ/σ_φ), σ_q = s², ε = sigmoid(c)."""
        dphi, dq = d
        eps = torch.sigmoid(c)
        e = torch.exp(dq * (-1.0 / (s * s)))
        f = torch.exp(dphi * (-1.0 / sigma_phi))
        return e * (eps + (1 - eps) * f), e, f, eps

    @staticmethod
    def _kernel(d, sigma_phi: Tensor, s: Tensor, c: Tensor) -> Tensor:
        return SAMMD._kernel_parts(d, sigma_phi, s, c)[0]

    @property
    def sigma_phi(self) -> float:
        return float(self._fitted()[0])

    @property
    def sigma_q(self) -> float:
        return float(self._fitted()[1] ** 2)

    @property
    def epsilon(self) -> float:
        return float(torch.sigmoid(self._fitted()[2]))

    def _fitted(self):
        if self.params is None:
            raise RuntimeError("SAMMD: call fit(natural, other) first")
        return self.params

    # ------------------------------------------------------------------ training and test
    def fit(self, a: Tensor, b: Tensor) -> "SAMMD":
        """Train σ_φ, σ_q and ε to separate the samples ``a`` and ``b`` (equal sizes ≥ 2, e.g.
        500 natural and 500 adversarial images): ``steps`` full-batch Adam steps on
        ``−(MMD²_u + 1e-8)/√(var + 1e-8)``."""
        ia, ib = _paired("a", a, "b", b)
        spatial = math.prod(a.shape[2:]) if a.dim() > 2 else a[0].numel()
        return self._fit(self._phi(a), ia.cpu(), self._phi(b), ib.cpu(), spatial)

    def _fit(self, fa: Tensor, ia: Tensor, fb: Tensor, ib: Tensor, spatial: int) -> "SAMMD":
        d = self._distances(fa, ia, fb, ib)
        s0 = math.sqrt(self.sigma_q0) if self.sigma_q0 is not None else math.sqrt(2.0 * spatial)
        sigma_phi = d[0][2].median().clamp_min(1e-12)  # the median cross-sample feature distance
        params = [torch.tensor(float(v), dtype=torch.float64, requires_grad=True)
                  for v in (sigma_phi, s0, math.log(1e-10))]
        opt = torch.optim.Adam(params, lr=self.lr)
        self.history = []
        for _ in range(self.steps):
            objective, grads = self._objective_and_grad(d, *(p.detach() for p in params))
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()
            self.history.append(float(objective))
        self.params = tuple(p.detach() for p in params)
        return self

    @staticmethod
    def _objective_and_grad(d, sigma_phi: Tensor, s: Tensor, c: Tensor):
        """``J = −(MMD²_u + 1e-8)/√(var + 1e-8)`` and its gradient in (σ_φ, s, c), in closed
        form (a few passes over the [3, n, n] matrices instead of autograd's many; the test
        suite checks it against autograd). With E = exp(−D_q/s²), F = exp(−D_φ/σ_φ),
        K = E·(ε + (1 − ε)F) and G = ∂J/∂K: ∂K/∂σ_φ = (1 − ε)·E·F·D_φ/σ_φ²,
        ∂K/∂s = 2·K·D_q/s³, ∂K/∂c = ε(1 − ε)·E·(1 − F)."""
        dphi, dq = d
        n = dphi.shape[1]
        k, e, f, eps = SAMMD._kernel_parts(d, sigma_phi, s, c)
        kx, ky, kxy = k.unbind(0)
        mmd2, var = mmd2_and_variance(kx, ky, kxy)
        root = torch.sqrt(var.clamp_min(0) + 1e-8)
        objective = -(mmd2 + 1e-8) / root
        dm = -1.0 / root                                   # ∂J/∂MMD²
        # ∂J/∂var (zero where the clamp at 0 holds var, as the objective's own derivative)
        dv = torch.where(var > 0, (mmd2 + 1e-8) / (2 * root ** 3), torch.zeros_like(root))
        h = kx + ky - kxy - kxy.t()
        row = h.sum(1) / n
        gi = (8.0 / (n * n)) * (row - h.sum() / (n * n))  # ∂var/∂H_ij, a function of i alone
        off = (1 - torch.eye(n, dtype=k.dtype, device=k.device)) * (dm / (n * (n - 1)))
        g = torch.stack([off + dv * gi[:, None], off + dv * gi[:, None],
                         -2 * off - dv * (gi[:, None] + gi[None, :])])
        ge = g * e
        gef = ge * f
        grad_sigma_phi = (1 - eps) * (gef * dphi).sum() / (sigma_phi * sigma_phi)
        grad_s = 2 * (g * k * dq).sum() / (s ** 3)
        grad_c = eps * (1 - eps) * (ge.sum() - gef.sum())
        return objective, (grad_sigma_phi, grad_s, grad_c)

    def test(self, a: Tensor, b: Tensor) -> TestResult:
        """The wild-bootstrap test of held-out samples ``a`` and ``b`` (equal sizes):
        ``(statistic, p_value)``; ``.rejects(alpha)`` says whether they differ."""
        self._fitted()
        ia, ib = _paired("a", a, "b", b)
        return self._test(self._phi(a), ia.cpu(), self._phi(b), ib.cpu())

    def _test(self, fa: Tensor, ia: Tensor, fb: Tensor, ib: Tensor) -> TestResult:
        kx, ky, kxy = self._kernel(self._distances(fa, ia, fb, ib), *self._fitted()).unbind(0)
        return wild_bootstrap(kx + ky - kxy - kxy.t(), self.draws, self.ar_length, self.generator)

    def __repr__(self) -> str:
        fitted = "" if self.params is None else (f", sigma_phi={self.sigma_phi:.4g}, "
                                                  f"sigma_q={self.sigma_q:.4g}, eps={self.epsilon:.3g}")
        return f"SAMMD(steps={self.steps}, lr={self.lr:g}, draws={self.draws}{fitted})"
