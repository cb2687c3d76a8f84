"""LeNet-5 (LeCun et al. 1998), the variant used by PRANC on CIFAR-10 (62,006 weights on 32x32x3).

Classic on 32x32: conv(in, 6, 5) relu maxpool2, conv(6, 16, 5) relu maxpool2, fc 16*5*5 -> 120 -> 84 ->
classes, ReLU activations, PyTorch default init.

Smaller inputs get padding, decided from image_size when the model is built (and so fixed afterwards):
- the first conv gets padding 2 when the image is smaller than 32 (the usual MNIST variant: 28x28 then
  behaves exactly like 32x32 and flattens to 16*5*5);
- the second conv gets padding 2 when the map entering it is smaller than 5 (8x8 digits: 8 -> pool 4 ->
  conv 4 -> pool 2, flatten 16*2*2);
- a max-pool is skipped when its input is smaller than 2 (so any size from 1x1 up works).
fc1's input size is computed from these shapes, so the weight count depends on image_size (only fc1).
"""

from __future__ import annotations

import torch
from torch import nn

from reparam.models.base import Classifier, Normalize
from reparam.models.registry import register_model


def _conv_out(size: int, kernel: int, padding: int) -> int:
    return size + 2 * padding - kernel + 1


class LeNet5(Classifier):
    def __init__(self, num_classes: int, in_channels: int, image_size: tuple[int, int], mean=None, std=None):
        super().__init__()
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        self.norm = Normalize(mean, std, in_channels)
        h, w = image_size
        pad1 = 2 if min(h, w) < 32 else 0
        h, w = _conv_out(h, 5, pad1), _conv_out(w, 5, pad1)
        pool1 = min(h, w) >= 2
        if pool1:
            h, w = h // 2, w // 2
        pad2 = 2 if min(h, w) < 5 else 0
        h, w = _conv_out(h, 5, pad2), _conv_out(w, 5, pad2)
        pool2 = min(h, w) >= 2
        if pool2:
            h, w = h // 2, w // 2
        self.padding = (pad1, pad2)
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=pad1)
        self.pool1 = nn.MaxPool2d(2) if pool1 else nn.Identity()
        self.conv2 = nn.Conv2d(6, 16, 5, padding=pad2)
        self.pool2 = nn.MaxPool2d(2) if pool2 else nn.Identity()
        self.relu = nn.ReLU()
        self.fc1 = nn.Linear(16 * h * w, 120)
        self.fc2 = nn.Linear(120, 84)
        self.feature_dim = 84
        self.head = nn.Linear(84, num_classes)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu(self.conv1(x)))
        x = self.pool2(self.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        return self.relu(self.fc2(self.relu(self.fc1(x))))


@register_model("lenet5")
def lenet5(*, num_classes, in_channels, image_size, mean=None, std=None) -> LeNet5:
    return LeNet5(num_classes, in_channels, image_size, mean=mean, std=std)
