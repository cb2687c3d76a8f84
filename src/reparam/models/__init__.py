"""The model zoo: `build_model(name, num_classes=, in_channels=, image_size=, mean=, std=, **options)`.

Classifiers (every model but `fourier-mlp`) normalize their input inside the model (`model.norm`, buffers),
expose `features(x) -> [N, feature_dim]` and a replaceable `model.head` (nn.Linear), and compute
`forward(x) = head(features(x))` on inputs in [0, 1]. They are plain trees of nn.Conv2d / nn.Linear /
nn.BatchNorm2d so that methods can find layers by type and reparameterize their `.weight`.

To add a model: write a builder `fn(*, num_classes, in_channels, image_size, mean=None, std=None,
**named options with defaults)` returning an nn.Module and decorate it with `@register_model("name")`;
build_model rejects options the builder does not name.
"""

from reparam.models import cnn, fourier, lenet, mlp, resnet, resnet_cifar, rowformer, vgg, wrn  # noqa: F401
from reparam.models.base import Classifier, Normalize, replace_head
from reparam.models.fourier import FourierMLP, coords
from reparam.models.registry import (
    MODEL_PATTERNS,
    MODELS,
    build_for,
    build_from_spec,
    build_model,
    model_options,
    model_spec,
    register_model,
)

__all__ = [
    "MODELS",
    "MODEL_PATTERNS",
    "Classifier",
    "FourierMLP",
    "Normalize",
    "build_for",
    "build_from_spec",
    "build_model",
    "coords",
    "model_options",
    "model_spec",
    "register_model",
    "replace_head",
]
