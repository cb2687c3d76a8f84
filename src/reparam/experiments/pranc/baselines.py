"""Baselines in the same harness: HashedNet, regression of a trained theta* onto the basis, global magnitude
pruning at equal storage (value + index: each kept weight counts twice), and a narrower dense model."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from reparam.core.errors import ReparamError
from reparam.core.parametrize import FilterFn
from reparam.pranc.config import PrancConfig
from reparam.pranc.core import PrancCoefficients, apply_pranc
from reparam.pranc.layout import build_layout
from reparam.tickets.masks import MaskParam


# ---------------------------------------------------------------- HashedNet
class HashedValues(nn.Module):
    """k shared values; the basis weights are a random equal partition of them (official `pranc_bin`)."""

    def __init__(self, k: int, d: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.values = nn.Parameter(torch.randn(k, generator=g) / 10)   # official init randn/10
        per = math.ceil(d / k)
        perm = torch.randperm(per * k, generator=g)[:d]
        self.register_buffer("group", perm % k, persistent=False)     # every group has `per` slots


class _Hashed(nn.Module):
    def __init__(self, values: HashedValues, offset: int, shape: tuple[int, ...]):
        super().__init__()
        object.__setattr__(self, "_values", values)
        self.offset, self.shape = offset, shape

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        v = self._values
        n = math.prod(self.shape)
        return v.values[v.group[self.offset:self.offset + n]].view(self.shape)

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        return value.new_empty(0)


def apply_hashednet(model: nn.Module, k: int, seed: int = 0, filter_fn: FilterFn | None = None) -> HashedValues:
    """Weight sharing: the same tensors as PRANC's basis take values from k shared scalars."""
    if k <= 0:
        raise ReparamError(f"k must be a positive integer, got {k}")
    _, segs = build_layout(model, PrancConfig(k=k), filter_fn)
    d = sum(s.numel for s in segs)
    hv = HashedValues(k, d, seed)
    modules = dict(model.named_modules())
    for s in segs:
        m = modules[s.module]
        parametrize.register_parametrization(m, s.tensor, _Hashed(hv, s.offset, s.shape), unsafe=True)
        getattr(m.parametrizations, s.tensor).original.requires_grad_(False)
    model.add_module("hashed", hv)
    return hv


# ---------------------------------------------------------------- regression onto the basis
def regress_onto_basis(trained: nn.Module, k: int, seed: int = 0, distribution: str = "default-init",
                       filter_fn: FilterFn | None = None, ridge: float = 1e-6
                       ) -> tuple[nn.Module, dict[str, float]]:
    """argmin_alpha ||theta* - alpha B||^2 (normal equations in float64, streamed over columns).

    Returns a PRANC model (non-basis tensors such as BatchNorm copied from `trained`) and fit statistics.
    """
    model = copy.deepcopy(trained)
    theta = torch.cat([p.detach().reshape(-1) for p in _basis_tensors(model, filter_fn)]).double()
    core: PrancCoefficients = apply_pranc(model, PrancConfig(k=k, seed=seed, distribution=distribution,
                                                             mode="streamed"), filter_fn)
    gram = torch.zeros(k, k, dtype=torch.float64)
    rhs = torch.zeros(k, dtype=torch.float64)
    cols = max(1, (1 << 22) // k)
    for c0 in range(0, core.d, cols):
        c1 = min(core.d, c0 + cols)
        b = core.generate(0, 0, k, c0, c1).double()
        gram += b @ b.T
        rhs += b @ theta[c0:c1]
    gram += ridge * gram.diagonal().mean() * torch.eye(k, dtype=torch.float64)
    alpha = torch.linalg.solve(gram, rhs)
    with torch.no_grad():
        core.alpha.copy_(alpha.float())
    model.eval()
    fit = core.exact_theta().double()
    rel = ((fit - theta).norm() / theta.norm()).item()
    return model, {"relative_residual": rel, "explained_fraction": 1 - rel ** 2}


def _basis_tensors(model: nn.Module, filter_fn: FilterFn | None) -> list[torch.Tensor]:
    _, segs = build_layout(model, PrancConfig(k=1), filter_fn)
    modules = dict(model.named_modules())
    return [getattr(modules[s.module], s.tensor) for s in segs]


# ---------------------------------------------------------------- magnitude pruning
def magnitude_prune(model: nn.Module, keep: int, filter_fn: FilterFn | None = None) -> nn.Module:
    """Global magnitude pruning (in place) of the basis-eligible tensors, keeping `keep` entries.

    The masks are reparam's one mask parametrization (`reparam.tickets.masks.MaskParam`, w = theta * mask).
    Storage counts each kept entry twice (value + index), as the paper does for sparsity above 2x.
    """
    tensors = _basis_tensors(model, filter_fn)
    flat = torch.cat([t.detach().abs().reshape(-1) for t in tensors])
    if not 0 < keep <= flat.numel():
        raise ReparamError(f"keep={keep} is not in [1, {flat.numel()}]")
    # Not torch.nn.utils.prune.global_unstructured (L1Unstructured): it prunes the n - keep smallest
    # (topk(largest=False)), this keeps the `keep` largest; both keep exactly `keep` entries, but among
    # entries tied at the threshold they pick different ones (checked: 2 of 10 entries differ for
    # integer-valued weights), and this baseline's published numbers were measured with this rule.
    thresh_idx = torch.topk(flat, keep).indices
    mask_flat = torch.zeros_like(flat)
    mask_flat[thresh_idx] = 1.0
    _, segs = build_layout(model, PrancConfig(k=1), filter_fn)
    modules = dict(model.named_modules())
    off = 0
    for s in segs:
        m = modules[s.module]
        mask = mask_flat[off:off + s.numel].view(s.shape).clone()
        off += s.numel
        parametrize.register_parametrization(m, s.tensor, MaskParam(mask))
    return model


# ---------------------------------------------------------------- narrower dense model
def narrow_options(name: str, target_params: int, build) -> dict | None:
    """Model options giving about `target_params` parameters, or None if the model has no width knob.

    `build(**options) -> nn.Module`."""
    from reparam.models import model_options

    opts = model_options(name)

    def count(o):
        return sum(p.numel() for p in build(**o).parameters())

    if "width" in opts:
        lo, hi = 1e-3, float(opts["width"] or 1.0)
        for _ in range(30):
            mid = math.sqrt(lo * hi)
            if count({"width": mid}) > target_params:
                hi = mid
            else:
                lo = mid
        return {"width": lo}
    if "hidden" in opts:
        base = tuple(opts["hidden"])
        lo, hi = 1e-3, 1.0
        for _ in range(30):
            mid = math.sqrt(lo * hi)
            h = [max(1, round(v * mid)) for v in base]
            if count({"hidden": h}) > target_params:
                hi = mid
            else:
                lo = mid
        return {"hidden": [max(1, round(v * lo)) for v in base]}
    return None
