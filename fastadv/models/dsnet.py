"""DS-Net: Learning Diverse-structured Networks for Adversarial Robustness (Du et al., ICML 2021;
d12306/dsnet).

``depth`` modules (15) in sequence; each runs its four atomic blocks on the same input and outputs
``Σ_j softmax(α_i)_j · block_j(x)``, with no skip of its own (the blocks have theirs). The stem is
one 3×3 convolution (with bias, no BN) to ``init_channels`` (20); an unweighted stride-2 residual
block multiplies the channels by ``factor`` (4) after module depth/3 and by 2 after module
2·depth/3 (20 → 80 → 160; 32×32 → 16 → 8); the head is global average pooling and a linear layer.

The atomic blocks (C → C channels, as the official ``model/block.py`` and its sources build them):

- ``space="v1"``: a pre-activation residual block (``BN(x + conv(relu(BN(conv(relu(BN(x)))))))``,
  convolutions with bias), an MBConv block (expansion 2, depthwise 3×3, squeeze-excitation to C/4,
  Swish, drop-connect 0.2 in training), a two-layer dense block (growth C, bottleneck 4C; the mean
  of x and both layers' outputs keeps C channels) and an adaptive Runge-Kutta block (a second-order
  two-stage step of one residual function with learned coefficients);
- ``space="v2"``: the first two, a ResNeXt bottleneck (cardinality 8) and a level-2 DLA tree.

The architecture weights α [depth, 4] (``1e-3·N(0, 1)`` at start) are a parameter of the model
(saved in its state dict) trained on the same adversarial loss, in the same backward pass, by their
own Adam (lr 1e-3, betas (0.5, 0.999), weight decay 1e-3): :meth:`DSNet.own_optimizers`. With the
defaults the network has 20,780,245 weights besides α (v2: 24,035,815), as the official model.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .own_optimizers import OwnOptimizer
from .resnet import BasicBlock
from ..errors import UserError

__all__ = ["DSNet", "dsnet", "SPACES"]


def _conv3(cin: int, cout: int, stride: int = 1, bias: bool = True, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias, groups=groups)


class PreActResidual(nn.Module):
    """``BN(x + conv(relu(BN(conv(relu(BN(x)))))))`` (the official ResBlock: a BN after the sum)."""

    def __init__(self, c: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c), _conv3(c, c)
        self.bn2, self.conv2 = nn.BatchNorm2d(c), _conv3(c, c)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x):
        out = self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
        return self.bn3(out + x)


class MBConv(nn.Module):
    """EfficientNet's MBConv (expansion 2, kernel 3, SE to C/4, Swish), then ``BN(x + drop(out))``."""

    def __init__(self, c: int, expand: int = 2, drop_connect: float = 0.2):
        super().__init__()
        e, s = c * expand, max(1, int(c * 0.25))
        self.expand = nn.Sequential(nn.Conv2d(c, e, 1, bias=False), nn.BatchNorm2d(e), nn.SiLU())
        self.depthwise = nn.Sequential(_conv3(e, e, bias=False, groups=e), nn.BatchNorm2d(e),
                                       nn.SiLU())
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(e, s, 1), nn.SiLU(),
                                nn.Conv2d(s, e, 1), nn.Sigmoid())
        self.project = nn.Sequential(nn.Conv2d(e, c, 1, bias=False), nn.BatchNorm2d(c))
        self.bn_final = nn.BatchNorm2d(c)
        self.drop_connect = drop_connect

    def forward(self, x):
        out = self.depthwise(self.expand(x))
        out = self.project(out * self.se(out))
        if self.training and self.drop_connect > 0:  # drop the branch per sample, rescale the rest
            keep = 1.0 - self.drop_connect
            mask = torch.floor(keep + torch.rand(x.shape[0], 1, 1, 1, dtype=out.dtype,
                                                 device=out.device))
            out = out / keep * mask
        return self.bn_final(x + out)


class _DenseLayer(nn.Sequential):
    def __init__(self, cin: int, growth: int, bottleneck: int = 4):
        super().__init__(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, bottleneck * growth, 1, bias=False),
                         nn.BatchNorm2d(bottleneck * growth), nn.ReLU(),
                         _conv3(bottleneck * growth, growth, bias=False))


class Dense(nn.Module):
    """Two DenseNet layers (growth C, bottleneck 4C): ``BN(mean(x, f1(x), f2([x, f1])))``."""

    def __init__(self, c: int):
        super().__init__()
        self.layer1, self.layer2 = _DenseLayer(c, c), _DenseLayer(2 * c, c)
        self.bn_final = nn.BatchNorm2d(c)

    def forward(self, x):
        f1 = self.layer1(x)
        f2 = self.layer2(torch.cat([x, f1], 1))
        return self.bn_final((x + f1 + f2) / 3)


class AdaptiveRungeKutta(nn.Module):
    """One learned two-stage Runge-Kutta step of ``f`` (a pre-activation residual function):
    ``x1 = x + σ(b10)·f(x)``, ``out = BN((1 − σ(a21))·x + b20·f(x) + σ(a21)·x1 + b21·f(x1))`` with
    ``b21 = 1/(2σ(b10))`` and ``b20 = 1 − b21 − σ(a21)σ(b10)`` (second order for any a21, b10;
    both trainable scalars, starting at 0.25 and 1, as the official training script sets them)."""

    def __init__(self, c: int, a21: float = 0.25, b10: float = 1.0):
        super().__init__()
        self.f = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), _conv3(c, c), nn.BatchNorm2d(c),
                               nn.ReLU(), _conv3(c, c))
        self.a21 = nn.Parameter(torch.tensor(float(a21)))
        self.b10 = nn.Parameter(torch.tensor(float(b10)))
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        a, b = torch.sigmoid(self.a21), torch.sigmoid(self.b10)
        b21 = 1 / (2 * b)
        b20 = 1 - b21 - a * b
        fx = self.f(x)
        x1 = x + b * fx
        return self.bn((1 - a) * x + b20 * fx + a * x1 + b21 * self.f(x1))


class ResNeXt(nn.Module):
    """ResNeXt bottleneck (cardinality 8, base width 64, widen factor 2): ``BN(relu(x + g(x)))``."""

    def __init__(self, c: int, cardinality: int = 8, base_width: int = 64, widen: int = 2):
        super().__init__()
        d = cardinality * max(1, int(base_width * c / (widen * 64)))
        self.body = nn.Sequential(nn.Conv2d(c, d, 1, bias=False), nn.BatchNorm2d(d), nn.ReLU(),
                                  _conv3(d, d, bias=False, groups=cardinality), nn.BatchNorm2d(d),
                                  nn.ReLU(), nn.Conv2d(d, c, 1, bias=False), nn.BatchNorm2d(c))
        self.bn_final = nn.BatchNorm2d(c)

    def forward(self, x):
        return self.bn_final(F.relu(x + self.body(x)))


class _Root(nn.Module):
    """DLA's aggregation: ``relu(BN(conv1×1(cat(xs))))``."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)

    def forward(self, xs: List[Tensor]):
        return F.relu(self.bn(self.conv(torch.cat(xs, 1))))


class DLATree(nn.Module):
    """A DLA tree of basic blocks (level 2: a previous-root block, a level-1 subtree, two nodes,
    and a root over all four outputs)."""

    def __init__(self, c: int, level: int = 2):
        super().__init__()
        self.level = level
        self.subtree = DLATree(c, level - 1) if level > 1 else None
        self.prev_root = BasicBlock(c, c) if level > 1 else None
        self.left, self.right = BasicBlock(c, c), BasicBlock(c, c)
        self.root = _Root((level + 2) * c if level > 1 else 2 * c, c)

    def forward(self, x):
        xs = []
        if self.subtree is not None:
            xs.append(self.prev_root(x))
            x = self.subtree(x)
            xs.append(x)
        x = self.left(x)
        xs.append(x)
        x = self.right(x)
        xs.append(x)
        return self.root(xs)


SPACES = {"v1": (PreActResidual, MBConv, Dense, AdaptiveRungeKutta),
          "v2": (PreActResidual, MBConv, ResNeXt, DLATree)}


class Downsample(nn.Module):
    """The unweighted stride-2 residual block between stages: ``o = relu(BN(x))``,
    ``BN(conv(relu(BN(conv_s2(o)))) + BN(conv1×1_s2(o)))``."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), _conv3(cin, cout, stride=2)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), _conv3(cout, cout)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=2, bias=False),
                                      nn.BatchNorm2d(cout))
        self.bn3 = nn.BatchNorm2d(cout)

    def forward(self, x):
        o = F.relu(self.bn1(x))
        return self.bn3(self.conv2(F.relu(self.bn2(self.conv1(o)))) + self.shortcut(o))


class DSNet(nn.Module):
    """DS-Net (see the module doc). ``model(x)`` → logits; ``model.block_weights()`` → softmax(α)
    [depth, 4], the learned mixture of each module."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, space: str = "v1",
                 depth: int = 15, init_channels: int = 20, factor: int = 4):
        super().__init__()
        if space not in SPACES:
            raise UserError(f"space must be one of {', '.join(SPACES)}, got {space!r}")
        for name, v, lo in (("depth", depth, 3), ("init_channels", init_channels, 1),
                            ("factor", factor, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise UserError(f"{name} must be an int >= {lo}, got {v!r}")
        self.space = space
        blocks = SPACES[space]
        c = init_channels
        self.stem = nn.Conv2d(in_channels, c, 3, padding=1)
        self.cells = nn.ModuleList()
        self.downsample = nn.ModuleDict()
        for i in range(depth):
            self.cells.append(nn.ModuleList([b(c) for b in blocks]))
            if i + 1 in (depth // 3, int(2 * depth / 3)):  # after modules 5 and 10 of 15
                cout = c * (factor if i + 1 == depth // 3 else 2)
                self.downsample[str(i)] = Downsample(c, cout)
                c = cout
        self.linear = nn.Linear(c, num_classes)
        self.alpha = nn.Parameter(1e-3 * torch.randn(depth, len(blocks)))

    def block_weights(self) -> Tensor:
        return F.softmax(self.alpha, dim=1)

    def own_optimizers(self) -> List[OwnOptimizer]:
        """α: Adam(lr 1e-3, betas (0.5, 0.999), weight decay 1e-3), as the official training."""
        return [OwnOptimizer("DS-Net's architecture weights alpha", (self.alpha,),
                             lambda ps: torch.optim.Adam(ps, lr=1e-3, betas=(0.5, 0.999),
                                                         weight_decay=1e-3))]

    def forward(self, x):
        out = self.stem(x)
        weights = self.block_weights().to(out.dtype)
        for i, cell in enumerate(self.cells):
            mixed = weights[i, 0] * cell[0](out)
            for j in range(1, len(cell)):
                mixed = mixed + weights[i, j] * cell[j](out)
            out = mixed
            if str(i) in self.downsample:
                out = self.downsample[str(i)](out)
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def dsnet(num_classes: int = 10, in_channels: int = 3, space: str = "v1", depth: int = 15,
          init_channels: int = 20, factor: int = 4) -> DSNet:
    return DSNet(num_classes, in_channels, space, depth, init_channels, factor)
