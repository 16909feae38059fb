"""WideResNet-D-W (Zagoruyko & Komodakis 2016) as in the TRADES / FAT / GAIRAT repositories.

Attribute names follow TRADES' ``models/wideresnet.py`` so its checkpoints load; that file also
builds an unused ``sub_block1`` (dead parameters, never in ``forward``), which is left out here:
WRN-34-10 has 46.16 M parameters. :func:`fastadv.models.load_official_state_dict` drops those keys.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from ..errors import UserError


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, dropRate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.droprate = dropRate
        self.equalInOut = in_planes == out_planes
        self.convShortcut = (None if self.equalInOut else
                             nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False))

    def forward(self, x):
        if not self.equalInOut:
            x = self.relu1(self.bn1(x))  # the projection shortcut takes the pre-activated input
            out = x
        else:
            out = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(out)))
        if self.droprate > 0:
            out = F.dropout(out, p=self.droprate, training=self.training)
        out = self.conv2(out)
        return (x if self.equalInOut else self.convShortcut(x)) + out


class NetworkBlock(nn.Module):
    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, block, stride: int,
                 dropRate: float = 0.0):
        super().__init__()
        self.layer = nn.Sequential(*[
            block(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, dropRate)
            for i in range(nb_layers)])

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` with ``n`` residual blocks per stage.

    Two depth conventions are in use and both are accepted: ``depth = 6n + 4`` (Zagoruyko &
    Komodakis, TRADES: WRN-28-10 has n = 4, WRN-34-10 n = 5) and Madry et al.'s ``depth = 6n + 2``,
    which the FAT/GAIRAT code uses for its "WRN-32-10" (``models/wrn_madry.py``: n = 5). So
    WRN-32-10 and WRN-34-10 are the same network (46.16 M parameters). Other depths raise.
    """

    def __init__(self, depth: int = 34, widen_factor: int = 10, num_classes: int = 10,
                 in_channels: int = 3, dropout: float = 0.0):
        super().__init__()
        if not isinstance(depth, int) or depth < 8 or ((depth - 4) % 6 and (depth - 2) % 6):
            raise UserError(f"depth must be 6n + 4 (e.g. 16, 28, 34) or 6n + 2 (Madry/FAT, e.g. 32) "
                            f"with n >= 1, got {depth!r}")
        if widen_factor < 1:
            raise UserError(f"widen_factor must be >= 1, got {widen_factor}")
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        n = (depth - 4) // 6 if (depth - 4) % 6 == 0 else (depth - 2) // 6  # blocks per stage
        self.depth, self.widen_factor, self.blocks_per_stage = depth, widen_factor, n
        self.conv1 = nn.Conv2d(in_channels, ch[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], BasicBlock, 1, dropout)
        self.block2 = NetworkBlock(n, ch[1], ch[2], BasicBlock, 2, dropout)
        self.block3 = NetworkBlock(n, ch[2], ch[3], BasicBlock, 2, dropout)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(ch[3], num_classes)
        self.nChannels = ch[3]
        for m in self.modules():  # the reference initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # == avg_pool2d(out, 8) on 32×32
        return self.fc(out)
