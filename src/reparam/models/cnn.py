"""A small, fast CNN for 8x8 to 32x32 inputs (the dense baseline on digits)."""

from __future__ import annotations

import torch
from torch import nn

from reparam.models.base import Classifier, Normalize, kaiming_init, opt_float, scaled
from reparam.models.registry import register_model


def conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    # No conv bias: the BatchNorm right after it has its own shift.
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(Classifier):
    """conv32-bn-relu, conv64-bn-relu, maxpool2, conv128-bn-relu, global average pool, head.

    About 93k weights for 1 channel; on 8x8 digits the single pool leaves 4x4 maps. The pool is skipped
    for inputs smaller than 2x2. `width` scales the channels (32, 64, 128).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: tuple[int, int],
        width: float = 1.0,
        dropout: float = 0.0,
        mean=None,
        std=None,
    ) -> None:
        super().__init__()
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        self.norm = Normalize(mean, std, in_channels)
        c1, c2, c3 = (scaled(c, width) for c in (32, 64, 128))
        layers = conv_bn_relu(in_channels, c1) + conv_bn_relu(c1, c2)
        if min(image_size) >= 2:
            layers.append(nn.MaxPool2d(2))
        layers += conv_bn_relu(c2, c3)
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        self.body = nn.Sequential(*layers)
        self.feature_dim = c3
        self.head = nn.Linear(c3, num_classes)
        kaiming_init(self)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@register_model("cnn")
def cnn(*, num_classes, in_channels, image_size, mean=None, std=None, width=1.0, dropout=0.0) -> SmallCNN:
    return SmallCNN(
        num_classes,
        in_channels,
        image_size,
        width=opt_float("width", width, low=0.0, low_open=True),
        dropout=opt_float("dropout", dropout, low=0.0, high=1.0, high_open=True),
        mean=mean,
        std=std,
    )
