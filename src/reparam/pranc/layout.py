"""Which parameters live in the basis, where, and with which scale; per-layer budgets.

The basis parameters form blocks. In the global layout (the paper's) there is one block: a k x d matrix
whose columns are all basis parameters flattened in module order, weight then bias. In the per-layer
layout every selected module is its own block (k_m x d_m, own alpha_m), as in the official on-the-fly
variant and the image codec. Each tensor is a `Segment`: a column range of one block with one scale.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn

from reparam.core.errors import ReparamError
from reparam.core.parametrize import FilterFn
from reparam.core.protocol import select, weight_tensors
from reparam.pranc.config import PrancConfig


@dataclass(frozen=True)
class Segment:
    module: str        # module name in the model ("" for the root)
    tensor: str        # "weight" or "bias"
    shape: tuple[int, ...]
    block: int
    offset: int        # first column inside the block
    scale: float       # float32 value: 1/sqrt(fan_in) (default-init) or sigma (gaussian)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def state_name(self) -> str:
        return f"{self.module}.{self.tensor}" if self.module else self.tensor

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass(frozen=True)
class Block:
    index: int
    name: str          # "global" or the layer's module name
    k: int
    d: int
    alpha_offset: int  # first coefficient of this block in the one stored alpha vector

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fan_in(weight: torch.Tensor) -> int:
    """torch's fan-in (in_features, or in_channels/groups * kernel size)."""
    if weight.ndim < 2:
        return max(1, weight.numel())
    return max(1, weight[0].numel())


def _f32(x: float) -> float:
    return float(torch.tensor(x, dtype=torch.float32).item())


def default_bound(module: nn.Module, weight: torch.Tensor) -> float:
    """Bound of the uniform distribution with the variance of the layer's default initialisation.

    Conv/Linear (kaiming_uniform with a = sqrt(5)): 1/sqrt(fan_in), the official code's basis scale;
    Embedding (N(0, 1)): sqrt(3); MultiheadAttention's input projections (xavier_uniform over the
    [3E, E] or [E, kdim] matrix): sqrt(6 / (fan_in + fan_out)).
    """
    if isinstance(module, nn.Embedding):
        return math.sqrt(3.0)
    if isinstance(module, nn.MultiheadAttention):
        return math.sqrt(6.0 / (weight.shape[0] + weight.shape[1]))
    return 1.0 / math.sqrt(fan_in(weight))


def segment_scale(config: PrancConfig, weight: torch.Tensor, module: nn.Module | None = None) -> float:
    bound = default_bound(module, weight) if module is not None else 1.0 / math.sqrt(fan_in(weight))
    if config.distribution == "default-init":
        return _f32(bound)
    if config.sigma is not None:
        return _f32(config.sigma)
    return _f32(bound / math.sqrt(3.0))


def basis_tensors(model: nn.Module, config: PrancConfig, filter_fn: FilterFn | None = None
                  ) -> list[tuple[str, nn.Module, list[tuple[str, tuple[int, ...]]], float]]:
    """(layer name, layer, [(tensor, shape)], scale) of every layer PRANC generates, in module order.

    Layers: Conv1d/2d/3d, Linear, Embedding and MultiheadAttention's input projections (its out_proj
    is a Linear of its own) that `filter_fn` keeps; their weight, and bias unless include_bias is off.
    """
    out = []
    for name, m in select(model, lambda mod: bool(weight_tensors(mod)), filter_fn):
        names = weight_tensors(m, include_bias=config.include_bias)
        tensors = [(t, tuple(getattr(m, t).shape)) for t in names]
        out.append((name, m, tensors, segment_scale(config, getattr(m, names[0]), m)))
    return out


def _split(total: int, sizes: list[int], rule: str) -> list[int]:
    n = len(sizes)
    if total < n:
        raise ReparamError(f"k={total} is smaller than the number of layers ({n}); per-layer budgets need "
                           "at least one coefficient per layer")
    if rule == "uniform":
        return [total // n + (1 if i < total % n else 0) for i in range(n)]
    # proportional to layer size, at least 1 each, largest remainders get the rest
    d = sum(sizes)
    spare = total - n
    raw = [spare * s / d for s in sizes]
    out = [1 + int(r) for r in raw]
    order = sorted(range(n), key=lambda i: raw[i] - int(raw[i]), reverse=True)
    for i in order[: total - sum(out)]:
        out[i] += 1
    return out


def build_layout(model: nn.Module, config: PrancConfig, filter_fn: FilterFn | None = None
                 ) -> tuple[list[Block], list[Segment]]:
    per_layer_tensors = basis_tensors(model, config, filter_fn)
    if not per_layer_tensors:
        raise ReparamError("no layer was selected for the PRANC basis (the filter picked no Conv, Linear, "
                           "Embedding or MultiheadAttention layer)")
    sizes = [sum(math.prod(s) for _, s in ts) for _, _, ts, _ in per_layer_tensors]
    budgets = config.budgets
    if budgets is None:
        d = sum(sizes)
        blocks = [Block(0, "global", config.k, d, 0)]
        segs, off = [], 0
        for name, _, ts, scale in per_layer_tensors:
            for t, shape in ts:
                segs.append(Segment(name, t, shape, 0, off, scale))
                off += math.prod(shape)
        return blocks, segs
    names = [n for n, _, _, _ in per_layer_tensors]
    if isinstance(budgets, str):
        ks = _split(config.k, sizes, budgets)
    elif isinstance(budgets, dict):
        unknown = [n for n in budgets if n not in names]
        if unknown:
            raise ReparamError(f"budget for unknown layer {unknown[0]!r}; basis layers: {', '.join(names)}")
        missing = [n for n in names if n not in budgets]
        if missing:
            raise ReparamError(f"no budget for basis layer {missing[0]!r}")
        ks = [int(budgets[n]) for n in names]
    else:
        ks = [int(v) for v in budgets]
        if len(ks) != len(names):
            raise ReparamError(f"{len(ks)} per-layer budgets given for {len(names)} basis layers "
                               f"({', '.join(names)})")
    bad = [(n, v) for n, v in zip(names, ks) if v <= 0]
    if bad:
        raise ReparamError(f"budget of layer {bad[0][0]!r} is {bad[0][1]}; budgets must be positive")
    blocks, segs, aoff = [], [], 0
    for b, ((name, _, ts, scale), kb, d) in enumerate(zip(per_layer_tensors, ks, sizes)):
        blocks.append(Block(b, name, kb, d, aoff))
        aoff += kb
        off = 0
        for t, shape in ts:
            segs.append(Segment(name, t, shape, b, off, scale))
            off += math.prod(shape)
    return blocks, segs
