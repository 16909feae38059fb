"""ResNet-18 for CIFAR (3×3 stem, no max-pool; the kuangliu/pytorch-cifar definition used by the
FAT/GAIRAT repositories, same attribute names)."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, self.expansion * planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(self.expansion * planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def make_stages(block, num_blocks, in_planes: int = 64) -> list:
    """The four residual stages of the CIFAR ResNet family (64/128/256/512 planes, strides
    1/2/2/2; the first block of each stage takes the stride), as ``nn.Sequential`` modules."""
    stages = []
    for planes, stride, n in zip((64, 128, 256, 512), (1, 2, 2, 2), num_blocks):
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(block(in_planes, planes, s))
            in_planes = planes * block.expansion
        stages.append(nn.Sequential(*layers))
    return stages


class ResNet(nn.Module):
    def __init__(self, block, num_blocks, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1, self.layer2, self.layer3, self.layer4 = make_stages(block, num_blocks)
        self.linear = nn.Linear(512 * block.expansion, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # == avg_pool2d(out, 4) on 32×32
        return self.linear(out)


def ResNet18(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels)
