"""The pre-activation Wide ResNet MixtureGrowth grows (paper §3, App. 6; soft-sharing's SWRN layout).

This is the method's own plain model: BN only before each block plus a final BN (the GradMax setting the
paper follows; `bn2=True` gives the standard WRN), no conv/linear biases, inputs normalized inside the
model. Stem stride 1, stages at strides 1/2/2 and global average pooling: the CIFAR layout, which is
also the small-input variant for 8x8 / 28x28 images. The same class is

* the Large / Small baselines (plain layers),
* the substrate `reparam.mixturegrowth.apply` turns into a template-mixing network (parametrizations on
  its Conv2d/Linear, member-aware BN), and
* what a grown network folds back to (`fold_to_plain`).

`channel_spaces()` names which activation each layer reads and writes, so width-growth baselines (Random,
Net2Net) widen producers and consumers of the same channels consistently.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from reparam.core.errors import ReparamError

_KEEP = "keep"


def _set_member(module: nn.Module, member: int | None) -> None:
    from reparam.mixturegrowth.layers import set_member

    set_member(module, member)


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, bn2: bool = False):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes) if bn2 else nn.Identity()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.shortcut = (nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)
                         if (in_planes != out_planes or stride != 1) else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        h = self.conv1(o)
        h = self.conv2(F.relu(self.bn2(h)))
        return h + (self.shortcut(o) if self.shortcut is not None else x)


class WideResNet(nn.Module):
    """WRN-depth-k. Channels [stem, 16k, 32k, 64k]; `stem` defaults to 16 (8 for the half-width net)."""

    def __init__(self, depth: int = 10, k: float = 4, num_classes: int = 10, in_channels: int = 3,
                 stem: int = 16, bn2: bool = False,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ReparamError(f"WRN depth must be 6n+4 with n >= 1 (10, 16, 22, 28, ...), got {depth}")
        n = (depth - 4) // 6
        widths = [int(round(16 * k)), int(round(32 * k)), int(round(64 * k))]
        if min(widths) < 1 or stem < 1:
            raise ReparamError(f"WRN width k={k} / stem={stem} gives an empty layer")
        self.depth, self.k, self.stem_channels, self.widths = depth, k, stem, widths
        self.num_classes, self.in_channels, self.bn2 = num_classes, in_channels, bn2
        mean = torch.tensor(mean if mean is not None else [0.0] * in_channels).view(1, -1, 1, 1)
        std = torch.tensor(std if std is not None else [1.0] * in_channels).view(1, -1, 1, 1)
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float())
        self.conv_3x3 = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)
        strides = (1, 2, 2)
        planes = stem
        for i, (w, s) in enumerate(zip(widths, strides)):
            blocks = []
            for j in range(n):
                blocks.append(PreActBlock(planes, w, s if j == 0 else 1, bn2=bn2))
                planes = w
            setattr(self, f"stage_{i + 1}", nn.Sequential(*blocks))
        self.lastact = nn.BatchNorm2d(planes)
        self.head = nn.Linear(planes, num_classes, bias=False)

    def features(self, x: torch.Tensor, member=_KEEP) -> torch.Tensor:
        if member != _KEEP:
            _set_member(self, member)
        x = (x - self.mean) / self.std
        h = self.conv_3x3(x)
        h = self.stage_3(self.stage_2(self.stage_1(h)))
        h = F.relu(self.lastact(h))
        return F.adaptive_avg_pool2d(h, 1).flatten(1)

    def forward(self, x: torch.Tensor, member=_KEEP) -> torch.Tensor:
        """`member`: small-network index, None for the grown network, omitted to keep the current mode."""
        return self.head(self.features(x, member))

    def conv_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Output of every conv layer in order (for layer-by-layer CKA)."""
        outs: list[torch.Tensor] = []
        hooks = [m.register_forward_hook(lambda _m, _i, o: outs.append(o.detach()))
                 for m in self.modules() if isinstance(m, nn.Conv2d)]
        try:
            self.forward(x)
        finally:
            for h in hooks:
                h.remove()
        return outs

    def channel_spaces(self) -> dict[str, tuple[str, str]]:
        """layer name -> (input space, output space); 'input' and 'classes' are never widened."""
        spaces: dict[str, tuple[str, str]] = {"conv_3x3": ("input", "stem")}
        cur = "stem"
        for name, m in self.named_modules():
            if not isinstance(m, PreActBlock):
                continue
            stage = re.match(r"stage_(\d+)", name).group(1)
            out = f"res{stage}" if m.shortcut is not None else cur
            spaces[f"{name}.bn1"] = (cur, cur)
            spaces[f"{name}.conv1"] = (cur, f"{name}.mid")
            if isinstance(m.bn2, nn.BatchNorm2d):
                spaces[f"{name}.bn2"] = (f"{name}.mid", f"{name}.mid")
            spaces[f"{name}.conv2"] = (f"{name}.mid", out)
            if m.shortcut is not None:
                spaces[f"{name}.shortcut"] = (cur, out)
            cur = out
        spaces["lastact"] = (cur, cur)
        spaces["head"] = (cur, "classes")
        return spaces


_NAME = re.compile(r"^wrn-(\d+)-(\d+(?:\.\d+)?)$")


def parse_wrn(name: str) -> tuple[int, float]:
    m = _NAME.match(name)
    if not m:
        raise ReparamError(f"unknown model {name!r}; allowed: wrn-D-K (e.g. wrn-10-4, wrn-16-4, wrn-28-10)")
    return int(m.group(1)), float(m.group(2))


def build_wrn(name: str, *, num_classes: int, in_channels: int, half: bool = False, bn2: bool = False,
              mean=None, std=None) -> WideResNet:
    """The target `wrn-D-K`, or with half=True the pre-growth network WRN-D-(K/2) with stem 8."""
    depth, k = parse_wrn(name)
    if half:
        k, stem = k / 2, 8
    else:
        stem = 16
    return WideResNet(depth, k, num_classes, in_channels, stem=stem, bn2=bn2, mean=mean, std=std)
