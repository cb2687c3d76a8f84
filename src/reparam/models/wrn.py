"""Pre-activation Wide ResNet WRN-D-K (Zagoruyko & Komodakis 2016), CIFAR layout.

A 3x3 stem conv with `stem` channels (16 in the paper; MixtureGrowth's half-width nets use 8), then 3
stages of n = (D - 4) / 6 blocks with 16K/32K/64K channels and strides 1/2/2, a final BN-ReLU
(`lastact`), global average pooling and one Linear. A block is

    o = relu(bn1(x)); y = conv2(dropout(relu(bn2(conv1(o))))); return y + (shortcut(o) or x)

with a 1x1 conv shortcut on the activated input when the shape changes. Module names follow
soft-sharing / MixtureGrowth's code (conv_3x3, stage_i, lastact). `inner_bn=False` makes bn2 an identity:
BN only before each block plus the final BN, the GradMax/MixtureGrowth setting.
Convs have no bias (each is followed by BN, or is the last op of a block).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from reparam.core.errors import ReparamError
from reparam.models.base import Classifier, Normalize, kaiming_init, opt_bool, opt_float, opt_int
from reparam.models.registry import register_model_pattern


class WideBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float, inner_bn: bool) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2: nn.Module = nn.BatchNorm2d(planes) if inner_bn else nn.Identity()
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Not in place: x itself is the identity residual below.
        out = torch.relu(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        return out + residual


class WideResNet(Classifier):
    def __init__(
        self,
        depth: int,
        widen: int,
        num_classes: int,
        in_channels: int,
        image_size: tuple[int, int],
        dropout: float = 0.0,
        stem: int = 16,
        inner_bn: bool = True,
        mean=None,
        std=None,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ReparamError(f"WRN depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        self.depth, self.widen = depth, widen
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        self.norm = Normalize(mean, std, in_channels)
        channels = [16 * widen, 32 * widen, 64 * widen]
        self.conv_3x3 = nn.Conv2d(in_channels, stem, 3, stride=1, padding=1, bias=False)
        self.stage_1 = self._stage(stem, channels[0], n, 1, dropout, inner_bn)
        self.stage_2 = self._stage(channels[0], channels[1], n, 2, dropout, inner_bn)
        self.stage_3 = self._stage(channels[1], channels[2], n, 2, dropout, inner_bn)
        self.lastact = nn.Sequential(nn.BatchNorm2d(channels[2]), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = channels[2]
        self.head = nn.Linear(channels[2], num_classes)
        kaiming_init(self)

    @staticmethod
    def _stage(in_planes: int, planes: int, n: int, stride: int, dropout: float, inner_bn: bool):
        blocks = [WideBlock(in_planes, planes, stride, dropout, inner_bn)]
        blocks += [WideBlock(planes, planes, 1, dropout, inner_bn) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_3x3(x)
        x = self.stage_3(self.stage_2(self.stage_1(x)))
        return torch.flatten(self.pool(self.lastact(x)), 1)


def wrn(
    match: re.Match[str],
    *,
    num_classes,
    in_channels,
    image_size,
    mean=None,
    std=None,
    dropout=0.0,
    stem=16,
    inner_bn=True,
) -> WideResNet:
    """Builder for names `wrn-D-K` (depth D, widening factor K)."""
    depth, widen = int(match.group(1)), int(match.group(2))
    if widen < 1:
        raise ReparamError(f"WRN widening factor must be >= 1, got {widen} in {match.group(0)!r}")
    return WideResNet(
        depth,
        widen,
        num_classes,
        in_channels,
        image_size,
        dropout=opt_float("dropout", dropout, low=0.0, high=1.0, high_open=True),
        stem=opt_int("stem", stem, minimum=1),
        inner_bn=opt_bool("inner_bn", inner_bn),
        mean=mean,
        std=std,
    )


register_model_pattern(
    r"wrn-(\d+)-(\d+)",
    wrn,
    examples=("wrn-10-4", "wrn-16-4", "wrn-16-8", "wrn-28-5", "wrn-28-10", "wrn-40-4"),
)
