"""`reparam.nola.Config`: the rank, the number of random matrices and how the coefficients are shared."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from reparam.core.errors import ReparamError

SHARING = ("per-layer", "shared")


@dataclass
class Config:
    """NOLA on the layers `filter_fn` keeps: delta W = s * (sum_i alpha_i A_i)(B_0 + sum_j beta_j B_j).

    k:          random matrices A_i (out x rank) per layer, i.e. alpha's length (or the shared alpha's).
    l:          random matrices B_j (rank x in) per layer; None = k.
    rank:       r, the rank of the delta (NOLA's LoRA rank).
    seed:       the generator seed (stored in the adapter file); every layer and factor has its own stream.
    lora_alpha: s = lora_alpha / rank (LoRA's and NOLA's scaling); None = rank, i.e. s = 1 (NOLA's GPT-2
                scripts use lora_alpha = rank = 8).
    sharing:    "per-layer" (each layer its own alpha, beta: the paper's) or "shared" (one alpha of k and one
                beta of l for every layer; each layer still has its own random matrices).
    quant_bits: None, or 2..8: quantization-aware training, the forward uses the coefficients rounded to
                this many bits (one step per vector) as an `int<bits>` adapter file stores them.
    """

    k: int = 16
    l: int | None = None
    rank: int = 4
    seed: int = 0
    lora_alpha: float | None = None
    sharing: str = "per-layer"
    quant_bits: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> Config:
        """Check every field (also run when the Config is built); returns self."""
        for name in ("k", "rank"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ReparamError(f"nola {name} must be a positive integer, got {v!r}")
        if self.l is not None and (not isinstance(self.l, int) or isinstance(self.l, bool) or self.l < 1):
            raise ReparamError(f"nola l must be a positive integer or None (= k), got {self.l!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not -(2**63) <= self.seed < 2**64:
            raise ReparamError(f"nola seed must be an integer that fits in 64 bits, got {self.seed!r}")
        a = self.lora_alpha
        if a is not None and (isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a)
                              or a <= 0):
            raise ReparamError(f"nola lora_alpha must be a positive number or None (= rank), got {a!r}")
        if self.sharing not in SHARING:
            raise ReparamError(f"nola sharing {self.sharing!r} is not allowed; allowed: {', '.join(SHARING)}")
        q = self.quant_bits
        if q is not None and (not isinstance(q, int) or isinstance(q, bool) or not 2 <= q <= 8):
            raise ReparamError(f"nola quant_bits must be None or an integer from 2 to 8, got {q!r}")
        return self

    @property
    def n_beta(self) -> int:
        return self.k if self.l is None else self.l

    @property
    def scaling(self) -> float:
        return (self.rank if self.lora_alpha is None else float(self.lora_alpha)) / self.rank

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
