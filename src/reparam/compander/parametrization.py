"""The Weight Compander parametrization w = a * f(v / b), and the helpers that train through it.

A `Compander` sits on one weight tensor (a Conv/Linear/Embedding weight, MultiheadAttention's input
projections). When it is the tensor's first parametrization its latent v is the tensor's `original`, set at
registration by `right_inverse` to v0 = Psi^-1(w0) (paper eq. 4) from the model's own initialization, so the
network computes the same function right after `apply` (to float32 rounding). When it follows PRANC it maps
the generated weight theta (w = Psi(theta)): it bounds what PRANC generates and has no v of its own; PRANC's
coefficients are what is trained. `apply` and `fold` live in `reparam.compander.api`.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from reparam.compander.config import DECAY_MODES, LEARNABLE, OUT_OF_BOUND, POSITIVITY, CompanderConfig, Config
from reparam.compander.functions import SFunction, get_function
from reparam.core.errors import ReparamError

__all__ = ["ABScale", "Compander", "CompanderConfig", "Config", "DECAY_MODES", "LEARNABLE", "OUT_OF_BOUND",
           "POSITIVITY", "add_psi_decay_grad", "compander_input", "compander_layers", "compander_tensors",
           "latent_parameters", "learned_scales", "param_groups", "plain_state_dict", "psi_decay_penalty",
           "scale_parameters"]


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
    """Parametrization w = a * f(x / b) of one tensor; x is the latent v (or, after PRANC, its weight)."""

    reparam_method = "compander"

    def __init__(self, scale: ABScale, fn: str = "arctan", on_out_of_bound: str = "error",
                 clamp_margin: float = 1e-3, layer: str = "", shared: bool = False):
        super().__init__()
        self.scale = scale
        self.fn_name = fn
        self.on_out_of_bound = on_out_of_bound
        self.clamp_margin = clamp_margin
        self.layer = layer
        self.shared = shared     # the same (a, b) serves every compandered tensor (fixed and coarse WC)

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

    def shared_storage(self) -> list[tuple[str, torch.Tensor]]:
        """The (a, b) this parametrization shares with the others (reparam.summary counts them once)."""
        return [("scale.a", self.scale.a), ("scale.b", self.scale.b)] if self.shared else []

    @torch.no_grad()
    def check(self, w: torch.Tensor) -> None:
        """Raise (on_out_of_bound "error") when an initial |w0| reaches the bound, where eq. 4 is undefined."""
        if self.on_out_of_bound != "error" or not w.numel():
            return
        a = float(self.scale.values()[0])
        bound = self.fn.bound(a)
        worst = float(w.detach().double().abs().max())
        if worst >= bound:
            raise ReparamError(
                f"layer {self.layer or '?'}: initial weight |w0| = {worst:.4g} >= bound {bound:.4g} "
                f"of {self.fn_name} with a={a:g}; Psi^-1 (eq. 4) is undefined there. Use a larger a, or "
                "on_out_of_bound='clamp' (--clamp-init) to clamp the initial weights")

    @torch.no_grad()
    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        """v = Psi^-1(w), computed in float64 so that Psi(v) recovers w to float32 rounding."""
        self.check(w)
        a, b = (float(t) for t in self.scale.values())
        bound = self.fn.bound(a)
        w64 = w.detach().double()
        worst = float(w64.abs().max()) if w64.numel() else 0.0
        if worst >= bound:
            limit = (1 - self.clamp_margin) * bound
            n = int((w64.abs() >= limit).sum())
            warnings.warn(f"compander: clamped {n} initial weights of layer {self.layer or '?'} to "
                          f"|w| <= {limit:.4g} (bound {bound:.4g})", stacklevel=2)
            w64 = w64.clamp(-limit, limit)
        return self.fn.inverse(w64, a, b).to(w.dtype)

    def extra_repr(self) -> str:
        return f"fn={self.fn_name}, layer={self.layer!r}"


# -- finding the compandered tensors -------------------------------------------------------------------------
def compander_tensors(model: nn.Module) -> list[tuple[str, nn.Module, str, Compander]]:
    """(layer name, layer, tensor name, its Compander) for every compandered tensor, in module order."""
    out = []
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for t, plist in module.parametrizations.items():
                out += [(name, module, t, p) for p in plist if isinstance(p, Compander)]
    return out


def compander_layers(model: nn.Module) -> list[tuple[str, nn.Module, Compander]]:
    """(layer name, layer, its Compander) for every layer whose `weight` is compandered, in module order."""
    return [(name, module, comp) for name, module, t, comp in compander_tensors(model) if t == "weight"]


def _owns_latent(module: nn.Module, tensor: str, comp: Compander) -> bool:
    """True when the compander is the tensor's first parametrization, so `original` is its latent v."""
    return module.parametrizations[tensor][0] is comp


def compander_input(module: nn.Module, tensor: str, comp: Compander) -> torch.Tensor:
    """What the compander maps: its latent v, or the output of the parametrizations before it (PRANC's
    generated weight), computed with autograd so gradients reach what stands behind it."""
    plist = module.parametrizations[tensor]
    if plist[0] is comp:
        return plist.original
    if plist.is_tensor:
        x = plist[0](plist.original)
    else:
        x = plist[0](*(getattr(plist, f"original{i}") for i in range(plist.ntensors)))
    for p in list(plist)[1:]:
        if p is comp:
            return x
        x = p(x)
    raise ReparamError(f"the compander is not on {tensor!r} of this layer")   # not reached for a listed comp


def latent_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The latent weights v (one per compandered tensor it owns; none for a compander after PRANC)."""
    return [m.parametrizations[t].original for _, m, t, c in compander_tensors(model) if _owns_latent(m, t, c)]


def scale_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Learnable a, b parameters (deduplicated; empty for fixed WC)."""
    seen: dict[int, nn.Parameter] = {}
    for _, _, _, c in compander_tensors(model):
        for p in c.scale.parameters():
            seen.setdefault(id(p), p)
    return list(seen.values())


def learned_scales(model: nn.Module) -> dict[str, tuple[float, float]]:
    """{layer: (a, b)} as currently used (after the positivity map)."""
    return {name: tuple(float(t.detach()) for t in c.scale.values()) for name, _, _, c in compander_tensors(model)}


def param_groups(model: nn.Module, weight_decay: float | None = None, config: Config | None = None,
                 lr: float | None = None) -> list[dict]:
    """Optimizer groups: v decayed only in mode "v"; a, b never; everything else as the baseline.

    weight_decay defaults to config.wd. The rest follows the shared trainer's baseline rule (reparam.train
    default_param_groups): decay on tensors with ndim > 1 (weights of layers left plain), none on 1-d
    tensors (biases, BatchNorm, PRANC's coefficients).
    """
    config = config or Config()
    weight_decay = config.wd if weight_decay is None else weight_decay
    v = latent_parameters(model)
    ab = scale_parameters(model)
    special = {id(p) for p in v + ab}
    rest = [p for p in model.parameters() if id(p) not in special and p.requires_grad]
    groups = []
    if v:
        groups.append({"params": v, "weight_decay": weight_decay if config.decay_mode == "v" else 0.0,
                       "name": "compander_v"})
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


# -- weight decay on w = Psi(v) ------------------------------------------------------------------------------
@torch.no_grad()
def add_psi_decay_grad(model: nn.Module, weight_decay: float) -> None:
    """v.grad += wd * Psi(v) * Psi'(v): the gradient of (wd/2) * sum Psi(v)^2, i.e. decay on w = Psi(v).

    This is the same lambda convention as torch's SGD `weight_decay` (which adds wd * w to w.grad, the
    gradient of (wd/2) * ||w||^2), so fixed WC and the baseline are given the same number. A compander
    after PRANC has no v: the same penalty is back-propagated to what generates its input.
    """
    if weight_decay == 0:
        return
    chained = []
    for _, module, t, comp in compander_tensors(model):
        if not _owns_latent(module, t, comp):
            chained.append((module, t, comp))
            continue
        v = module.parametrizations[t].original
        if v.grad is None:
            v.grad = torch.zeros_like(v)
        v.grad.add_(comp(v) * comp.dpsi(v), alpha=weight_decay)
    if chained:
        with torch.enable_grad():
            (0.5 * weight_decay * sum(_psi_sq(m, t, c) for m, t, c in chained)).backward()


def _psi_sq(module: nn.Module, tensor: str, comp: Compander) -> torch.Tensor:
    a, b = (t.detach() for t in comp.scale.values())     # the decay never reaches a and b
    return comp.fn.forward(compander_input(module, tensor, comp), a, b).pow(2).sum()


def psi_decay_penalty(model: nn.Module, weight_decay: float) -> torch.Tensor:
    """(wd/2) * sum Psi(v)^2 as a loss term; a, b are detached so the decay never reaches them."""
    total = None
    for _, module, t, comp in compander_tensors(model):
        term = _psi_sq(module, t, comp)
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return 0.5 * weight_decay * total


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


def __getattr__(name: str):
    # `apply` and `fold` moved to reparam.compander.api; the old import path works for one release.
    if name in ("apply", "fold"):
        from reparam.compander import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
