"""Multi-layer perceptron on flattened images."""

from __future__ import annotations

import torch
from torch import nn

from reparam.models.base import Classifier, Normalize, opt_float, opt_int_tuple
from reparam.models.registry import register_model


class MLP(Classifier):
    """Flatten -> [Linear -> ReLU -> Dropout] per hidden width -> head.

    The input size is fixed by image_size (a fully connected first layer). With hidden=() the features
    are the flattened pixels and the model is multinomial logistic regression.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: tuple[int, int],
        hidden: tuple[int, ...] = (256, 128),
        dropout: float = 0.0,
        mean=None,
        std=None,
    ) -> None:
        super().__init__()
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        self.norm = Normalize(mean, std, in_channels)
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_channels * image_size[0] * image_size[1]
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.body = nn.Sequential(*layers)
        self.feature_dim = width
        self.head = nn.Linear(width, num_classes)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@register_model("mlp")
def mlp(*, num_classes, in_channels, image_size, mean=None, std=None, hidden=(256, 128), dropout=0.0) -> MLP:
    return MLP(
        num_classes,
        in_channels,
        image_size,
        hidden=opt_int_tuple("hidden", hidden),
        dropout=opt_float("dropout", dropout, low=0.0, high=1.0, high_open=True),
        mean=mean,
        std=std,
    )
