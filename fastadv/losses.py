"""Losses of the attacks and of GAIRAT's reweighting (SPEC §2, §2.3).

Attack losses are summed over the batch, so a sample's gradient does not depend on which other
samples share its batch: a compacted batch and the full one give the same per-sample gradients.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from .errors import UserError, UserTypeError

ATTACK_LOSSES = ("ce", "cw", "kl")
WEIGHT_FUNCS = ("tanh", "sigmoid", "discrete")


def ce_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy, summed over the batch (the PGD attack loss)."""
    return F.cross_entropy(logits.float(), y, reduction="sum")


def cw_loss(logits: Tensor, y: Tensor, confidence: float = 50.0) -> Tensor:
    """The FAT papers' C&W margin loss, summed: −relu(z_y − max_{j≠y} z_j + confidence)."""
    logits = logits.float()
    onehot = F.one_hot(y, logits.shape[1]).to(torch.bool)
    correct = logits.gather(1, y[:, None]).squeeze(1)
    # The largest wrong logit: the true class is masked with −inf (the official code uses −1e4).
    wrong = logits.masked_fill(onehot, float("-inf")).amax(dim=1)
    return -F.relu(correct - wrong + confidence).sum()


def kl_loss(logits_adv: Tensor, logits_clean: Tensor) -> Tensor:
    """TRADES' attack loss KL(f(x) ‖ f(x')), summed; ``logits_clean`` must be detached."""
    return F.kl_div(F.log_softmax(logits_adv.float(), dim=1), F.softmax(logits_clean.float(), dim=1),
                    reduction="sum")


def gair_weights(kappa: Tensor, steps: int, lam: float, func: str = "tanh") -> Tensor:
    """GAIRAT's per-sample weights from κ (SPEC §2.3), normalised to sum to N, without gradient.

    With h = ⌊K/2⌋: tanh w = (1 + tanh(λ + 5(h − κ)/h))/2; sigmoid w = σ(λ + 5(h − κ)/h);
    discrete w = (K + 1 − κ)/(K + 1). λ = +∞ gives all ones (plain adversarial training).
    """
    if not isinstance(kappa, Tensor) or kappa.dim() != 1:
        raise UserTypeError("kappa must be a 1-D tensor of per-sample counts")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserError(f"steps must be an int >= 1, got {steps!r}")
    if func not in WEIGHT_FUNCS:
        raise UserError(f"func must be one of {', '.join(WEIGHT_FUNCS)}, got {func!r}")
    lam = float(lam)
    if math.isnan(lam):
        raise UserError("lam must not be nan")
    k = kappa.detach().to(torch.float32)
    if k.numel() == 0:
        return k
    if lam == math.inf:
        return torch.ones_like(k)
    if func == "discrete":
        w = (steps + 1 - k) / (steps + 1)
        return w * (k.numel() / w.sum())
    h = max(steps // 2, 1)  # K = 1 would make h = 0: guard the division
    d = 5.0 * (h - k) / h
    z = lam + d
    w = (1.0 + torch.tanh(z)) / 2.0 if func == "tanh" else torch.sigmoid(z)
    # Normalised as the official code does, unless every weight underflowed to 0 (λ = −40, −∞):
    # the official 0/0 is NaN; the same weights' limit is a softmax of their logarithms, with
    # (1 + tanh z)/2 = σ(2z) and log σ(c·z) → c·d + const as λ → −∞.
    c = 2.0 if func == "tanh" else 1.0
    log_w = c * d if lam == -math.inf else F.logsigmoid(c * z)
    stable = torch.softmax(log_w, 0) * k.numel()
    total = w.sum()
    return torch.where(total > 0, w * (k.numel() / total), stable)


# ---------------------------------------------------------------------------- AutoAttack's losses
# Per sample (not summed): APGD keeps each row's best loss. Sorting (not argmax) decides which logit
# is the largest, as the official code does, so ties resolve the same way.

def dlr_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Croce & Hein's Difference of Logits Ratio, per sample [N]:
    −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e−12), π the classes by decreasing logit. Invariant to
    shifting and scaling the logits; needs at least 3 classes."""
    srt, order = logits.sort(dim=1)
    y_on_top = (order[:, -1] == y).to(srt.dtype)
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    return -(z_y - srt[:, -2] * y_on_top - srt[:, -1] * (1.0 - y_on_top)) / (srt[:, -1] - srt[:, -3] + 1e-12)


def dlr_targeted_loss(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """The targeted DLR of APGD-T, per sample [N]: −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e−12);
    needs at least 4 classes."""
    srt = logits.sort(dim=1).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (srt[:, -1] - 0.5 * (srt[:, -3] + srt[:, -4]) + 1e-12)


def ce_per_sample(logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy per sample [N] (APGD-CE's loss)."""
    return F.cross_entropy(logits, y, reduction="none")


def ce_targeted_per_sample(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """−CE(z, t) per sample [N]: maximising it pulls every row towards its target class."""
    return -F.cross_entropy(logits, target, reduction="none")
