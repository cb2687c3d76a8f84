"""The S-shaped maps w = Psi(v): forward, exact inverse, derivative and bound.

Every function has the form Psi(v) = a * f(v / b) with a, b > 0 (the paper's two scalars: a is the output
scale, b the stretch of the v axis). `arctan` is the paper's Weight Compander (eq. 1); `asinh` and `erf`
are the Table VII ablations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from reparam.core.errors import ReparamError

Scalar = float | torch.Tensor


@dataclass(frozen=True)
class SFunction:
    name: str
    forward: Callable[[torch.Tensor, Scalar, Scalar], torch.Tensor]   # Psi(v)
    inverse: Callable[[torch.Tensor, Scalar, Scalar], torch.Tensor]   # Psi^-1(w)
    derivative: Callable[[torch.Tensor, Scalar, Scalar], torch.Tensor]  # Psi'(v)
    bound_unit: float  # sup |Psi| / a: pi/2 for arctan, 1 for erf, inf for asinh

    def bound(self, a: Scalar) -> float:
        """sup |Psi(v)|: no weight can reach it (math.inf when unbounded)."""
        return float(a) * self.bound_unit


def _atan_fwd(v, a, b):
    return a * torch.atan(v / b)


def _atan_inv(w, a, b):
    return b * torch.tan(w / a)


def _atan_d(v, a, b):
    return a * b / (b * b + v * v)


def _asinh_fwd(v, a, b):
    return a * torch.asinh(v / b)


def _asinh_inv(w, a, b):
    return b * torch.sinh(w / a)


def _asinh_d(v, a, b):
    return a / torch.sqrt(b * b + v * v)


def _erf_fwd(v, a, b):
    return a * torch.erf(v / b)


def _erf_inv(w, a, b):
    return b * torch.erfinv(w / a)


_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


def _erf_d(v, a, b):
    return a / b * _TWO_OVER_SQRT_PI * torch.exp(-(v / b) ** 2)


FUNCTIONS: dict[str, SFunction] = {
    "arctan": SFunction("arctan", _atan_fwd, _atan_inv, _atan_d, math.pi / 2),
    "asinh": SFunction("asinh", _asinh_fwd, _asinh_inv, _asinh_d, math.inf),
    "erf": SFunction("erf", _erf_fwd, _erf_inv, _erf_d, 1.0),
}


def get_function(name: str) -> SFunction:
    if name not in FUNCTIONS:
        raise ReparamError(f"unknown compander function {name!r}; allowed: {', '.join(FUNCTIONS)}")
    return FUNCTIONS[name]


def psi(v: torch.Tensor, a: Scalar = 0.8, b: Scalar = 0.5, fn: str = "arctan") -> torch.Tensor:
    """w = Psi(v) = a * f(v / b)."""
    return get_function(fn).forward(v, a, b)


def dpsi(v: torch.Tensor, a: Scalar = 0.8, b: Scalar = 0.5, fn: str = "arctan") -> torch.Tensor:
    """Psi'(v) in closed form; for arctan a*b / (b^2 + v^2), so Psi'(0) = a / b (paper eq. 3)."""
    return get_function(fn).derivative(v, a, b)


def psi_inverse(w: torch.Tensor, a: Scalar = 0.8, b: Scalar = 0.5, fn: str = "arctan") -> torch.Tensor:
    """v = Psi^-1(w) (paper eq. 4 for arctan: b * tan(w / a)). No bound check here."""
    return get_function(fn).inverse(w, a, b)
