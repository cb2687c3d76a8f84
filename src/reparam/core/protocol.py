"""The one protocol every method follows: who owns a tensor, the handle `apply` returns, and folding.

Every method package exposes `Config` (a dataclass checked when built), `apply(model, config, filter_fn)`
(in place; returns an `Applied` handle) and `fold(model)` (a plain nn.Module computing the same function).

Ownership. A tensor (a layer's `weight`, `bias`, `in_proj_weight`, ...) belongs to the methods that
generate or change it: the parametrizations on it whose class names a `reparam_method`, plus methods that
act on the tensor without a parametrization (TRP projects it in place) and leave a tag. Before changing
anything, `apply` calls `claim`: a method may go on a tensor another method already holds only if it
declares that it composes after that method (`may_follow`); otherwise `apply` refuses with one line
naming both methods and the layer, and the model is left untouched. A parametrization reparam does not
know (a user's own, weight_norm, ...) is refused the same way: nothing is silently stacked.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from reparam.core.errors import ReparamError

_TAGS = "_reparam_tags"          # module attribute: {tensor name: [method, ...]} for hook-only methods
LEFT_DENSE_WARN = 0.10           # apply warns when more than this fraction of the parameters stays dense


class ReparamWarning(UserWarning):
    """Something a user should know about a model a method was applied to (e.g. layers left dense)."""


# -- ownership ----------------------------------------------------------------------------------------------
def _pruned_by_torch(module: nn.Module, tensor: str) -> bool:
    return hasattr(module, f"{tensor}_orig") and hasattr(module, f"{tensor}_mask")


def methods_on(module: nn.Module, tensor: str) -> list[str]:
    """The methods on `module.<tensor>`, innermost first ("parametrization <Class>" for a foreign one)."""
    out: list[str] = []
    if parametrize.is_parametrized(module, tensor):
        for p in module.parametrizations[tensor]:
            out.append(getattr(p, "reparam_method", None) or f"parametrization {type(p).__name__}")
    if _pruned_by_torch(module, tensor):
        out.append("torch.nn.utils.prune")
    out += getattr(module, _TAGS, {}).get(tensor, [])
    return out


def tag(module: nn.Module, tensor: str, method: str) -> None:
    """Mark `module.<tensor>` as held by a method that needs no parametrization (e.g. TRP's projection)."""
    tags = module.__dict__.setdefault(_TAGS, {})
    tags.setdefault(tensor, [])
    if method not in tags[tensor]:
        tags[tensor].append(method)


def untag(module: nn.Module, tensor: str, method: str) -> None:
    tags = module.__dict__.get(_TAGS, {})
    if method in tags.get(tensor, []):
        tags[tensor].remove(method)
        if not tags[tensor]:
            del tags[tensor]


def tagged(model: nn.Module, method: str) -> list[tuple[str, nn.Module, str]]:
    """(layer name, layer, tensor) of every tensor tagged with `method`, in module order."""
    return [(n, m, t) for n, m in model.named_modules() for t, ms in getattr(m, _TAGS, {}).items()
            if method in ms]


def claim(method: str, targets: Iterable[tuple[str, nn.Module, str]], may_follow: Sequence[str] = (),
          hint: Callable[[str], str] | None = None) -> None:
    """Refuse (one line, nothing changed) unless every (layer, module, tensor) is free for `method`.

    A tensor is free when no method holds it, or when each method on it is one `method` composes after
    (`may_follow`). `hint(other)` may add what to do instead (e.g. the order that is defined).
    """
    for name, module, tensor in targets:
        for other in methods_on(module, tensor):
            if other in may_follow:
                continue
            where = f"{name}.{tensor}" if name else tensor
            if other == method:
                msg = f"{method} is already applied to {where}; apply it once (fold the model to start again)"
            else:
                msg = (f"cannot apply {method} to {where}: it already has {other}, and {other} then {method} "
                       f"on one tensor is not defined")
                if hint is not None and hint(other):
                    msg += f"; {hint(other)}"
            raise ReparamError(msg)


# -- the tensors of a layer ---------------------------------------------------------------------------------
def weight_tensors(module: nn.Module, include_bias: bool = False) -> list[str]:
    """Names of the weight-like tensors of a layer a method can generate (empty for other modules).

    Conv1d/2d/3d and Linear: weight (+ bias); Embedding: weight; MultiheadAttention: in_proj_weight (+
    in_proj_bias), or q/k/v_proj_weight when key/value sizes differ. Its out_proj is a Linear of its own.
    """
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
        names = ["weight"] + (["bias"] if include_bias and module.bias is not None else [])
    elif isinstance(module, nn.Embedding):
        names = ["weight"]
    elif isinstance(module, nn.MultiheadAttention):
        names = (["in_proj_weight"] if module._qkv_same_embed_dim
                 else ["q_proj_weight", "k_proj_weight", "v_proj_weight"])
        if include_bias and module.in_proj_bias is not None:
            names.append("in_proj_bias")
    else:
        names = []
    return [n for n in names if getattr(module, n, None) is not None]


def inactive_parameters(model: nn.Module) -> set[str]:
    """Parameters a module stores but does not compute with in its current mode (a module lists them in
    `inactive_parameters()`, relative to itself: MixtureGrowth's other-member BatchNorm)."""
    out: set[str] = set()
    for name, module in model.named_modules():
        fn = getattr(module, "inactive_parameters", None)
        if callable(fn):
            out.update(f"{name}.{p}" if name else p for p in fn())
    return out


def dense_tensors(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Every parameter of the equivalent plain model: `layer.tensor` -> the shape the layer computes with.

    A parametrized tensor counts with the shape of the weight it produces, not of what stands behind it;
    tensors that only serve a method (coefficients, templates, a parametrization's own parameters) are
    not parameters of the plain model, nor are parameters the current mode does not use.
    """
    out: dict[str, tuple[int, ...]] = {}
    inactive = inactive_parameters(model)
    for name, module in model.named_modules():
        if isinstance(module, parametrize.ParametrizationList) or _inside_parametrization(name):
            continue
        for pname, p in module.named_parameters(recurse=False):
            key = f"{name}.{pname}" if name else pname
            if key not in inactive:
                out[key] = tuple(p.shape)
        if parametrize.is_parametrized(module):
            for t in module.parametrizations.keys():
                with torch.no_grad():
                    out[f"{name}.{t}" if name else t] = tuple(_eval_value(module, t).shape)
    return out


def _inside_parametrization(name: str) -> bool:
    return ".parametrizations." in f".{name}."


def _eval_value(module: nn.Module, tensor: str) -> torch.Tensor:
    """The tensor's value with its parametrizations in eval mode (PRANC's exact, canonical weights)."""
    plist = module.parametrizations[tensor]
    modes = [m.training for m in plist.modules()]
    plist.eval()
    try:
        return getattr(module, tensor)
    finally:
        for m, mode in zip(plist.modules(), modes):
            m.training = mode


# -- folding ------------------------------------------------------------------------------------------------
@torch.no_grad()
def bake(module: nn.Module, tensor: str) -> None:
    """Replace the whole parametrization chain of `module.<tensor>` by a plain parameter holding its value.

    The value is computed with the parametrizations in eval mode, so generated weights are the exact ones
    a file decodes to. The original Parameter object is kept (optimizers keep working) when it has the
    weight's shape and is trainable; otherwise a new trainable Parameter takes its place.
    """
    if not parametrize.is_parametrized(module, tensor):
        return
    value = _eval_value(module, tensor).detach().clone()
    original = module.parametrizations[tensor].original
    # copy.deepcopy of a parametrized module shares its generated class, and removing a parametrization
    # deletes the tensor's property from that class: give this module a class of its own first, so
    # folding a copy never breaks the model it was copied from.
    cls = type(module)
    module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
    for p in module.parametrizations[tensor]:
        release = getattr(p, "release", None)   # a parametrization holding shared state hands it on (PRANC)
        if callable(release):
            release()
    parametrize.remove_parametrizations(module, tensor, leave_parametrized=False)
    if original.shape == value.shape and original.dtype == value.dtype and original.requires_grad:
        original.copy_(value)
    else:
        delattr(module, tensor)
        module.register_parameter(tensor, nn.Parameter(value))


def bake_method(model: nn.Module, method: str) -> list[str]:
    """`bake` every tensor on which `method` is (with whatever is chained on it); drops `method`'s tags."""
    done = []
    for name, module in list(model.named_modules()):
        if _inside_parametrization(name):
            continue
        for t in list(getattr(module, "parametrizations", {}).keys()) if parametrize.is_parametrized(module) else []:
            if method in methods_on(module, t):
                bake(module, t)
                done.append(f"{name}.{t}" if name else t)
        for t in list(getattr(module, _TAGS, {})):
            untag(module, t, method)
    return done


# -- the handle ---------------------------------------------------------------------------------------------
@dataclass
class Applied:
    """What `apply` did: the layers taken, what is stored, what was left dense, the training hooks.

    hooks: objects with the reparam.train.Hook interface. In your own loop call, once per step,
        x, y = handle.before_forward(x, y)   # only methods that change the batch (PGD, noise)
        loss.backward(); handle.before_step(); optimizer.step(); handle.after_step()
    reparam's Trainer takes the same objects: Trainer(..., callbacks=handle.hooks).
    """

    method: str
    config: Any
    layers: list[str]                                   # module names taken
    tensors: list[str]                                  # "layer.tensor" generated or changed by the method
    stored: int                                         # numbers the method stores for what it took
    stored_what: str                                    # in words, e.g. "seed + 100 coefficients"
    dense_params: int                                   # parameters of the equivalent plain model
    left_dense: list[tuple[str, int]] = field(default_factory=list)   # (parameter, numbers) left dense
    skipped: list[tuple[str, str]] = field(default_factory=list)      # (layer, why the method cannot take it)
    hooks: list[Any] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def left_dense_numbers(self) -> int:
        return sum(n for _, n in self.left_dense)

    def before_forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for h in self.hooks:
            x, y = h.before_forward(x, y)
        return x, y

    def before_step(self, step: int | None = None) -> None:
        for h in self.hooks:
            h.before_step(step)

    def after_step(self, step: int | None = None) -> None:
        for h in self.hooks:
            h.after_step(step)

    def describe(self) -> str:
        frac = self.left_dense_numbers / max(1, self.dense_params)
        lines = [f"{self.method}: {len(self.layers)} layer(s), {len(self.tensors)} tensor(s); stores "
                 f"{self.stored:,} numbers ({self.stored_what}); {self.left_dense_numbers:,} of "
                 f"{self.dense_params:,} parameters left dense ({frac:.0%})"]
        for layer, why in self.skipped:
            lines.append(f"  not taken: {layer}: {why}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Applied({self.describe()})"


def left_dense(model: nn.Module) -> list[tuple[str, int]]:
    """Parameters of the plain model that no method generates or changes: (name, numbers)."""
    out = []
    for name, module in model.named_modules():
        if isinstance(module, parametrize.ParametrizationList) or _inside_parametrization(name):
            continue
        for pname, p in module.named_parameters(recurse=False):
            if not methods_on(module, pname):
                out.append((f"{name}.{pname}" if name else pname, p.numel()))
    return out


def report_left_dense(method: str, model: nn.Module, skipped: Sequence[tuple[str, str]] = ()
                      ) -> tuple[list[tuple[str, int]], int]:
    """(parameters left dense, dense total); warns (ReparamWarning) when they are more than 10% of the
    model or when a layer could not be taken, naming the largest ones."""
    dense_total = sum(int(torch.Size(s).numel()) for s in dense_tensors(model).values())
    rest = left_dense(model)
    n = sum(c for _, c in rest)
    if skipped:
        warnings.warn(f"{method} did not take {len(skipped)} layer(s): "
                      + "; ".join(f"{layer} ({why})" for layer, why in skipped[:4])
                      + (" ..." if len(skipped) > 4 else ""), ReparamWarning, stacklevel=3)
    if dense_total and n / dense_total > LEFT_DENSE_WARN:
        big = sorted(rest, key=lambda t: -t[1])[:4]
        warnings.warn(f"{method} left {n:,} of {dense_total:,} parameters dense ({n / dense_total:.0%}): "
                      + ", ".join(f"{name} ({c:,})" for name, c in big) + (" ..." if len(rest) > 4 else "")
                      + "; see reparam.summary(model)", ReparamWarning, stacklevel=3)
    return rest, dense_total


def select(model: nn.Module, candidates: Callable[[nn.Module], bool],
           filter_fn: Callable[[nn.Module, str], bool] | None) -> list[tuple[str, nn.Module]]:
    """(name, module) in module order that the method can take (`candidates`) and `filter_fn` keeps.

    Modules inside a parametrization (a method's own helpers) are never candidates.
    """
    out = []
    for name, module in model.named_modules():
        if _inside_parametrization(name) or isinstance(module, parametrize.ParametrizationList):
            continue
        if candidates(module) and (filter_fn is None or filter_fn(module, name)):
            out.append((name, module))
    return out
