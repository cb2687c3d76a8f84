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


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class Config:
    """How TRP trains and decomposes (`reparam.trp.Config`; `TRPConfig` is the old name).

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
    skip_stem: leave the network's first Conv2d alone (official code), whatever filter_fn says.
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
        for name in ("energy", "nuclear"):
            if not _is_number(getattr(self, name)):
                raise ReparamError(f"{name} must be a number, got {getattr(self, name)!r}")
        for name in ("project", "skip_stem", "only_stride1"):
            if not isinstance(getattr(self, name), bool):
                raise ReparamError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not 0.0 < float(self.energy) < 1.0:
            raise ReparamError(f"energy must be in (0, 1) (the discarded energy fraction e of eq. 3), "
                               f"got {self.energy}")
        if not _is_number(self.period) or int(self.period) != self.period or self.period < 1:
            raise ReparamError(f"period must be an integer >= 1, got {self.period}")
        if self.nuclear < 0:
            raise ReparamError(f"nuclear (the nuclear-norm weight) must be >= 0, got {self.nuclear}")
        for name, allowed in (("nuclear_rank", NUCLEAR_RANKS), ("nuclear_when", NUCLEAR_WHEN),
                              ("counter", COUNTERS)):
            if getattr(self, name) not in allowed:
                raise ReparamError(f"unknown {name} {getattr(self, name)!r}; allowed: {', '.join(allowed)}")
        if not self.project and self.nuclear == 0:
            raise ReparamError("nothing to train: project is False and nuclear is 0; turn one on")
        if not isinstance(self.decompose_rule, str):
            raise ReparamError(f"decompose_rule must be a rule like 'value:0.05', got {self.decompose_rule!r}")
        RankRule.parse(self.decompose_rule)

    @property
    def rule(self) -> RankRule:
        return RankRule("energy", float(self.energy))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


TRPConfig = Config   # the old name, kept for one release
