"""Outer-minimisation losses: CE (AT/FAT), GAIR-weighted CE, TRADES and MART.

TRADES and MART follow their official code (yaodongyu/TRADES:trades.py, YisenWang/MART:mart.py)
term by term, including MART's numerical guards (1.0001, 1e-12, 1.0000001).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def ce_loss(logits_adv: Tensor, y: Tensor, weights: Optional[Tensor] = None) -> Tensor:
    """``mean(CE)``; with ``weights`` [N] (GAIR, already normalised to mean 1): ``mean(w·CE)``.
    The weights carry no gradient."""
    if weights is None:
        return F.cross_entropy(logits_adv, y)
    if weights.shape != y.shape:
        raise ValueError(f"weights must have shape {tuple(y.shape)}, got {tuple(weights.shape)}")
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
