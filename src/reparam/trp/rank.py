"""Rank selection rules applied to a vector of singular values (descending).

energy (paper eq. 3, literally): the smallest k >= 1 whose discarded energy sum_{j>k} s_j^2 is at most
    e * sum_j s_j^2. So e is the fraction of energy that may be thrown away; the official code's
    `EnergyThreshold(T)` keeps a fraction T of the energy, i.e. T = 1 - e (the code trains with T = 0.9).
value: the number of singular values >= tau (the official code decomposes TRP models with tau = 0.05).
rank: a fixed rank r (capped at the number of singular values).
fraction: floor(f * len(s)) (the code's `LinearRate`).
Every rule returns at least 1, so a layer is never removed, even an all-zero one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from reparam.core.errors import ReparamError

RULES = ("energy", "value", "rank", "fraction")


def energy_rank(s: torch.Tensor, e: float) -> int:
    """Smallest k >= 1 with sum_{j>k} s_j^2 <= e * sum_j s_j^2 (paper eq. 3). Needs 0 <= e < 1."""
    if not 0.0 <= e < 1.0:
        raise ReparamError(f"energy e must be in [0, 1), got {e}")
    sq = s.detach().double().flatten() ** 2
    if sq.numel() == 0:
        raise ReparamError("no singular values")
    total = float(sq.sum())
    if total == 0.0:
        return 1
    # tail[k] = energy discarded when k values are kept; a reverse cumsum is exact for small tails
    rev = torch.flip(torch.cumsum(torch.flip(sq, [0]), 0), [0])
    tail = torch.cat([rev, rev.new_zeros(1)])
    ok = (tail[1:] <= e * total).nonzero()
    return int(ok[0]) + 1


def value_rank(s: torch.Tensor, tau: float) -> int:
    """Number of singular values >= tau, at least 1."""
    if tau < 0:
        raise ReparamError(f"value threshold must be >= 0, got {tau}")
    return max(1, int((s.detach() >= tau).sum()))


def fixed_rank(s: torch.Tensor, r: int) -> int:
    if r < 1:
        raise ReparamError(f"rank must be >= 1, got {r}")
    return max(1, min(int(r), s.numel()))


def fraction_rank(s: torch.Tensor, f: float) -> int:
    if not 0.0 < f <= 1.0:
        raise ReparamError(f"rank fraction must be in (0, 1], got {f}")
    return max(1, min(s.numel(), math.floor(s.numel() * f)))


@dataclass(frozen=True)
class RankRule:
    """One of the rules above with its parameter; `RankRule.parse("energy:0.05")`."""

    kind: str = "energy"
    value: float = 0.05

    def __post_init__(self) -> None:
        if self.kind not in RULES:
            raise ReparamError(f"unknown rank rule {self.kind!r}; allowed: {', '.join(RULES)}")
        if self.kind == "energy" and not 0.0 < self.value < 1.0:
            raise ReparamError(f"energy must be in (0, 1) (paper eq. 3: the discarded fraction), "
                               f"got {self.value}")
        if self.kind == "value" and self.value < 0:
            raise ReparamError(f"value threshold must be >= 0, got {self.value}")
        if self.kind == "rank" and (self.value < 1 or self.value != int(self.value)):
            raise ReparamError(f"fixed rank must be an integer >= 1, got {self.value}")
        if self.kind == "fraction" and not 0.0 < self.value <= 1.0:
            raise ReparamError(f"rank fraction must be in (0, 1], got {self.value}")

    @classmethod
    def parse(cls, text: str) -> RankRule:
        kind, sep, val = str(text).partition(":")
        if not sep:
            raise ReparamError(f"rank rule {text!r} must look like KIND:VALUE, KIND one of {', '.join(RULES)}"
                               " (e.g. energy:0.05, value:0.05, rank:8, fraction:0.5)")
        try:
            number = float(val)
        except ValueError:
            raise ReparamError(f"rank rule {text!r}: {val!r} is not a number") from None
        return cls(kind.strip().lower(), number)

    def __call__(self, s: torch.Tensor) -> int:
        if self.kind == "energy":
            return energy_rank(s, self.value)
        if self.kind == "value":
            return value_rank(s, self.value)
        if self.kind == "rank":
            return fixed_rank(s, int(self.value))
        return fraction_rank(s, self.value)

    def __str__(self) -> str:
        return f"{self.kind}:{self.value:g}"


def numerical_rank(s: torch.Tensor, shape: tuple[int, int]) -> int:
    """rank(M) as numpy/torch matrix_rank count it: s_i > max(shape) * eps * s_max (at least 1)."""
    if s.numel() == 0 or float(s.max()) == 0.0:
        return 1
    tol = max(shape) * torch.finfo(s.dtype).eps * float(s.max())
    return max(1, int((s > tol).sum()))
