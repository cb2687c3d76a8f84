"""`reparam.tickets.Config`: what `tickets.apply` prunes and how, checked when it is built."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from reparam.core.errors import ReparamError
from reparam.tickets.patterns import SCOPES, Pattern, parse_pattern


@dataclass
class Config:
    """Settings of a one-shot magnitude ticket (the paper's OMP), or masks given ready-made.

    sparsity: fraction of the prunable weights set to zero, in [0, 1) (exact count for unstructured;
        N:M patterns fix it themselves).
    pattern: a Pattern or its text: "unstructured" | "channel" | "channel-l2" | "nm:N:M".
    scope: "global" (one ranking over all prunable layers) or "layer" (the same fraction in each).
    first_conv: prune the first convolution too (default True).
    linear: prune Linear layers too (default False: convolutions only, as the paper). The layer named
        "head" is never pruned.
    masks: {"<layer>.weight": 0/1 tensor} or the path of a mask file (`save_masks`): apply these instead
        of drawing; sparsity, pattern, scope, first_conv and linear are then not used.
    """

    sparsity: float = 0.9
    pattern: Pattern | str = "unstructured"
    scope: str = "global"
    first_conv: bool = True
    linear: bool = False
    masks: Mapping[str, torch.Tensor] | str | Path | None = None

    def __post_init__(self) -> None:
        if isinstance(self.pattern, str):
            self.pattern = parse_pattern(self.pattern)
        self.validate()

    def validate(self) -> Config:
        """Check every field (again, if they were changed after construction); returns self."""
        s = self.sparsity
        if not (isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and 0 <= s < 1):
            raise ReparamError(f"tickets sparsity must be a number in [0, 1), got {s!r}")
        if not isinstance(self.pattern, Pattern):
            raise ReparamError(f"tickets pattern must be a Pattern or one of unstructured, channel, channel-l2, "
                               f"nm:N:M; got {self.pattern!r}")
        if self.scope not in SCOPES:
            raise ReparamError(f"tickets scope {self.scope!r} not allowed; allowed: {', '.join(SCOPES)}")
        for name in ("first_conv", "linear"):
            if not isinstance(getattr(self, name), bool):
                raise ReparamError(f"tickets {name} must be True or False, got {getattr(self, name)!r}")
        m = self.masks
        if isinstance(m, (str, Path)):
            if not Path(m).is_file():
                raise ReparamError(f"tickets masks file {str(m)!r} not found")
        elif m is not None and not (isinstance(m, Mapping) and all(isinstance(v, torch.Tensor) for v in m.values())):
            raise ReparamError("tickets masks must be a dict {'<layer>.weight': 0/1 tensor} or the path of a mask "
                               f"file, got {type(m).__name__}")
        return self
