"""`reparam.compander.Config`: every setting of the Weight Compander, checked when it is built."""

from __future__ import annotations

import math
from dataclasses import dataclass

from reparam.compander.functions import get_function
from reparam.core.errors import ReparamError

LEARNABLE = (None, "fine", "coarse")
POSITIVITY = ("abs", "softplus")
OUT_OF_BOUND = ("error", "clamp")
DECAY_MODES = ("auto", "psi", "v", "none")


@dataclass
class Config:
    """Settings of the Weight Compander.

    a, b: the two positive scalars of Psi(v) = a * f(v / b) (the paper's names). For learnable WC they are
    the initial values (paper §2.4: a = 0.5, b = 1.0).
    fn: "arctan" (the paper's compander), "asinh" or "erf" (Table VII ablations).
    learnable: None (fixed a, b stored as buffers, one pair for the whole model, the paper's main method),
        "fine" (one learnable (a, b) per layer, the paper's learnable WC) or "coarse" (one learnable pair
        shared by all layers).
    positivity: how learnable a, b stay positive. "softplus" (default): a = softplus(raw) + min_scale (smooth;
        rescales their gradient by sigmoid(raw), which damps the scalar's steps); "abs": the stored value is
        used as |x| clamped below at `min_scale`, so while positive the gradient is exactly the paper's
        dL/da, dL/db. With SGD lr 0.1 "abs" let the last layer's b jump to 10-27 and training collapse on
        several digits seeds (docs/results/weight_compander.md §6), hence the softplus default.
    on_out_of_bound: "error" (default) when an initial |w0| >= bound (eq. 4 undefined), or "clamp" to
        (1 - clamp_margin) * bound with a warning.
    ab_lr_scale: learning rate of learnable a, b relative to the base lr (default 1.0: the same lr as every
        other parameter, as the paper implies; a and b each collect the gradient of a whole layer, so smaller
        values can stabilise small-data training).
    weight_decay: how weight decay reaches the compandered layers. "auto": on Psi(v) for fixed WC and on
        v for learnable WC (the paper's choices); "psi", "v" or "none" force one (ablations). a and b are
        never decayed; BN and biases keep the baseline's decay.
    wd: the weight-decay lambda itself (torch's convention: the gradient of (wd/2) ||w||^2). `apply` puts a
        `PsiDecay(wd)` hook in its handle when the decay is on Psi(v), and `param_groups` uses it when not
        given a value. 0 (default): no decay, as torch's optimizers.
    """

    a: float = 0.8
    b: float = 0.5
    fn: str = "arctan"
    learnable: str | None = None
    positivity: str = "softplus"
    min_scale: float = 1e-3
    on_out_of_bound: str = "error"
    clamp_margin: float = 1e-3
    weight_decay: str = "auto"
    ab_lr_scale: float = 1.0
    wd: float = 0.0

    def __post_init__(self) -> None:
        self._check()

    def _check(self) -> None:
        get_function(self.fn)
        for name, value, allowed in (("learnable", self.learnable, LEARNABLE),
                                     ("positivity", self.positivity, POSITIVITY),
                                     ("on_out_of_bound", self.on_out_of_bound, OUT_OF_BOUND),
                                     ("weight_decay", self.weight_decay, DECAY_MODES)):
            if value not in allowed:
                raise ReparamError(f"compander {name} {value!r} not allowed; allowed: "
                                   + ", ".join(str(x) for x in allowed))
        for name, value in (("a", self.a), ("b", self.b)):
            if not (_number(value) and math.isfinite(value) and value > 0):
                raise ReparamError(f"compander {name} must be a positive finite number, got {value!r}")
        if not (_number(self.ab_lr_scale) and math.isfinite(self.ab_lr_scale) and self.ab_lr_scale > 0):
            raise ReparamError(f"ab_lr_scale must be a positive number, got {self.ab_lr_scale!r}")
        if not (_number(self.clamp_margin) and 0 < self.clamp_margin < 1):
            raise ReparamError(f"clamp_margin must be in (0, 1), got {self.clamp_margin!r}")
        if not (_number(self.min_scale) and math.isfinite(self.min_scale) and self.min_scale > 0):
            raise ReparamError(f"compander min_scale must be a positive number, got {self.min_scale!r}")
        if not (_number(self.wd) and math.isfinite(self.wd) and self.wd >= 0):
            raise ReparamError(f"compander wd (the weight-decay lambda) must be a number >= 0, got {self.wd!r}")

    def validate(self) -> Config:
        """Check again (fields may have been changed after construction); returns self."""
        self._check()
        return self

    @property
    def decay_mode(self) -> str:
        if self.weight_decay != "auto":
            return self.weight_decay
        return "psi" if self.learnable is None else "v"


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


CompanderConfig = Config   # the old name, kept for one release
