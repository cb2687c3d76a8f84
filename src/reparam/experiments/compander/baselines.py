"""The paper's competing reparameterizations, in the same harness: Weight Normalization and Powerpropagation.

Both go on the same layers as the compander (Conv/Linear weights picked by filter_fn; never BN or bias)
and fold away the same way.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import weight_norm

from reparam.core.errors import ReparamError
from reparam.core.parametrize import WEIGHT_LAYERS, FilterFn, register, select_layers


def _layers(filter_fn: FilterFn | None) -> FilterFn:
    def fn(module: nn.Module, name: str) -> bool:
        return isinstance(module, WEIGHT_LAYERS) and (filter_fn is None or bool(filter_fn(module, name)))

    return fn


def apply_weight_norm(model: nn.Module, filter_fn: FilterFn | None = None) -> list[str]:
    """torch's own weight normalization w = g * v / ||v|| (per output channel, dim 0) on every layer."""
    done = []
    for name, module in select_layers(model, _layers(filter_fn)):
        weight_norm(module, name="weight", dim=0)
        done.append(name)
    if not done:
        raise ReparamError("the weight-norm filter picked no Conv/Linear layer")
    return done


class PowerProp(nn.Module):
    """Powerpropagation w = v * |v|^(alpha - 1); right_inverse v = sign(w) * |w|^(1 / alpha)."""

    def __init__(self, alpha: float = 2.0):
        super().__init__()
        if not alpha >= 1.0:
            raise ReparamError(f"powerprop alpha must be >= 1, got {alpha}")
        self.alpha = float(alpha)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return v * v.abs().pow(self.alpha - 1)

    @torch.no_grad()
    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        w64 = w.double()
        return (w64.sign() * w64.abs().pow(1.0 / self.alpha)).to(w.dtype)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}"


def apply_powerprop(model: nn.Module, alpha: float = 2.0, filter_fn: FilterFn | None = None) -> list[str]:
    done = register(model, lambda name, m: PowerProp(alpha), _layers(filter_fn))
    if not done:
        raise ReparamError("the powerprop filter picked no Conv/Linear layer")
    return done
