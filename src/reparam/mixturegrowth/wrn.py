"""The Wide ResNet MixtureGrowth grows: the zoo's `reparam.models.wrn.WideResNet` in the paper's setting.

Pre-activation WRN with BN only before each block plus a final BN (the GradMax setting the paper follows;
`bn2=True` gives the standard WRN), no conv/linear biases, PyTorch's default layer init (the official
code's), inputs normalized inside the model; CIFAR layout (stem stride 1, stages at strides 1/2/2, global
average pooling), which is also the small-input variant for 8x8 / 28x28 images. The same network is the
Large / Small baselines, the substrate `apply` turns into a template-mixing network, and what a grown
network folds back to.
"""

from __future__ import annotations

from reparam.models.wrn import WideResNet, parse_wrn


def wrn_options(half: bool = False, bn2: bool = False) -> dict:
    """The zoo options of MixtureGrowth's WRN (`build_model("wrn-D-K", ..., **wrn_options())`)."""
    return {"stem": 8 if half else 16, "inner_bn": bn2, "head_bias": False, "init": "torch"}


def build_wrn(name: str, *, num_classes: int, in_channels: int, half: bool = False, bn2: bool = False,
              mean=None, std=None, image_size: tuple[int, int] | None = None) -> WideResNet:
    """The target `wrn-D-K`, or with half=True the pre-growth network WRN-D-(K/2) with stem 8."""
    depth, k = parse_wrn(name)
    if half:
        k = k / 2
    return WideResNet(depth, k, num_classes, in_channels, image_size, mean=mean, std=std,
                      **wrn_options(half, bn2))


__all__ = ["WideResNet", "build_wrn", "parse_wrn", "wrn_options"]
