"""Pre-activation Wide ResNet WRN-D-K (Zagoruyko & Komodakis 2016), CIFAR layout: reparam's one WRN.

A 3x3 stem conv with `stem` channels (16 in the paper; MixtureGrowth's half-width nets use 8), then 3
stages of n = (D - 4) / 6 blocks with round(16K)/round(32K)/round(64K) channels (K may be fractional, e.g.
0.5 for the half-width net of WRN-10-1) and strides 1/2/2, a final BN-ReLU (`lastact`), global average
pooling and one Linear. A block is

    o = relu(bn1(x)); y = conv2(dropout(relu(bn2(conv1(o))))); return y + (shortcut(o) or x)

with a 1x1 conv shortcut on the activated input when the shape changes. Module names follow
soft-sharing / MixtureGrowth's code (conv_3x3, stage_i, lastact). Convs have no bias (each is followed by
BN, or is the last op of a block). Options for the MixtureGrowth setting (`reparam.mixturegrowth.build_wrn`):

* `inner_bn=False`: bn2 is an identity, i.e. BN only before each block plus the final BN (GradMax/paper);
* `head_bias=False`: a bias-free classifier (template-mixing layers have no bias, paper §3.1);
* `init="torch"`: PyTorch's default layer init instead of `kaiming_init` (the official code's).

`channel_spaces()` says which activation every layer reads and writes, so width-growth baselines (Random,
Net2Net) widen all producers and consumers of one activation consistently.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from reparam.core.errors import ReparamError
from reparam.models.base import Classifier, Normalize, kaiming_init, opt_bool, opt_choice, opt_float, opt_int
from reparam.models.registry import register_model_pattern

INITS = ("kaiming", "torch")
_NAME = re.compile(r"wrn-(\d+)-(\d+(?:\.\d+)?)")


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
        # Not in place: x itself is the identity residual below. The shortcut runs after conv2, so
        # forward hooks see the convs in module order (conv1, conv2, shortcut).
        out = torch.relu(self.bn1(x))
        h = self.conv1(out)
        h = self.conv2(self.dropout(self.relu(self.bn2(h))))
        return h + (x if self.shortcut is None else self.shortcut(out))


class WideResNet(Classifier):
    def __init__(
        self,
        depth: int,
        widen: float,
        num_classes: int,
        in_channels: int,
        image_size: tuple[int, int] | None = None,
        dropout: float = 0.0,
        stem: int = 16,
        inner_bn: bool = True,
        head_bias: bool = True,
        init: str = "kaiming",
        mean=None,
        std=None,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ReparamError(f"WRN depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}")
        opt_choice("init", init, INITS)
        n = (depth - 4) // 6
        channels = [int(round(16 * widen)), int(round(32 * widen)), int(round(64 * widen))]
        if min(channels) < 1 or stem < 1:
            raise ReparamError(f"WRN width K={widen:g} / stem={stem} gives an empty layer; K must be >= 1/32")
        self.depth, self.widen = depth, widen
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        # Module creation order is the order of the default inits' random draws: keep it.
        self.norm = Normalize(mean, std, in_channels)
        self.conv_3x3 = nn.Conv2d(in_channels, stem, 3, stride=1, padding=1, bias=False)
        self.stage_1 = self._stage(stem, channels[0], n, 1, dropout, inner_bn)
        self.stage_2 = self._stage(channels[0], channels[1], n, 2, dropout, inner_bn)
        self.stage_3 = self._stage(channels[1], channels[2], n, 2, dropout, inner_bn)
        self.lastact = nn.Sequential(nn.BatchNorm2d(channels[2]), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = channels[2]
        self.head = nn.Linear(channels[2], num_classes, bias=head_bias)
        if init == "kaiming":
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

    def channel_spaces(self) -> dict[str, tuple[str, str]]:
        """layer name -> (input space, output space); 'input' and 'classes' are never widened."""
        spaces: dict[str, tuple[str, str]] = {"conv_3x3": ("input", "stem")}
        cur = "stem"
        for name, m in self.named_modules():
            if not isinstance(m, WideBlock):
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
        spaces["lastact.0"] = (cur, cur)
        spaces["head"] = (cur, "classes")
        return spaces


def parse_wrn(name: str) -> tuple[int, float]:
    """(depth, widening factor) of a name `wrn-D-K`; K may be fractional (`wrn-10-0.5`)."""
    m = _NAME.fullmatch(name) if isinstance(name, str) else None
    if not m:
        raise ReparamError(f"unknown model {name!r}; allowed: wrn-D-K (e.g. wrn-10-4, wrn-16-4, wrn-28-10)")
    return int(m.group(1)), float(m.group(2))


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
    head_bias=True,
    init="kaiming",
) -> WideResNet:
    """Builder for names `wrn-D-K` (depth D, widening factor K; K > 0, fractional allowed)."""
    depth, widen = parse_wrn(match.group(0))
    if widen <= 0:
        raise ReparamError(f"WRN widening factor must be > 0, got {match.group(2)} in {match.group(0)!r}")
    return WideResNet(
        depth,
        int(widen) if widen.is_integer() else widen,
        num_classes,
        in_channels,
        image_size,
        dropout=opt_float("dropout", dropout, low=0.0, high=1.0, high_open=True),
        stem=opt_int("stem", stem, minimum=1),
        inner_bn=opt_bool("inner_bn", inner_bn),
        head_bias=opt_bool("head_bias", head_bias),
        init=opt_choice("init", init, INITS),
        mean=mean,
        std=std,
    )


register_model_pattern(
    _NAME.pattern,
    wrn,
    examples=("wrn-10-4", "wrn-16-4", "wrn-16-8", "wrn-28-5", "wrn-28-10", "wrn-40-4"),
)
