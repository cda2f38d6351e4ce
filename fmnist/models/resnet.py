"""A pre-activation wide ResNet (Zagoruyko & Komodakis, WRN-d-k) sized for 28x28x1: the network for the accuracy table.

A 3x3 stem with 16 channels, three groups of (depth - 4) / 6 pre-activation basic blocks of 16k, 32k and
64k channels at 28x28, 14x14 and 7x7, then BatchNorm, ReLU and a global average pool: the embedding.
"""

from __future__ import annotations

import torch
from torch import nn

from fmnist.models.base import FashionClassifier


class PreActBlock(nn.Module):
    """BN -> ReLU -> conv 3x3 (stride) -> BN -> ReLU -> [dropout] -> conv 3x3, plus the shortcut (a 1x1
    conv of the pre-activated input where the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float):
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(in_channels), nn.BatchNorm2d(out_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        changes = stride != 1 or in_channels != out_channels
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False) if changes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.dropout(torch.relu(self.bn2(out))))
        return out + shortcut


class PreActWideResNet(FashionClassifier):
    """WRN-`depth`-`widen` (depth 6n + 4) with pre-activation blocks. Recipe (fmnist/conf/model/resnet.yaml):
    SGD Nesterov with weight decay, a one-cycle schedule, label smoothing, EMA of the weights,
    augment=strong, bf16 on GPUs (trainer=gpu_bf16)."""

    default_optimizer = {"_target_": "torch.optim.SGD", "lr": 0.1, "momentum": 0.9, "nesterov": True}

    def __init__(self, optimizer=None, depth: int = 16, widen: int = 4, dropout: float = 0.0, **base_options):
        super().__init__(optimizer, **base_options)
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), not {depth}")
        if widen < 1:
            raise ValueError(f"widen must be >= 1, not {widen}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), not {dropout}")
        blocks = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        layers: list[nn.Module] = [nn.Conv2d(1, widths[0], 3, padding=1, bias=False)]
        for group, stride in enumerate((1, 2, 2)):
            for index in range(blocks):
                in_channels = widths[group] if index == 0 else widths[group + 1]
                layers.append(PreActBlock(in_channels, widths[group + 1], stride if index == 0 else 1, dropout))
        layers += [nn.BatchNorm2d(widths[3]), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(widths[3], 10)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
