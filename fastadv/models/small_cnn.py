"""A small CNN for MNIST-style data (the TRADES/FAT ``SmallCNN`` layout, with padded convolutions
and adaptive pooling so that any input of at least 8×8 works, e.g. digits 8×8 and MNIST 28×28)."""
from __future__ import annotations

import torch.nn as nn
from ..errors import UserError


class SmallCNN(nn.Module):
    """conv32-conv32-pool-conv64-conv64-pool (3×3, ReLU) → 4×4 adaptive pool → fc200-fc200-fc."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, drop: float = 0.5):
        super().__init__()
        self.num_classes = num_classes
        act = nn.ReLU
        self.feature_extractor = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), act(),
            nn.Conv2d(32, 32, 3, padding=1), act(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(32, 64, 3, padding=1), act(),
            nn.Conv2d(64, 64, 3, padding=1), act(),
            nn.MaxPool2d(2, 2),
            # 28×28 → 7×7 → 4×4; 8×8 → 2×2 → 4×4 (replicated): a fixed-size classifier input.
            nn.AdaptiveAvgPool2d(4),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 200), act(),
            nn.Dropout(drop),
            nn.Linear(200, 200), act(),
            nn.Linear(200, num_classes),
        )
        for m in self.feature_extractor:  # the TRADES SmallCNN initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.classifier[-1].weight, 0)
        nn.init.constant_(self.classifier[-1].bias, 0)

    def forward(self, x):
        if x.shape[-1] < 8 or x.shape[-2] < 8:
            raise UserError(f"SmallCNN needs inputs of at least 8×8, got {tuple(x.shape[-2:])}")
        return self.classifier(self.feature_extractor(x))
