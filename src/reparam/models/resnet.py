"""ResNet-18 / ResNet-50 in torchvision's layout (He et al. 2016), written here (no torchvision).

Stages of BasicBlocks (18: 2-2-2-2) or Bottlenecks (50: 3-4-6-3, stride on the 3x3 conv as torchvision's
"v1.5") with 64/128/256/512 base channels times `width` (rounded, at least 1); projection shortcuts
(1x1 conv + BN) where the shape changes. Stems:
- "cifar" (default): 3x3 conv stride 1, no max-pool, for 8x8..32x32 inputs;
- "imagenet": 7x7 conv stride 2 + 3x3 max-pool stride 2; with width 1 the weight count equals
  torchvision's (resnet18, 100 classes: 11,227,812, PRANC's ImageNet-100 model).
Module names match torchvision's (conv1, bn1, layer1..4, downsample); the classifier is `head`, not `fc`.
"""

from __future__ import annotations

import torch
from torch import nn

from reparam.models.base import Classifier, Normalize, kaiming_init, opt_choice, opt_float, scaled
from reparam.models.registry import register_model

STEMS = ("cifar", "imagenet")


def _downsample(cin: int, cout: int, stride: int) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(Classifier):
    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        num_classes: int,
        in_channels: int,
        image_size: tuple[int, int],
        stem: str = "cifar",
        width: float = 1.0,
        mean=None,
        std=None,
    ) -> None:
        super().__init__()
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        self.stem = stem
        self.norm = Normalize(mean, std, in_channels)
        c0 = scaled(64, width)
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, c0, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(in_channels, c0, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(c0)
        self.relu = nn.ReLU(inplace=True)
        cin = c0
        stages = []
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            planes = scaled(planes, width)
            stride = 1 if i == 0 else 2
            stage = [block(cin, planes, stride)]
            cin = planes * block.expansion
            stage += [block(cin, planes, 1) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = cin
        self.head = nn.Linear(cin, num_classes)
        kaiming_init(self)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


ARCHS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


def _register(name: str) -> None:
    block, layers = ARCHS[name]

    def build(
        *, num_classes, in_channels, image_size, mean=None, std=None, stem="cifar", width=1.0
    ) -> ResNet:
        return ResNet(
            block,
            layers,
            num_classes,
            in_channels,
            image_size,
            stem=opt_choice("stem", stem, STEMS),
            width=opt_float("width", width, low=0.0, low_open=True),
            mean=mean,
            std=std,
        )

    build.__name__ = name
    register_model(name, build)
    for fixed in STEMS:
        register_model(f"{name}-{fixed}", _alias(build, fixed))


def _alias(build, stem: str):
    """`resnet18-cifar` etc.: the stem is in the name, so there is no `stem` option (passing one errors)."""

    def alias(*, num_classes, in_channels, image_size, mean=None, std=None, width=1.0) -> ResNet:
        return build(
            num_classes=num_classes,
            in_channels=in_channels,
            image_size=image_size,
            mean=mean,
            std=std,
            stem=stem,
            width=width,
        )

    return alias


for _name in ARCHS:
    _register(_name)
