"""CIFS: Channel-wise Importance-based Feature Selection (Yan et al., ICML 2021; HanshuYAN/CIFS).

A CIFAR ResNet-18 whose two layer4 blocks are each followed by a *probe*, a small classifier on
the block's globally pooled features, and a channel mask made from the probe: the gradient of the
probe's logits of two classes, ``z_t1 + z_t2``, with respect to the (detached) features, summed
over space and softmaxed over the channels, multiplied into the features. t1 is the true label in
training and the probe's top-1 class otherwise; t2 is always the probe's second-ranked class (so
in training t1 = t2 = y when y ranks second, as in the official code).

The official code takes that gradient with ``autograd.grad(..., create_graph=True)``; here it is
the closed form, the same numbers and the same gradients for the probe's weights without a double
backward (and no autograd at evaluation). With ``pooled = GAP(f)`` the spatial sum of
``∂z/∂f`` is ``∂z/∂pooled``, so the mask does not depend on H·W:

- linear probe ``z = W·pooled + b``: ``mask = softmax(W[t1] + W[t2])``;
- nonlinear probe ``z = V·softplus₅(A·pooled + a) + v``: ``mask = softmax(Aᵀ((V[t1] + V[t2]) ⊙
  s))`` with ``s = sigmoid(5u)`` (u = A·pooled + a), and ``s = 1`` where ``5u > 20`` (torch's
  Softplus is linear there).

The model is a multi-head model (:mod:`fastadv.models.heads`): ``model(x)`` gives the final logits;
``model(x, labels=y, heads=True)`` the final logits and both probes'. Its loss, for training and
for the attack, is ``3/(β+1)·[CE(final) + β·mean CE(probes)]`` with β = 2 (``head_weights``).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .resnet import BasicBlock, make_stages
from ..errors import UserError

__all__ = ["CIFSResNet18", "cifs_resnet18", "LinearProbe", "NonlinearProbe", "CIFSBlock"]


class LinearProbe(nn.Module):
    """``z = W·pooled + b`` on the pooled features [N, C]."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.fc(pooled)

    def mask_logits(self, pooled: Tensor, t1: Tensor, t2: Tensor) -> Tensor:
        """``∂(z_t1 + z_t2)/∂pooled`` [N, C]: the rows of W (the features do not enter)."""
        return self.fc.weight[t1] + self.fc.weight[t2]


class NonlinearProbe(nn.Module):
    """``z = V·softplus_β(A·pooled + a) + v`` (hidden 128, Softplus β = 5, threshold 20)."""

    def __init__(self, channels: int, num_classes: int, hidden: int = 128, beta: float = 5.0,
                 threshold: float = 20.0):
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.act = nn.Softplus(beta=beta, threshold=threshold)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(pooled)))

    def mask_logits(self, pooled: Tensor, t1: Tensor, t2: Tensor) -> Tensor:
        """``∂(z_t1 + z_t2)/∂pooled`` [N, C] = ``Aᵀ((V[t1] + V[t2]) ⊙ softplus'(u))``."""
        bu = self.fc1(pooled) * self.act.beta
        # torch's Softplus is the identity where β·u > threshold: its derivative is exactly 1 there.
        slope = torch.where(bu > self.act.threshold, torch.ones_like(bu), torch.sigmoid(bu))
        return ((self.fc2.weight[t1] + self.fc2.weight[t2]) * slope) @ self.fc1.weight


class CIFSBlock(nn.Module):
    """A residual block, its probe and the channel mask: returns ``(f ⊙ mask, probe logits)``."""

    def __init__(self, in_planes: int, planes: int, stride: int, probe: nn.Module):
        super().__init__()
        self.block = BasicBlock(in_planes, planes, stride)
        self.probe = probe

    def forward(self, x: Tensor, labels: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        f = self.block(x)
        pooled = f.mean(dim=(2, 3))
        logits = self.probe(pooled)  # trained by its CE: the backbone gets that gradient
        n = f.shape[0]
        if n == 0:
            return f, logits
        top2 = logits.detach().topk(min(2, logits.shape[1]), dim=1).indices
        t2 = top2[:, -1]
        t1 = labels if labels is not None else top2[:, 0]
        # The mask sees detached features (no gradient to the backbone through it); the probe's
        # weights do get the final loss's gradient through it, as with create_graph=True.
        mask = F.softmax(self.probe.mask_logits(pooled.detach(), t1, t2).float(), dim=1)
        return f * mask.to(f.dtype)[:, :, None, None], logits


class CIFSResNet18(nn.Module):
    """ResNet-18 (CIFAR stem) with CIFS after both layer4 blocks: the first with the nonlinear
    probe, the second with the linear one. ``beta`` weights the probes' loss (``head_weights``)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, beta: float = 2.0):
        super().__init__()
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or beta < 0:
            raise UserError(f"beta must be a number >= 0, got {beta!r}")
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1, self.layer2, self.layer3 = make_stages(BasicBlock, [2, 2, 2])
        self.layer4 = nn.ModuleList([
            CIFSBlock(256, 512, 2, NonlinearProbe(512, num_classes)),
            CIFSBlock(512, 512, 1, LinearProbe(512, num_classes))])
        self.linear = nn.Linear(512, num_classes)
        self.beta = float(beta)
        probes = len(self.layer4)
        scale = 3.0 / (self.beta + 1.0)  # 3/(β+1)·[CE(final) + β·mean CE(probes)]
        self.head_weights = (scale,) + (scale * self.beta / probes,) * probes

    def forward(self, x: Tensor, labels: Optional[Tensor] = None, heads: bool = False):
        """Final logits; with ``heads=True`` the tuple (final, nonlinear probe, linear probe).
        ``labels`` [N] are the masks' t1 in training mode (ignored in eval mode: the top-1)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        probes = []
        for block in self.layer4:
            out, z = block(out, labels if self.training else None)
            probes.append(z)
        final = self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))
        return (final, *probes) if heads else final


def cifs_resnet18(num_classes: int = 10, in_channels: int = 3, beta: float = 2.0) -> CIFSResNet18:
    return CIFSResNet18(num_classes, in_channels, beta)
