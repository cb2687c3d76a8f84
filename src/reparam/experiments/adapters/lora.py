"""A tiny LoRA (Hu et al., 2021), the baseline NOLA compresses: W' = W + (lora_alpha / r) B A, A and B trained.

A parametrization in reparam's shape (class `reparam_method = "lora"`, the pretrained tensor kept as the
frozen `original`, ownership claimed) on Conv, Linear and MultiheadAttention weights, as NOLA's. A (r x in)
starts as torch's default init draws it (U(+-1/sqrt(in)), seeded), B (out x r) at zero, so the adapted
model starts at the pretrained one. Stored: r (in + out) numbers per layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from reparam.core.errors import ReparamError
from reparam.core.parametrize import FilterFn
from reparam.core.protocol import claim, select, weight_tensors

TAKEN = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.MultiheadAttention)


class LoraDelta(nn.Module):
    reparam_method = "lora"

    def __init__(self, shape: tuple[int, ...], rank: int, lora_alpha: float | None, generator: torch.Generator):
        super().__init__()
        self.shape, self.rank = tuple(shape), rank
        out, inn = shape[0], math.prod(shape[1:])
        bound = 1.0 / math.sqrt(inn)
        self.A = nn.Parameter((torch.rand(rank, inn, generator=generator) * 2 - 1) * bound)
        self.B = nn.Parameter(torch.zeros(out, rank))
        self.scaling = (rank if lora_alpha is None else lora_alpha) / rank

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return original + (self.B @ self.A).view(self.shape) * self.scaling

    @property
    def stored(self) -> int:
        return self.A.numel() + self.B.numel()


def apply_lora(model: nn.Module, rank: int, *, seed: int = 0, lora_alpha: float | None = None,
               filter_fn: FilterFn | None = None) -> list[tuple[str, str, LoraDelta]]:
    """LoRA on every Conv / Linear / MultiheadAttention weight filter_fn keeps; freezes the base. Returns
    (layer, tensor, parametrization) in module order."""
    if not isinstance(rank, int) or rank < 1:
        raise ReparamError(f"lora rank must be a positive integer, got {rank!r}")
    targets = [(n, m, t) for n, m in select(model, lambda mod: isinstance(mod, TAKEN), filter_fn)
               for t in weight_tensors(m)]
    if not targets:
        raise ReparamError("lora found no Conv, Linear or MultiheadAttention layer to adapt")
    claim("lora", targets)
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    out = []
    for name, m, t in targets:
        delta = LoraDelta(tuple(getattr(m, t).shape), rank, lora_alpha, g).to(getattr(m, t).device)
        parametrize.register_parametrization(m, t, delta, unsafe=True)
        out.append((name, t, delta))
    return out


def lora_layers(model: nn.Module) -> list[tuple[str, str, LoraDelta]]:
    out = []
    for name, m in model.named_modules():
        if parametrize.is_parametrized(m):
            for t in m.parametrizations.keys():
                for p in m.parametrizations[t]:
                    if isinstance(p, LoraDelta):
                        out.append((name, t, p))
    return out
