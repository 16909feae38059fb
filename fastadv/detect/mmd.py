"""Two-sample MMD statistics (Gretton et al. 2012; Liu et al. 2020, whose estimators SAMMD uses):
squared distances, the unbiased MMD² with its variance, the wild bootstrap and the permutation
test. Every function works on kernel matrices, so any kernel fits."""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor
from ..errors import UserError, UserTypeError

__all__ = ["TestResult", "sq_dists", "mmd2_and_variance", "ar1_multipliers", "wild_bootstrap",
           "permutation_test", "median_sq_dist", "GaussianMMD"]


class TestResult(NamedTuple):
    """A test's ``statistic`` and ``p_value`` (the share of null draws above the statistic):
    ``stat, p = detector.test(a, b)``."""
    statistic: float
    p_value: float

    def rejects(self, alpha: float = 0.05) -> bool:
        """Whether the two samples differ at level ``alpha``: ``p ≤ α``, at most α·B of the B null
        draws above the statistic (the official rule, ⌈α·B⌉, where α·B is a whole number: 5 of
        100 at α = 0.05)."""
        return self.p_value <= alpha


def sq_dists(a: Tensor, b: Tensor) -> Tensor:
    """``‖a_i − b_j‖²`` [N, M] of the flattened rows (clamped at 0 against round-off)."""
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.t()
    return d.clamp_min_(0)


def median_sq_dist(a: Tensor, b: Tensor) -> Tensor:
    """The median squared distance between the rows of ``a`` and those of ``b``."""
    return sq_dists(a, b).median()


def mmd2_and_variance(kx: Tensor, ky: Tensor, kxy: Tensor) -> Tuple[Tensor, Tensor]:
    """The unbiased MMD² of paired samples of n each (the diagonals of all three matrices left
    out: ``Σ_{i≠j} H_ij / (n(n−1))``, H = Kx + Ky − Kxy − Kxyᵀ) and the estimate of its
    variance ``4/n³·Σ_i(Σ_j H_ij)² − 4/n⁴·(Σ_ij H_ij)²``."""
    n = kx.shape[0]
    off = lambda k: (k.sum() - k.diagonal().sum()) / (n * (n - 1))  # noqa: E731
    mmd2 = off(kx) + off(ky) - 2 * off(kxy)
    h = kx + ky - kxy - kxy.t()
    row = h.sum(1) / n
    variance = 4 * ((row * row).sum() / n - (h.sum() / (n * n)) ** 2)
    return mmd2, variance


def ar1_multipliers(n: int, draws: int, ar_length: float = 0.2,
                    generator: Optional[torch.Generator] = None) -> Tensor:
    """``draws`` centred AR(1) multiplier processes of length n [n, draws]:
    ``W_t = a·W_{t−1} + √(1 − a²)·e_t``, a = exp(−1/ℓ), e ~ N(0, 1), W_0 = √(1 − a²)·e_0 (the
    recursion as one product with the lower-triangular matrix of a^(t−s))."""
    a = math.exp(-1.0 / ar_length)
    e = torch.randn(n, draws, dtype=torch.float64, generator=generator) * math.sqrt(1.0 - a * a)
    lag = torch.arange(n, dtype=torch.float64)
    lag = lag[:, None] - lag[None, :]
    decay = torch.where(lag >= 0, torch.tensor(a, dtype=torch.float64) ** lag.clamp_min(0),
                        torch.zeros((), dtype=torch.float64))
    w = decay @ e
    return w - w.mean(0, keepdim=True)


def wild_bootstrap(h: Tensor, draws: int = 100, ar_length: float = 0.2,
                   generator: Optional[torch.Generator] = None) -> TestResult:
    """The wild bootstrap of the V-statistic ``mean(H)`` (Chwialkowski et al. 2014; SAMMD's
    test): with the multiplier processes W of :func:`ar1_multipliers`, the null draws are
    ``W_bᵀ H W_b / n²``; the p-value is the share of them above the statistic."""
    n = h.shape[0]
    w = ar1_multipliers(n, draws, ar_length, generator).to(h.device, h.dtype)
    stat = h.mean()
    null = ((h @ w) * w).sum(0) / (n * n)
    return TestResult(float(stat), float((null > stat).double().mean()))


def permutation_test(k: Tensor, n: int, permutations: int = 100,
                     generator: Optional[torch.Generator] = None) -> TestResult:
    """The permutation test of the unbiased MMD² (:func:`mmd2_and_variance`) on the joint kernel
    matrix ``k`` [2n, 2n] (the first n rows one sample, the rest the other): the null draws
    relabel the pooled rows (all draws at once, as block sums ``aᵀKb`` of indicator vectors)."""
    perms = [torch.arange(2 * n)] + [torch.randperm(2 * n, generator=generator)
                                     for _ in range(permutations)]
    perms = torch.stack(perms).to(k.device)             # [1 + P, 2n]: the observed split first
    ind = torch.zeros(perms.shape[0], 2 * n, dtype=k.dtype, device=k.device)
    ind.scatter_(1, perms[:, :n], 1.0)                  # a: the rows labelled "first sample"
    other = 1.0 - ind                                   # b
    ka = ind @ k                                        # k is symmetric: rows of aᵀK
    diag = k.diagonal()
    sum_xx = (ka * ind).sum(1) - ind @ diag
    sum_yy = ((other @ k) * other).sum(1) - other @ diag
    sum_xy = (ka * other).sum(1) - k[perms[:, :n], perms[:, n:]].sum(1)  # less the pairs (i, i)
    mmd2 = (sum_xx + sum_yy - 2 * sum_xy) / (n * (n - 1))
    stat, null = mmd2[0], mmd2[1:]
    return TestResult(float(stat), float((null > stat).double().mean()))


class GaussianMMD:
    """Plain MMD with a Gaussian kernel ``exp(−‖a − b‖²/σ)`` on the flattened inputs, σ the median
    squared distance between the two samples given to :meth:`fit` (or ``sigma``), judged by a
    permutation test: the baseline that the SAMMD paper shows to miss adversarial data.

    ``GaussianMMD().fit(a, b).test(a2, b2)`` → :class:`TestResult`."""

    def __init__(self, sigma: Optional[float] = None, permutations: int = 100, seed: int = 0):
        if sigma is not None and not sigma > 0:
            raise UserError(f"sigma must be > 0, got {sigma!r}")
        if isinstance(permutations, bool) or not isinstance(permutations, int) or permutations < 1:
            raise UserError(f"permutations must be an int >= 1, got {permutations!r}")
        self.sigma_given, self.sigma, self.permutations = sigma, sigma, permutations
        self.generator = torch.Generator().manual_seed(seed)

    uses_features = False

    def fit(self, a: Tensor, b: Tensor) -> "GaussianMMD":
        ia, ib = _paired("a", a, "b", b)
        return self._fit(None, ia.cpu(), None, ib.cpu())

    def _fit(self, fa, ia: Tensor, fb, ib: Tensor, spatial: int = 0) -> "GaussianMMD":
        # the median of this pair (each fit anew), unless the user fixed sigma
        self.sigma = self.sigma_given if self.sigma_given is not None else float(median_sq_dist(ia, ib))
        return self

    def test(self, a: Tensor, b: Tensor) -> TestResult:
        ia, ib = _paired("a", a, "b", b)
        return self._test(None, ia.cpu(), None, ib.cpu())

    def _test(self, fa, ia: Tensor, fb, ib: Tensor) -> TestResult:
        if self.sigma is None:
            raise RuntimeError("GaussianMMD: call fit(a, b) first, or pass sigma")
        z = torch.cat([ia, ib])
        k = torch.exp(-sq_dists(z, z) / self.sigma)
        return permutation_test(k, ia.shape[0], self.permutations, self.generator)


def _paired(name_a: str, a, name_b: str, b) -> Tuple[Tensor, Tensor]:
    """Two samples of equal size ≥ 2, flattened, in float64 (the statistics pair row i with i)."""
    for name, t in ((name_a, a), (name_b, b)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise UserTypeError(f"{name} must be a floating-point tensor, got "
                                f"{type(t).__name__ if not isinstance(t, Tensor) else t.dtype}")
        if t.dim() < 2 or t.shape[0] < 2:
            raise UserError(f"{name} must hold at least 2 samples along dim 0, got shape "
                            f"{tuple(t.shape)}")
    if a.shape != b.shape:
        raise UserError(f"{name_a} and {name_b} must have the same shape (the tests pair the two "
                        f"samples' rows), got {tuple(a.shape)} and {tuple(b.shape)}")
    return a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
