"""Masks as first-class objects: {"<module>.weight": 0/1 tensor} applied as a parametrization.

The effective weight is `original * mask` with the mask a buffer, so an optimizer step (momentum, weight
decay) can change `original` but never a pruned entry of the weight the network computes with.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.utils import parametrize as tparam
from torch.nn.utils import prune as tprune

from reparam.core import parametrize as rp
from reparam.core.errors import ReparamError
from reparam.core.fileformat import load_tensors, save_tensors
from reparam.core.protocol import bake_method

Masks = dict[str, torch.Tensor]
MASK_KIND = "mask"


def prunable(first_conv: bool = True, linear: bool = False, head: str = "head") -> rp.FilterFn:
    """Filter for prunable layers: conv always, Linear when `linear`, never the head; first conv optional.

    BatchNorm layers and biases are never pruned (only `.weight` of Conv/Linear is masked).
    """
    first: list[str] = []

    def fn(module: nn.Module, name: str) -> bool:
        if name == "":   # the root starts every traversal (select_layers): forget the last model's first conv
            first.clear()
            return False
        if name == head or name.startswith(head + "."):
            return False
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            if not first_conv:
                if not first:
                    first.append(name)
                if first[0] == name:
                    return False
            return True
        return linear and isinstance(module, nn.Linear)

    return fn


def layer_names(model: nn.Module, filter_fn: rp.FilterFn | None = None) -> list[str]:
    return [n for n, _ in rp.select_layers(model, filter_fn or prunable())]


def weights(model: nn.Module, filter_fn: rp.FilterFn | None = None) -> dict[str, torch.Tensor]:
    """The effective (masked) weights of the prunable layers, keyed "<module>.weight"."""
    layers = rp.select_layers(model, filter_fn or prunable())
    return {f"{n}.weight": m.weight.detach().clone() for n, m in layers}


class MaskParam(nn.Module):
    """weight = original * mask; the mask is a buffer (saved with the model, never trained).

    The one mask parametrization of reparam (tickets, the PRANC harness's pruning baseline, channel export).
    """

    reparam_method = "tickets"

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.detach().to(torch.float32).clone())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask.to(w.dtype)


def _module(model: nn.Module, key: str) -> nn.Module:
    name = key[: -len(".weight")] if key.endswith(".weight") else key
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ReparamError(f"mask names layer {name!r}, which the model does not have") from None


def _mask_param(module: nn.Module) -> MaskParam | None:
    if tparam.is_parametrized(module, "weight"):
        for p in module.parametrizations.weight:
            if isinstance(p, MaskParam):
                return p
    return None


def check_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    for key, m in masks.items():
        mod = _module(model, key)
        if tuple(m.shape) != tuple(mod.weight.shape):
            raise ReparamError(f"mask {key!r} has shape {list(m.shape)}, the layer's weight is "
                               f"{list(mod.weight.shape)}")
        if not bool(((m == 0) | (m == 1)).all()):
            raise ReparamError(f"mask {key!r} holds values other than 0 and 1")


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Register (or update) the mask parametrization on every layer named in `masks` (in place)."""
    check_masks(model, masks)
    for key, m in masks.items():
        mod = _module(model, key)
        existing = _mask_param(mod)
        if existing is not None:
            existing.mask.copy_(m)
        else:
            tparam.register_parametrization(mod, "weight", MaskParam(m))
    return model


def get_masks(model: nn.Module) -> Masks:
    out: Masks = {}
    for name, mod in model.named_modules():
        p = _mask_param(mod)
        if p is not None:
            out[f"{name}.weight"] = p.mask.detach().clone()
    return out


def original_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unmasked underlying tensors of masked layers (what rewinding overwrites)."""
    out = {}
    for name, mod in model.named_modules():
        if _mask_param(mod) is not None:
            out[f"{name}.weight"] = mod.parametrizations.weight.original
    return out


def set_original(model: nn.Module, values: Mapping[str, torch.Tensor]) -> None:
    """Overwrite the underlying weights of masked layers (e.g. rewind to theta_pre)."""
    origs = original_weights(model)
    with torch.no_grad():
        for k, v in values.items():
            if k in origs:
                origs[k].copy_(v)
            else:
                _module(model, k).weight.copy_(v)


def fold(model: nn.Module) -> nn.Module:
    """Bake every masked tensor (with whatever chain it is on: w = Psi(v) * mask after the compander) into a
    plain weight, in place: pruned entries are exact zeros and the sparsity is exactly the mask's."""
    bake_method(model, "tickets")
    return model


fold_masks = fold   # the old name, kept for one release


def ones_like_weights(model: nn.Module, filter_fn: rp.FilterFn | None = None) -> Masks:
    return {k: torch.ones_like(v) for k, v in weights(model, filter_fn).items()}


def count(masks: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """(kept, total) entries over all masks."""
    kept = sum(int(m.sum().item()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    return kept, total


def sparsity(masks: Mapping[str, torch.Tensor]) -> float:
    """Global fraction of pruned entries (exact, over all masked weights)."""
    kept, total = count(masks)
    return 1.0 - kept / total if total else 0.0


def layer_sparsity(masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    return {k: 1.0 - float(m.sum().item()) / m.numel() for k, m in masks.items()}


def save_masks(path: str | Path, masks: Mapping[str, torch.Tensor], header: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    """Masks as bool tensors in the reparam file format (kind "mask"); header gets the sparsity."""
    h = dict(header or {})
    h["sparsity"] = sparsity(masks)
    h["layer_sparsity"] = layer_sparsity(masks)
    return save_tensors(path, {k: v.to(torch.bool) for k, v in masks.items()}, MASK_KIND, h)


def load_masks(path: str | Path) -> tuple[Masks, dict[str, Any]]:
    tensors, header = load_tensors(path, MASK_KIND)
    return {k: v.to(torch.float32) for k, v in tensors.items()}, header


def to_torch_prune(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Express masks in `torch.nn.utils.prune` form (weight_orig + weight_mask) on a plain model."""
    check_masks(model, masks)
    for key, m in masks.items():
        tprune.custom_from_mask(_module(model, key), "weight", m.clone())
    return model


def from_torch_prune(model: nn.Module) -> Masks:
    """Read `weight_mask` buffers left by `torch.nn.utils.prune` into a Masks dict."""
    out: Masks = {}
    for name, mod in model.named_modules():
        m = getattr(mod, "weight_mask", None)
        if isinstance(m, torch.Tensor) and tprune.is_pruned(mod):
            out[f"{name}.weight"] = m.detach().to(torch.float32).clone()
    return out
