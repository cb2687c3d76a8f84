"""TRP settings. Defaults follow the paper where it is explicit and the official code where it is not."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from reparam.core.errors import ReparamError
from reparam.trp.rank import RankRule
from reparam.trp.reshape import canonical_scheme

NUCLEAR_RANKS = ("full", "energy")
NUCLEAR_WHEN = ("every", "projection")
COUNTERS = ("global", "epoch")


@dataclass
class TRPConfig:
    """How TRP trains and decomposes.

    scheme: 'channel' (NC, TRP1), 'spatial' (VH, TRP2) or 'nd' (network decoupling, code only).
    energy: e of paper eq. (3), the fraction of squared singular-value energy a projection may discard
        (small e -> high rank). The official code's EnergyThreshold(T) is T = 1 - e; it trains with e = 0.1.
        Default 0.05: on small data e = 0.1 collapses ranks to about 4 per layer (spec 6.4).
    period: m, the projection runs when the step counter t satisfies t % m == 0 (code default 1).
    project: False gives nuclear-norm-only training (no projection).
    nuclear: lambda of eq. (5) (0 = off; the official code uses 3e-4).
    nuclear_rank: 'full' = U V^T over rank(W), the true sub-gradient (paper, default);
        'energy' = truncated to the energy rank k (cifar-TRP.py).
    nuclear_when: 'every' step (paper eq. 5, default) or only on 'projection' steps (cifar-TRP.py).
    counter: 'global' optimizer-step counter (default) or the per-epoch batch index (official code).
    skip_stem: leave the network's first conv alone (official code).
    decompose_rule: rank rule of the final decomposition (code: value threshold 0.05 for TRP models).
    only_stride1: decompose stride-1 convs only (official code); False decomposes all targets.
    """

    scheme: str = "channel"
    energy: float = 0.05
    period: int = 1
    project: bool = True
    nuclear: float = 0.0
    nuclear_rank: str = "full"
    nuclear_when: str = "every"
    counter: str = "global"
    skip_stem: bool = True
    decompose_rule: str = "value:0.05"
    only_stride1: bool = True

    def __post_init__(self) -> None:
        self.scheme = canonical_scheme(self.scheme)
        if not 0.0 < float(self.energy) < 1.0:
            raise ReparamError(f"energy must be in (0, 1) (the discarded energy fraction e of eq. 3), "
                               f"got {self.energy}")
        if int(self.period) != self.period or self.period < 1:
            raise ReparamError(f"period must be an integer >= 1, got {self.period}")
        if self.nuclear < 0:
            raise ReparamError(f"nuclear weight must be >= 0, got {self.nuclear}")
        for value, allowed, what in ((self.nuclear_rank, NUCLEAR_RANKS, "nuclear rank"),
                                     (self.nuclear_when, NUCLEAR_WHEN, "nuclear schedule"),
                                     (self.counter, COUNTERS, "step counter")):
            if value not in allowed:
                raise ReparamError(f"unknown {what} {value!r}; allowed: {', '.join(allowed)}")
        if not self.project and self.nuclear == 0:
            raise ReparamError("nothing to train: projection is off and the nuclear weight is 0")
        RankRule.parse(self.decompose_rule)

    @property
    def rule(self) -> RankRule:
        return RankRule("energy", float(self.energy))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
