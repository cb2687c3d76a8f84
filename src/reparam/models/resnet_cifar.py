"""CIFAR ResNet-20/32/56 (He et al. 2016, section 4.2).

3 stages of n BasicBlocks (depth = 6n + 2) with 16/32/64 channels (times `width`), a 3x3 stem, global
average pooling and one Linear. Shortcuts are option A: identity, subsampled with stride 2 and padded with
zero channels when the shape changes, so they have no weights. This gives the published counts, e.g.
ResNet-20 269,722 and ResNet-56 853,018 weights for 10 classes (PRANC's baselines).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reparam.models.base import Classifier, Normalize, kaiming_init, opt_float, scaled
from reparam.models.registry import register_model


class PadShortcut(nn.Module):
    """Option-A shortcut: x[:, :, ::stride, ::stride] with zero channels added (half before, half after)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        extra = out_planes - in_planes
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, *self.pad))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad_channels={self.pad}"


class BasicBlockA(nn.Module):
    """conv3x3-bn-relu-conv3x3-bn, plus the shortcut, then relu."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = PadShortcut(in_planes, planes, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(Classifier):
    def __init__(
        self,
        depth: int,
        num_classes: int,
        in_channels: int,
        image_size: tuple[int, int],
        width: float = 1.0,
        mean=None,
        std=None,
    ) -> None:
        super().__init__()
        assert (depth - 2) % 6 == 0, depth
        n = (depth - 2) // 6
        self.depth = depth
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        self.norm = Normalize(mean, std, in_channels)
        c1, c2, c3 = (scaled(c, width) for c in (16, 32, 64))
        self.conv1 = nn.Conv2d(in_channels, c1, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._stage(c1, c1, n, 1)
        self.layer2 = self._stage(c1, c2, n, 2)
        self.layer3 = self._stage(c2, c3, n, 2)
        # Adaptive pooling: 8x8 digits and 28x28 Fashion-MNIST work as well as 32x32.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = c3
        self.head = nn.Linear(c3, num_classes)
        kaiming_init(self)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlockA(in_planes, planes, stride)]
        layers += [BasicBlockA(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(self.pool(x), 1)


def _register(depth: int) -> None:
    def build(*, num_classes, in_channels, image_size, mean=None, std=None, width=1.0) -> CifarResNet:
        width = opt_float("width", width, low=0.0, low_open=True)
        return CifarResNet(depth, num_classes, in_channels, image_size, width=width, mean=mean, std=std)

    build.__name__ = f"resnet{depth}"
    register_model(f"resnet{depth}", build)


for _depth in (20, 32, 44, 56, 110):
    _register(_depth)
