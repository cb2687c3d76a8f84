"""VGG-11 / VGG-16 with BatchNorm (Simonyan & Zisserman 2015), CIFAR style.

The conv stack is the paper's (configurations A and D) with BN after every conv; each 2x2 max-pool that
would shrink a map below 1x1 is skipped (8x8 digits keep 3 of the 5 pools, 28x28 keeps 4). After global
average pooling the classifier is, as in the usual CIFAR VGGs, a single Linear on the 512 features; option
`hidden` > 0 inserts one Linear(512, hidden)-ReLU(-Dropout) into features() instead (a small MLP
classifier). Convs have no bias because BN follows each (so counts differ from torchvision's vgg*_bn).
"""

from __future__ import annotations

import torch
from torch import nn

from reparam.models.base import Classifier, Normalize, kaiming_init, opt_float, opt_int, scaled
from reparam.models.cnn import conv_bn_relu
from reparam.models.registry import register_model

POOL = "M"
CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL],
    "vgg13": [64, 64, POOL, 128, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL],
    "vgg16": [64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512, POOL],
}


class VGG(Classifier):
    def __init__(
        self,
        config: list[int | str],
        num_classes: int,
        in_channels: int,
        image_size: tuple[int, int],
        width: float = 1.0,
        hidden: int = 0,
        dropout: float = 0.0,
        mean=None,
        std=None,
    ) -> None:
        super().__init__()
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        self.norm = Normalize(mean, std, in_channels)
        layers: list[nn.Module] = []
        cin, size = in_channels, min(image_size)
        for item in config:
            if item == POOL:
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            cout = scaled(int(item), width)
            layers += conv_bn_relu(cin, cout)
            cin = cout
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if hidden > 0:
            layers += [nn.Linear(cin, hidden), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            cin = hidden
        elif dropout > 0:
            layers.append(nn.Dropout(dropout))
        self.body = nn.Sequential(*layers)
        self.feature_dim = cin
        self.head = nn.Linear(cin, num_classes)
        kaiming_init(self)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _register(name: str) -> None:
    def build(
        *, num_classes, in_channels, image_size, mean=None, std=None, width=1.0, hidden=0, dropout=0.0
    ) -> VGG:
        return VGG(
            CONFIGS[name],
            num_classes,
            in_channels,
            image_size,
            width=opt_float("width", width, low=0.0, low_open=True),
            hidden=opt_int("hidden", hidden, minimum=0),
            dropout=opt_float("dropout", dropout, low=0.0, high=1.0, high_open=True),
            mean=mean,
            std=std,
        )

    build.__name__ = name
    register_model(name, build)


for _name in CONFIGS:
    _register(_name)
