"""Scalar quantization of the PRANC coefficients, and the search of the step that meets a bit budget.

What is quantized is the offset from the initial coefficients e0 (1 for each layer's first basis network,
0 elsewhere), so every symbol is small: alpha = e0 + step_b * symbol. Layer b's step is the global step
times a ratio 2 ** (code / 16 - 8) stored in the file. The ratios come from the fit's sensitivity: a
coefficient whose loss curvature is h gains as much distortion per bit as any other when its step is
proportional to h ** -1/2 (high-rate theory), and Adam's second moment of the gradient estimates h per
layer for free. The global step is then the one at which the entropy-coded stream fills the budget.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from reparam.image import entropy
from reparam.image.container import MAX_BOUND, scale_code, scale_of

RATIO_CODE_ONE = 128      # code of ratio 1 (scale_of(128) == 1)


def initial_alpha(core) -> torch.Tensor:
    """e0 of every block (PRANC's "e0" initialisation): the value the offsets are measured from."""
    e0 = torch.zeros_like(core.alpha.detach())
    for b in core.blocks:
        e0[b.alpha_offset] = 1.0
    return e0


def ratio_codes(core, grad_sq: torch.Tensor | None) -> list[int]:
    """Per-layer step-ratio codes from the mean squared gradient of each block (geometric mean -> 1)."""
    if grad_sq is None:
        return [RATIO_CODE_ONE] * len(core.blocks)
    h = [float(grad_sq[b.alpha_offset:b.alpha_offset + b.k].mean()) for b in core.blocks]
    if not all(math.isfinite(v) and v > 0 for v in h):
        return [RATIO_CODE_ONE] * len(core.blocks)
    logs = [-0.5 * math.log2(v) for v in h]
    mean = sum(logs) / len(logs)
    return [scale_code(2.0 ** (v - mean)) for v in logs]


def step_vector(core, step: float, codes: list[int]) -> torch.Tensor:
    """The float32 step of every coefficient; encoder and decoder compute it the same way."""
    out = torch.empty(core.k, dtype=torch.float32)
    for b, c in zip(core.blocks, codes, strict=True):
        out[b.alpha_offset:b.alpha_offset + b.k] = float(np.float32(step) * np.float32(scale_of(c)))
    return out


def symbols(offset: torch.Tensor, steps: torch.Tensor, bound: int = MAX_BOUND) -> torch.Tensor:
    return torch.round(offset.detach() / steps).clamp_(-bound, bound).to(torch.int64)


def dequantize(sym: torch.Tensor, steps: torch.Tensor, e0: torch.Tensor) -> torch.Tensor:
    return e0 + sym.to(torch.float32) * steps


def split(core, sym: torch.Tensor) -> list[np.ndarray]:
    return [sym[b.alpha_offset:b.alpha_offset + b.k].numpy() for b in core.blocks]


def estimate_bits(core, offset: torch.Tensor, step: float, codes: list[int], gaussian: bool
                  ) -> tuple[float, list[int], int]:
    """(ideal code length in bits, per-layer entropy-model scale codes, symbol bound) at this step."""
    sym = symbols(offset, step_vector(core, step, codes))
    blocks = split(core, sym)
    bound = max(1, int(sym.abs().max()))
    scodes = entropy.best_codes(blocks, gaussian, bound)
    bits = sum(entropy.bits(s, c, gaussian, bound) for s, c in zip(blocks, scodes, strict=True))
    return bits, scodes, bound


def search_step(core, offset: torch.Tensor, codes: list[int], gaussian: bool, budget_bits: float,
                lo: float = 1e-6, hi: float = 1e3, iters: int = 40) -> float:
    """The smallest global step (bisection in log space) whose estimated stream fits in budget_bits."""
    if estimate_bits(core, offset, hi, codes, gaussian)[0] > budget_bits:
        return hi
    for _ in range(iters):
        mid = math.sqrt(lo * hi)
        if estimate_bits(core, offset, mid, codes, gaussian)[0] <= budget_bits:
            hi = mid
        else:
            lo = mid
        if hi / lo < 1.002:
            break
    return float(np.float32(hi))
