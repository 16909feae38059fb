"""Outer-minimisation losses: CE (AT/FAT), GAIR-weighted CE, TRADES and MART, as functions and
as the :class:`Objective` objects a training method is made of.

TRADES and MART follow their official code (yaodongyu/TRADES:trades.py, YisenWang/MART:mart.py)
term by term, including MART's numerical guards (1.0001, 1e-12, 1.0000001).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.heads import forward_heads, head_weights, weighted_heads
from .checks import Option, check_bool, check_number, fail
from ..errors import UserError, UserTypeError


def ce_loss(logits_adv: Tensor, y: Tensor, weights: Optional[Tensor] = None) -> Tensor:
    """``mean(CE)``; with ``weights`` [N] (GAIR, already normalised to mean 1): ``mean(w·CE)``.
    The weights carry no gradient."""
    if weights is None:
        return F.cross_entropy(logits_adv, y)
    if weights.shape != y.shape:
        raise UserError(f"weights must have shape {tuple(y.shape)}, got {tuple(weights.shape)}")
    ce = F.cross_entropy(logits_adv, y, reduction="none")
    return (weights.detach().to(ce.dtype) * ce).mean()


def trades_loss(logits_nat: Tensor, logits_adv: Tensor, y: Tensor, beta: float = 6.0) -> Tensor:
    """TRADES: ``CE(f(x), y) + β · KL(p(x) ‖ p(x'))`` summed over the batch, divided by N (the
    official ``KLDivLoss(size_average=False)/batch_size``). Gradients flow through both branches."""
    n = logits_nat.shape[0]
    loss_natural = F.cross_entropy(logits_nat, y)
    loss_robust = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_nat, dim=1),
                           reduction="sum") / n
    return loss_natural + float(beta) * loss_robust


def mart_loss(logits_nat: Tensor, logits_adv: Tensor, y: Tensor, beta: float = 6.0) -> Tensor:
    """MART: ``BCE(p(x'), y) + β · mean(KL(p(x) ‖ p(x')) · (1 − p_y(x)))`` as in the official code,
    where BCE = CE + ``−log(1 − max_{k≠y} p_k(x'))``."""
    n = logits_nat.shape[0]
    adv_probs = F.softmax(logits_adv, dim=1)
    top2 = torch.argsort(adv_probs, dim=1)[:, -2:]
    # The most likely wrong class: the top class, or the runner-up when the top one is y.
    new_y = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    loss_adv = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12),
                                                           new_y)
    nat_probs = F.softmax(logits_nat, dim=1)
    true_probs = torch.gather(nat_probs, 1, y.unsqueeze(1)).squeeze(1)
    kl = F.kl_div(torch.log(adv_probs + 1e-12), nat_probs, reduction="none").sum(dim=1)
    loss_robust = (kl * (1.0000001 - true_probs)).sum() / n
    return loss_adv + float(beta) * loss_robust


# ----------------------------------------------------------------------------- objectives


def logits_of(model, x: Tensor, y: Tensor) -> list:
    """Every head's fp32 logits, the final one first (one head for a plain model); ``y`` steers a
    multi-head model's label-dependent layers (:mod:`fastadv.models.heads`)."""
    return [z.float() for z in forward_heads(model, x, y)]


def over_heads(model, loss_fn, *heads) -> Tensor:
    """``Σ_h w_h · loss_fn(heads[0][h], heads[1][h], …)``: a loss of one head's logits applied to
    every head of a multi-head model and weighted as it declares (the loss itself otherwise)."""
    return weighted_heads(head_weights(model), [loss_fn(*zs) for zs in zip(*heads)])


@dataclass(frozen=True)
class EpochPlan:
    """What one epoch of a method runs with: its resolved ``settings`` (τ, ω, β, λ, …), the
    ``values`` its schedules give this epoch (``tau``, ``lam``; ``None`` where off) and the
    attack's ``steps`` K."""
    settings: Mapping[str, Any] = field(default_factory=dict)
    values: Mapping[str, Any] = field(default_factory=dict)
    steps: int = 10


class Objective:
    """What loss trains on the attack's result. ``objective(model, x, y, res, plan)`` returns
    ``(loss, logits_adv)`` (the logits the adversarial accuracy is counted on); ``res`` is the
    attack's :class:`~fastadv.attacks.AttackResult`, or ``None`` for standard training (then the
    clean batch is the input). ``options``: the :class:`~fastadv.training.checks.Option` s it
    takes; ``epoch_values``: what its schedules give (0-based) ``epoch``."""
    name = "ce"
    options: Tuple[Option, ...] = ()
    needs_attack = False  # True: it has no meaning without an attack (TRADES and MART do)

    def epoch_values(self, settings: Mapping[str, Any], epoch: int,
                     epochs: Optional[int]) -> Dict[str, Any]:
        return {}

    def __call__(self, model, x: Tensor, y: Tensor, res, plan: EpochPlan) -> Tuple[Tensor, Tensor]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CE(Objective):
    """``mean CE(f(x_adv), y)`` (AT, FAT); the clean batch without an attack (standard)."""
    name = "ce"

    def __call__(self, model, x, y, res, plan):
        heads = logits_of(model, res.x_adv if res is not None else x, y)
        return over_heads(model, lambda z: ce_loss(z, y), heads), heads[0]


def _check_lam(name, value, epochs):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        fail(name, f"must be a number (inf allowed: no reweighting), got {value!r}",
             UserTypeError)
    return float(value)


def _check_weight_func(name, value, epochs):
    from ..losses import WEIGHT_FUNCS
    if value not in WEIGHT_FUNCS:
        fail(name, f"unknown {value!r}; available: {', '.join(WEIGHT_FUNCS)}")
    return value


def _check_gair_start(name, value, epochs):
    check_number(name, value, minimum=0, integer=True)
    if epochs is not None and value >= epochs:
        fail(name, f"{value} is not before the end of the {epochs} epochs (0-based: the first "
                   f"reweighted epoch), so the method would never reweight; use 0 … {epochs - 1}")
    return value


def _gair_options(default_lam: float) -> Tuple[Option, Option]:
    """GAIR's λ and first reweighted epoch (default: half the epochs), shared by its objectives."""
    return (Option("lam", "GAIR reweighting (its λ)", default_lam, _check_lam),
            Option("gair_start", "GAIR reweighting (its first epoch)",
                   lambda epochs: epochs // 2 if epochs else None, _check_gair_start))


class GairCE(CE):
    """GAIRAT's geometry-aware instance-reweighted CE: ``mean(w(κ)·CE)`` with the weights of
    :func:`fastadv.losses.gair_weights` (λ, weight function; K the attack's steps), from epoch
    ``gair_start`` on (plain CE before: the official burn-in; default: half the epochs). Needs an
    attack that returns κ (GA-PGD, or FAT's early-stopped PGD)."""
    name = "gair-ce"
    needs_attack = True

    def __init__(self, default_lam: float = -1.0):
        self.default_lam = float(default_lam)
        lam, start = _gair_options(self.default_lam)
        self.options = (lam, Option("weight_func", "GAIR reweighting (its weight function)",
                                    "tanh", _check_weight_func), start)

    def epoch_values(self, settings, epoch, epochs):
        start, lam = settings.get("gair_start"), settings.get("lam")
        if start is None:
            fail("gair_start", "the default, half the epochs, needs the run's length: pass "
                               "epochs= (to the Trainer or to fit) or gair_start=")
        return {"lam": None if lam is None or epoch < start else float(lam)}

    def __call__(self, model, x, y, res, plan):
        heads = logits_of(model, res.x_adv, y)
        lam = plan.values.get("lam")
        weights = None
        if lam is not None:
            from ..losses import gair_weights
            weights = gair_weights(res.kappa, plan.steps, lam, func=plan.settings["weight_func"])
        return over_heads(model, lambda z: ce_loss(z, y, weights), heads), heads[0]

    def __repr__(self) -> str:
        return f"GairCE(default_lam={self.default_lam:g})"


def _check_flag(name, value, epochs):
    check_bool(name, value)
    return value


class DatCE(CE):
    """DAT's objective: CE, or with ``loss_weights=True`` the official code's weighting, each
    row's CE times its own adversarial CE (detached, from a no-grad eval-mode forward as its
    ``model.predict``; from the second epoch on; Keras' sample-weighted mean). Off by default:
    the DAT paper's algorithm trains on plain CE, and the weights (the mean adversarial CE, 1 to
    2 early on) rescale the learning rate; on, the step costs one more forward."""
    name = "dat-ce"
    options = (Option("loss_weights", "DAT's adversarial-CE loss weights", False, _check_flag),)

    def epoch_values(self, settings, epoch, epochs):
        return {"loss_weights": bool(settings.get("loss_weights")) and epoch >= 1}

    def __call__(self, model, x, y, res, plan):
        if not plan.values.get("loss_weights"):
            return super().__call__(model, x, y, res, plan)
        inner = getattr(model, "module", model)  # DDP: the weights from the plain module
        modes = [m.training for m in inner.modules()]
        inner.eval()
        with torch.no_grad():
            probs = F.softmax(inner(res.x_adv).float(), dim=1)
        for m, mode in zip(inner.modules(), modes):
            m.training = mode
        w = -torch.log(probs.gather(1, y[:, None]).squeeze(1) + 1e-12)  # max(−y·log(p + 1e-12))
        heads = logits_of(model, res.x_adv, y)
        nonzero = (w != 0).float().mean().clamp_min(1e-12)  # Keras divides by the share of w ≠ 0
        weighted = lambda z: (w * F.cross_entropy(z, y, reduction="none")).mean() / nonzero  # noqa: E731
        return over_heads(model, weighted, heads), heads[0]


def _check_beta(name, value, epochs):
    check_number(name, value, minimum=0)
    return float(value)


class Trades(Objective):
    """TRADES: ``CE(f(x), y) + β·KL(f(x) ‖ f(x_adv))`` (:func:`trades_loss`); β default 6. The
    natural branch runs first, as in the official code."""
    name = "trades"
    needs_attack = True
    options = (Option("beta", "TRADES/MART robust-term weight β", 6.0, _check_beta),)
    loss_fn = staticmethod(trades_loss)

    def __call__(self, model, x, y, res, plan):
        nat = logits_of(model, x, y)
        adv = logits_of(model, res.x_adv, y)
        beta = plan.settings["beta"]
        return over_heads(model, lambda zn, za: self.loss_fn(zn, za, y, beta), nat, adv), adv[0]


class Mart(Trades):
    """MART: ``BCE(f(x_adv), y) + β·mean(KL·(1 − p_y(x)))`` (:func:`mart_loss`); β default 6."""
    name = "mart"
    loss_fn = staticmethod(mart_loss)


class GairTrades(Trades):
    """GAIR-RST's GAIR-TRADES (zjfheart/Geometry-aware-Instance-reweighted-Adversarial-Training,
    GAIR_RST/losses.py): ``CE(f(x), y) + β/N·Σ_i [w_i·KL(f(x) ‖ f(x_kl,i)) + (1 − w_i)·KL(f(x) ‖
    f(x_cw,i))]`` with ``w = (tanh(λ + K/2 − κ) + 1)/2`` (κ from the KL attack; not normalised,
    no 5/h scale, unlike GAIRAT's weights) and x_cw a second, C&W-loss PGD-K attack. Before epoch
    ``gair_start`` (default: half the epochs; the official λ = 100 there) it is plain TRADES and the
    second attack does not run. The branches run in the official order: x_kl, x_cw, x."""
    name = "gair-trades"

    def __init__(self, default_lam: float = 0.0):
        self.default_lam = float(default_lam)
        self.options = Trades.options + _gair_options(self.default_lam)

    def epoch_values(self, settings, epoch, epochs):
        lam = GairCE.epoch_values(self, settings, epoch, epochs)["lam"]
        # The official code reweights (and runs the C&W attack) only for λ <= 10.
        return {"lam": lam if lam is not None and lam <= 10 else None}

    def __call__(self, model, x, y, res, plan):
        lam = plan.values.get("lam")
        if lam is None:
            return super().__call__(model, x, y, res, plan)
        adv = logits_of(model, res.x_adv, y)
        cw = logits_of(model, res.extras["x_cw"], y)
        nat = logits_of(model, x, y)
        w = (torch.tanh(lam + plan.steps / 2 - res.kappa.to(adv[0].dtype)) + 1) / 2
        beta = plan.settings["beta"]

        def one_head(logits_adv, logits_cw, logits_nat):
            p_nat = F.softmax(logits_nat, dim=1)
            kl = lambda logits: F.kl_div(F.log_softmax(logits, dim=1), p_nat,  # noqa: E731
                                         reduction="none").sum(dim=1)
            robust = (kl(logits_adv) * w + kl(logits_cw) * (1 - w)).sum() / x.shape[0]
            return F.cross_entropy(logits_nat, y) + beta * robust

        return over_heads(model, one_head, adv, cw, nat), adv[0]

    def __repr__(self) -> str:
        return f"GairTrades(default_lam={self.default_lam:g})"
