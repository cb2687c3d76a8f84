"""The Weight Compander parametrization w = a * f(v / b) on Conv/Linear weights, and how to apply it.

`apply(model, config, filter_fn)` registers a `Compander` on the `.weight` of every layer `filter_fn`
picks (default: every Conv1d/2d/3d and Linear, first and last layer included). BatchNorm parameters and
biases are never touched: only the tensor named "weight" of Conv/Linear modules is parametrized, even if
a user filter picks other modules.

Registration runs `right_inverse`, which sets v0 = Psi^-1(w0) (paper eq. 4) from the model's own
initialization, so the network computes the same function right after `apply` (to float32 rounding).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from reparam.compander.functions import SFunction, get_function
from reparam.core.errors import ReparamError
from reparam.core.parametrize import WEIGHT_LAYERS, FilterFn, register
from reparam.core.parametrize import fold as _fold

LEARNABLE = (None, "fine", "coarse")
POSITIVITY = ("abs", "softplus")
OUT_OF_BOUND = ("error", "clamp")
DECAY_MODES = ("auto", "psi", "v", "none")


@dataclass
class CompanderConfig:
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

    def validate(self) -> CompanderConfig:
        get_function(self.fn)
        for name, value, allowed in (("learnable", self.learnable, LEARNABLE),
                                     ("positivity", self.positivity, POSITIVITY),
                                     ("on_out_of_bound", self.on_out_of_bound, OUT_OF_BOUND),
                                     ("weight_decay", self.weight_decay, DECAY_MODES)):
            if value not in allowed:
                raise ReparamError(f"compander {name} {value!r} not allowed; allowed: "
                                   + ", ".join(str(x) for x in allowed))
        for name, value in (("a", self.a), ("b", self.b)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ReparamError(f"compander {name} must be a positive finite number, got {value!r}")
        if not (math.isfinite(self.ab_lr_scale) and self.ab_lr_scale > 0):
            raise ReparamError(f"ab_lr_scale must be a positive number, got {self.ab_lr_scale!r}")
        if not 0 < self.clamp_margin < 1:
            raise ReparamError(f"clamp_margin must be in (0, 1), got {self.clamp_margin}")
        return self

    @property
    def decay_mode(self) -> str:
        if self.weight_decay != "auto":
            return self.weight_decay
        return "psi" if self.learnable is None else "v"


def _inv_softplus(x: float) -> float:
    return x + math.log(-math.expm1(-x))


class ABScale(nn.Module):
    """The pair (a, b): buffers when fixed, parameters when learnable (shared by layers when coarse)."""

    def __init__(self, a: float, b: float, learnable: bool = False, positivity: str = "abs",
                 min_scale: float = 1e-3):
        super().__init__()
        self.learnable = learnable
        self.positivity = positivity
        self.min_scale = min_scale
        if learnable:
            if positivity == "softplus":
                a, b = _inv_softplus(a - min_scale), _inv_softplus(b - min_scale)
            self.a = nn.Parameter(torch.tensor(float(a)))
            self.b = nn.Parameter(torch.tensor(float(b)))
        else:
            self.register_buffer("a", torch.tensor(float(a)))
            self.register_buffer("b", torch.tensor(float(b)))

    def _positive(self, x: torch.Tensor) -> torch.Tensor:
        if not self.learnable:
            return x
        if self.positivity == "softplus":
            return F.softplus(x) + self.min_scale
        return x.abs().clamp_min(self.min_scale)

    def values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b) as positive scalars tensors, differentiable when learnable."""
        return self._positive(self.a), self._positive(self.b)

    def extra_repr(self) -> str:
        a, b = self.values()
        kind = f"learnable, {self.positivity}" if self.learnable else "fixed"
        return f"a={float(a):.4g}, b={float(b):.4g}, {kind}"


class Compander(nn.Module):
    """Parametrization w = a * f(v / b); the latent v is the layer's `parametrizations.weight.original`."""

    def __init__(self, scale: ABScale, fn: str = "arctan", on_out_of_bound: str = "error",
                 clamp_margin: float = 1e-3, layer: str = ""):
        super().__init__()
        self.scale = scale
        self.fn_name = fn
        self.on_out_of_bound = on_out_of_bound
        self.clamp_margin = clamp_margin
        self.layer = layer

    @property
    def fn(self) -> SFunction:
        return get_function(self.fn_name)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        a, b = self.scale.values()
        return self.fn.forward(v, a, b)

    def dpsi(self, v: torch.Tensor) -> torch.Tensor:
        """Psi'(v) in closed form (no autograd), used by the decay hook and the modified Adam."""
        a, b = (t.detach() for t in self.scale.values())
        return self.fn.derivative(v, a, b)

    def bound(self) -> float:
        return self.fn.bound(float(self.scale.values()[0]))

    @torch.no_grad()
    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        """v = Psi^-1(w), computed in float64 so that Psi(v) recovers w to float32 rounding."""
        a, b = (float(t) for t in self.scale.values())
        bound = self.fn.bound(a)
        w64 = w.detach().double()
        worst = float(w64.abs().max()) if w64.numel() else 0.0
        if worst >= bound:
            if self.on_out_of_bound == "error":
                raise ReparamError(
                    f"layer {self.layer or '?'}: initial weight |w0| = {worst:.4g} >= bound {bound:.4g} "
                    f"of {self.fn_name} with a={a:g}; Psi^-1 (eq. 4) is undefined there. Use a larger a, or "
                    "on_out_of_bound='clamp' (--clamp-init) to clamp the initial weights")
            limit = (1 - self.clamp_margin) * bound
            n = int((w64.abs() >= limit).sum())
            warnings.warn(f"compander: clamped {n} initial weights of layer {self.layer or '?'} to "
                          f"|w| <= {limit:.4g} (bound {bound:.4g})", stacklevel=2)
            w64 = w64.clamp(-limit, limit)
        return self.fn.inverse(w64, a, b).to(w.dtype)

    def extra_repr(self) -> str:
        return f"fn={self.fn_name}, layer={self.layer!r}"


def _weight_layers_only(filter_fn: FilterFn | None) -> FilterFn:
    """Whatever the user's filter says, only Conv/Linear weights are parametrized (never BN, bias)."""

    def fn(module: nn.Module, name: str) -> bool:
        if not isinstance(module, WEIGHT_LAYERS):
            return False
        return True if filter_fn is None else bool(filter_fn(module, name))

    return fn


def apply(model: nn.Module, config: CompanderConfig | None = None,
          filter_fn: FilterFn | None = None) -> list[str]:
    """Register the compander on the weights of the layers `filter_fn` picks (in place).

    Returns the names of the compandered layers. Raises ReparamError if a layer is already parametrized
    or if an initial weight lies outside the bound (unless config.on_out_of_bound == "clamp").
    """
    config = (config or CompanderConfig()).validate()
    learnable = config.learnable is not None
    shared = None
    if config.learnable in (None, "coarse"):
        shared = ABScale(config.a, config.b, learnable, config.positivity, config.min_scale)

    def make(name: str, module: nn.Module) -> nn.Module:
        if parametrize.is_parametrized(module, "weight"):
            raise ReparamError(f"layer {name!r} is already parametrized; apply the compander to a plain "
                               "model")
        scale = shared if shared is not None else ABScale(config.a, config.b, True, config.positivity,
                                                          config.min_scale)
        return Compander(scale, config.fn, config.on_out_of_bound, config.clamp_margin, layer=name)

    done = register(model, make, _weight_layers_only(filter_fn))
    if not done:
        raise ReparamError("the compander filter picked no Conv/Linear layer")
    return done


def compander_layers(model: nn.Module) -> list[tuple[str, nn.Module, Compander]]:
    """(layer name, layer, its Compander) for every compandered layer, in module order."""
    out = []
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if isinstance(p, Compander):
                    out.append((name, module, p))
    return out


def latent_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The latent weights v (one per compandered layer)."""
    return [m.parametrizations.weight.original for _, m, _ in compander_layers(model)]


def scale_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Learnable a, b parameters (deduplicated; empty for fixed WC)."""
    seen: dict[int, nn.Parameter] = {}
    for _, _, c in compander_layers(model):
        for p in c.scale.parameters():
            seen.setdefault(id(p), p)
    return list(seen.values())


def learned_scales(model: nn.Module) -> dict[str, tuple[float, float]]:
    """{layer: (a, b)} as currently used (after the positivity map)."""
    return {name: tuple(float(t.detach()) for t in c.scale.values()) for name, _, c in compander_layers(model)}


def param_groups(model: nn.Module, weight_decay: float, config: CompanderConfig,
                 lr: float | None = None) -> list[dict]:
    """Optimizer groups: v decayed only in mode "v"; a, b never; everything else as the baseline.

    The rest follows the shared trainer's baseline rule (reparam.train default_param_groups): decay on
    tensors with ndim > 1 (weights of layers left plain), none on 1-d tensors (biases, BatchNorm).
    """
    v = latent_parameters(model)
    ab = scale_parameters(model)
    special = {id(p) for p in v + ab}
    rest = [p for p in model.parameters() if id(p) not in special and p.requires_grad]
    groups = [{"params": v, "weight_decay": weight_decay if config.decay_mode == "v" else 0.0,
               "name": "compander_v"}]
    if ab:
        groups.append({"params": ab, "weight_decay": 0.0, "name": "compander_ab"})
        if config.ab_lr_scale != 1.0:
            if lr is None:
                raise ReparamError("param_groups needs the base lr when ab_lr_scale != 1")
            groups[-1]["lr"] = lr * config.ab_lr_scale
    decay = [p for p in rest if p.ndim > 1]
    no_decay = [p for p in rest if p.ndim <= 1]
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay, "name": "rest"})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "name": "rest_no_decay"})
    return groups


@torch.no_grad()
def add_psi_decay_grad(model: nn.Module, weight_decay: float) -> None:
    """v.grad += wd * Psi(v) * Psi'(v): the gradient of (wd/2) * sum Psi(v)^2, i.e. decay on w = Psi(v).

    This is the same lambda convention as torch's SGD `weight_decay` (which adds wd * w to w.grad, the
    gradient of (wd/2) * ||w||^2), so fixed WC and the baseline are given the same number.
    """
    if weight_decay == 0:
        return
    for _, module, comp in compander_layers(model):
        v = module.parametrizations.weight.original
        if v.grad is None:
            v.grad = torch.zeros_like(v)
        v.grad.add_(comp(v) * comp.dpsi(v), alpha=weight_decay)


def psi_decay_penalty(model: nn.Module, weight_decay: float) -> torch.Tensor:
    """(wd/2) * sum Psi(v)^2 as a loss term; a, b are detached so the decay never reaches them."""
    total = None
    for _, module, comp in compander_layers(model):
        v = module.parametrizations.weight.original
        a, b = (t.detach() for t in comp.scale.values())
        term = comp.fn.forward(v, a, b).pow(2).sum()
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return 0.5 * weight_decay * total


def fold(model: nn.Module) -> nn.Module:
    """Replace every parametrization by its current plain weight (in place); zero inference overhead."""
    return _fold(model)


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict the un-reparameterized architecture expects (works with or without folding)."""
    out = {}
    for key, value in model.state_dict().items():
        if ".parametrizations." in key:
            continue
        out[key] = value
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for t in module.parametrizations.keys():
                out[f"{name}.{t}" if name else t] = getattr(module, t).detach()
    return out
