"""Parametrizations: the one concept every method shares.

A parametrization maps underlying tensors to a layer's weight (`torch.nn.utils.parametrize`). Methods
register theirs on the layers a `filter_fn(module, name)` picks, train through them, and `fold` them
away to leave a plain model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch.nn as nn
from torch.nn.utils import parametrize

FilterFn = Callable[[nn.Module, str], bool]

WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def conv_and_linear(module: nn.Module, name: str) -> bool:
    """Default filter: every Conv and Linear layer."""
    return isinstance(module, WEIGHT_LAYERS)


def select_layers(model: nn.Module, filter_fn: FilterFn | None = None) -> list[tuple[str, nn.Module]]:
    """(name, module) pairs picked by filter_fn (default: Conv and Linear), in module order."""
    fn = filter_fn or conv_and_linear
    return [(n, m) for n, m in model.named_modules() if fn(m, n)]


def exclude(*names: str, base: FilterFn | None = None) -> FilterFn:
    """A filter that picks what `base` picks except the named modules (exact names or prefixes + '.')."""
    base = base or conv_and_linear

    def fn(module: nn.Module, name: str) -> bool:
        if any(name == n or name.startswith(n + ".") for n in names):
            return False
        return base(module, name)

    return fn


def register(model: nn.Module, make: Callable[[str, nn.Module], nn.Module | None],
             filter_fn: FilterFn | None = None, tensor_name: str = "weight",
             unsafe: bool = False) -> list[str]:
    """Register `make(name, module)` as a parametrization of `tensor_name` on every selected layer.

    `make` may return None to skip a layer. Returns the names of the layers parametrized.
    """
    done = []
    for name, module in select_layers(model, filter_fn):
        if getattr(module, tensor_name, None) is None:
            continue
        p = make(name, module)
        if p is None:
            continue
        parametrize.register_parametrization(module, tensor_name, p, unsafe=unsafe)
        done.append(name)
    return done


def parametrized_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            yield name, module


def fold(model: nn.Module, tensor_name: str | None = None) -> nn.Module:
    """Remove parametrizations, keeping their current values as plain parameters (in place)."""
    for _, module in list(parametrized_layers(model)):
        names = [tensor_name] if tensor_name else list(module.parametrizations.keys())
        for t in names:
            if parametrize.is_parametrized(module, t):
                parametrize.remove_parametrizations(module, t, leave_parametrized=True)
    return model


class SharedCoreParam(nn.Module):
    """A parametrization generated from a coefficient module shared by many tensors (PRANC, NOLA).

    The shared module is a submodule of exactly one of these parametrizations: its coefficients appear once
    in the state_dict and move with model.to, and no child is added to the user's model (nn.Sequential would
    call it as a layer). The others keep a plain reference. `release` (called by core.protocol.bake before a
    parametrization is removed) hands the module on to one that stays."""

    def __init__(self, core: nn.Module, holds_core: bool = False):
        super().__init__()
        object.__setattr__(self, "_core", core)
        if holds_core:
            self.core = core
        core._tensors.append(self)

    def release(self) -> None:
        core = self._core
        core._tensors = [t for t in core._tensors if t is not self]
        if "core" in self._modules:
            del self._modules["core"]
            if core._tensors:
                core._tensors[0].core = core
