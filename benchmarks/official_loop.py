"""A port of the official FAT early-stopped PGD loop (the speed baseline), written from SPEC §2.1.

The official implementation (zjfheart/Friendly-Adversarial-Training, ``earlystop.py``, after its
2021-01-15 fix) has the semantics of SPEC §2.1 and the habits listed in NOTES §4; this port keeps
both, so that ``benchmarks/bench_attacks.py`` and ``benchmarks/attack_speed.py`` time what users of
that code pay today:

- the clean logits are computed once up front, with a graph, whatever the loss (the KL branch
  uses them; the forward runs anyway);
- at every check a Python loop over the batch compares each sample's prediction with its label and
  reads its budget: one host synchronisation per sample per check;
- the leavers are appended to the outputs with ``torch.cat`` at every check, and the still-active
  rows are gathered with Python index lists;
- the gradient comes from ``model.zero_grad(); loss.backward(retain_graph=True)``, which computes
  (and leaves behind) parameter gradients, with the mean CE over the active rows;
- the ω·N(0, I) noise is drawn on the CPU at every update (also when ω = 0) and copied to the device;
  the uniform start is drawn on the CPU as well.

Output, as the official code returns it: the adversarial rows in *exit order* (leavers of check 0,
then of check 1, …, survivors last), with their labels and natural images, and the official
``count`` (Σ PGD updates, the papers' "BP"). Instrumentation the official code lacks, for the
comparison tests: each output row's input position (``order``, carried like the labels) and its
number of updates. ``OfficialResult.restore(t)`` puts an exit-ordered tensor back in input order.

Only the L∞ step, scalar ε/α, and the ``"ce"``/``"kl"`` losses, as in the official code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


@dataclass
class OfficialResult:
    x_adv: Tensor      # exit order
    y: Tensor          # exit order
    x_nat: Tensor      # exit order
    order: Tensor      # order[j] = input row of output row j
    updates: Tensor    # PGD updates of each output row (exit order)
    bp: int            # the official ``count``: Σ updates

    @property
    def inverse(self) -> Tensor:
        """Index that restores input order: ``t[inverse]``."""
        return torch.argsort(self.order)

    def restore(self, t: Tensor) -> Tensor:
        return t[self.inverse]


def _cat_rows(outputs, rows):
    """The official habit: the outputs grow by ``torch.cat`` (a full copy) at every check."""
    if outputs is None:
        return rows
    return tuple(torch.cat((o, r), dim=0) for o, r in zip(outputs, rows))


def official_earlystop(model: nn.Module, x: Tensor, y: Tensor, eps: float = 8 / 255,
                       alpha: float = 2 / 255, steps: int = 10, tau: int = 0,
                       random_start: Optional[str] = "uniform", loss: str = "ce",
                       omega: float = 0.0, sigma: float = 0.001,
                       generator: Optional[torch.Generator] = None) -> OfficialResult:
    """FAT's PGD-K-τ the way the official loop computes it (see the module docstring).

    ``generator`` (a CPU generator) drives the CPU-side noise. The model is left in eval mode's
    previous state afterwards (the official code leaves it in eval mode; the trainer switches back)."""
    if loss not in ("ce", "kl"):
        raise ValueError(f"loss must be 'ce' or 'kl', got {loss!r}")
    was_training = model.training
    model.eval()
    device = x.device
    n = len(y)
    control = (torch.ones(n) * tau).to(device)  # the budgets, a float tensor on the device
    if random_start == "normal":
        iter_adv = x.detach() + sigma * torch.randn(x.shape, generator=generator).to(device).detach()
        iter_adv = torch.clamp(iter_adv, 0.0, 1.0)
    elif random_start == "uniform":
        noise = torch.empty(x.shape).uniform_(-eps, eps, generator=generator).to(device)
        iter_adv = torch.clamp(x.detach() + noise.to(x.dtype), 0.0, 1.0)
    elif random_start is None:
        iter_adv = x.detach()
    else:
        raise ValueError(f"random_start must be 'uniform', 'normal' or None, got {random_start!r}")
    iter_clean_data = x.detach()
    iter_target = y.detach()
    iter_order = torch.arange(n, device=device)
    iter_updates = 0
    outputs = None  # (adv, natural, target, order, updates), in exit order
    count = 0
    with torch.enable_grad():
        output_iter_clean_data = model(x)  # with a graph, as the official code does
        k = 0
        while k < steps:
            iter_adv = iter_adv.detach().requires_grad_()
            output = model(iter_adv)
            pred = output.max(1, keepdim=True)[1]
            output_index, iter_index = [], []
            for idx in range(len(pred)):  # one host synchronisation per sample
                if pred[idx] != iter_target[idx]:
                    if control[idx] == 0:
                        output_index.append(idx)
                    else:
                        control[idx] -= 1
                        iter_index.append(idx)
                else:
                    iter_index.append(idx)
            if len(output_index) != 0:
                leaving = (iter_adv[output_index].detach(), iter_clean_data[output_index],
                           iter_target[output_index], iter_order[output_index],
                           torch.full((len(output_index),), iter_updates, dtype=torch.int64,
                                      device=device))
                outputs = _cat_rows(outputs, leaving)
            model.zero_grad()
            if loss == "ce":
                loss_adv = nn.CrossEntropyLoss(reduction="mean")(output, iter_target)
            else:
                loss_adv = nn.KLDivLoss(reduction="sum")(F.log_softmax(output, dim=1),
                                                         F.softmax(output_iter_clean_data, dim=1))
            loss_adv.backward(retain_graph=True)  # parameter gradients too
            grad = iter_adv.grad
            if len(iter_index) != 0:
                control = control[iter_index]
                iter_adv = iter_adv[iter_index]
                iter_clean_data = iter_clean_data[iter_index]
                iter_target = iter_target[iter_index]
                iter_order = iter_order[iter_index]
                output_iter_clean_data = output_iter_clean_data[iter_index]
                grad = grad[iter_index]
                eta = alpha * grad.sign()
                noise = omega * torch.randn(iter_adv.shape, generator=generator).detach().to(device)
                iter_adv = iter_adv.detach() + eta + noise.to(iter_adv.dtype)
                iter_adv = torch.min(torch.max(iter_adv, iter_clean_data - eps), iter_clean_data + eps)
                iter_adv = torch.clamp(iter_adv, 0, 1)
                count += len(iter_target)
                iter_updates += 1
            else:  # everybody left
                break
            k += 1
        else:  # the survivors (no break: somebody was still active after K checks)
            survivors = (iter_adv.detach(), iter_clean_data, iter_target, iter_order,
                         torch.full((len(iter_target),), iter_updates, dtype=torch.int64,
                                    device=device))
            outputs = _cat_rows(outputs, survivors)
    output_adv, output_natural, output_target, output_order, output_updates = outputs
    model.train(was_training)
    return OfficialResult(output_adv.detach(), output_target, output_natural, output_order,
                          output_updates, count)
