"""Variants compared in one harness: plain, Weight Compander (fixed/learnable, arctan/asinh/erf), WN, PP.

A variant is written `name[:key=value[:key=value...]]`, e.g. `wc:a=0.8:b=0.5`, `wc:learnable=fine`,
`wc:fn=asinh`, `wc:decay=v`,
`wc-fine:ablr=0.01` (a, b at 1% of the lr), `wc:opt=madam:lr=0.003`, `pp:alpha=2`, `wn`, `plain:opt=adam:lr=0.001`.
Short aliases: wc-fine, wc-coarse, wc-asinh, wc-erf, wc-decay-v, wc-adam, wc-madam.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from reparam import compander
from reparam.compander import Config, PsiDecay, WeightStatsCallback, compander_adam, param_groups
from reparam.core import parametrize as rp
from reparam.core.errors import ReparamError
from reparam.core.parametrize import FilterFn
from reparam.experiments.compander.baselines import apply_powerprop, apply_weight_norm
from reparam.train import Callback, Hook, TrainConfig

KINDS = ("plain", "wc", "wn", "pp")
ALIASES = {
    "baseline": "plain",
    "wc-fine": "wc:learnable=fine:a=0.5:b=1.0",
    "wc-coarse": "wc:learnable=coarse:a=0.5:b=1.0",
    "wc-asinh": "wc:fn=asinh",
    "wc-erf": "wc:fn=erf",
    "wc-decay-v": "wc:decay=v",
    "wc-adam": "wc:opt=adam",
    "wc-madam": "wc:opt=madam",
}
COMMON_KEYS = {"opt": str, "lr": float}
KEYS = {
    "plain": {},
    "wn": {},
    "pp": {"alpha": float},
    "wc": {"a": float, "b": float, "fn": str, "learnable": str, "positivity": str, "decay": str,
           "clamp": int, "ablr": float},
}
OPTIMIZERS = ("sgd", "adam", "madam")


@dataclass
class Variant:
    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    text: str = ""

    @property
    def label(self) -> str:
        return self.text or self.kind


def parse_variant(text: str) -> Variant:
    """Parse `name[:k=v...]` (or an alias) into a Variant; errors name the bad part and what is allowed."""
    original = text.strip()
    first, *rest = original.split(":")
    head, *parts = ALIASES.get(first, first).split(":")
    parts += rest  # options after an alias extend or override it (wc-fine:ablr=0.1)
    if head not in KINDS:
        raise ReparamError(f"unknown variant {original!r}; allowed: {', '.join(KINDS)} or aliases "
                           f"{', '.join(ALIASES)}, with options like wc:a=0.8:b=0.5")
    allowed = {**COMMON_KEYS, **KEYS[head]}
    opts: dict[str, Any] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or key not in allowed:
            raise ReparamError(f"bad option {part!r} in variant {original!r}; allowed keys for {head}: "
                               f"{', '.join(allowed)} (as key=value)")
        try:
            opts[key] = allowed[key](value)
        except ValueError:
            raise ReparamError(f"option {key}={value!r} in variant {original!r} is not a "
                               f"{allowed[key].__name__}") from None
    if opts.get("opt", "sgd") not in OPTIMIZERS:
        raise ReparamError(f"optimizer {opts['opt']!r} in variant {original!r} not allowed; allowed: "
                           + ", ".join(OPTIMIZERS))
    if opts.get("opt") == "madam" and head != "wc":
        raise ReparamError(f"opt=madam (the modified Adam) needs a compander variant, got {original!r}")
    return Variant(head, opts, original)


def compander_config(variant: Variant, a: float = 0.8, b: float = 0.5) -> Config:
    o = variant.options
    return Config(a=o.get("a", a), b=o.get("b", b), fn=o.get("fn", "arctan"),
                  learnable=o.get("learnable"), positivity=o.get("positivity", "softplus"),
                  weight_decay=o.get("decay", "auto"), ab_lr_scale=o.get("ablr", 1.0),
                  on_out_of_bound="clamp" if o.get("clamp") else "error")


@dataclass
class Setup:
    """What the Trainer needs for one variant."""

    config: TrainConfig
    callbacks: list[Callback | Hook]
    param_groups: list[dict] | None
    optimizer: Any
    stats: WeightStatsCallback
    info: dict[str, Any]


def setup_variant(model: nn.Module, variant: Variant, config: TrainConfig, filter_fn: FilterFn | None = None,
                  a: float = 0.8, b: float = 0.5, check_every_step: bool = False) -> Setup:
    """Apply the variant to `model` (in place) and return the trainer settings."""
    cfg = copy.deepcopy(config)
    o = variant.options
    if "lr" in o:
        cfg.lr = o["lr"]
    opt = o.get("opt")
    if opt in ("sgd", "adam"):
        cfg.optimizer = opt
    cfg.validate()
    stats = WeightStatsCallback(check_every_step=check_every_step, model=model)
    callbacks: list[Callback | Hook] = [stats]
    groups = None
    optimizer = None
    info: dict[str, Any] = {"variant": variant.label, "optimizer": opt or cfg.optimizer}
    if variant.kind == "wn":
        info["layers"] = apply_weight_norm(model, filter_fn)
    elif variant.kind == "pp":
        alpha = o.get("alpha", 2.0)
        info.update(layers=apply_powerprop(model, alpha, filter_fn), alpha=alpha)
    elif variant.kind == "wc":
        wc = compander_config(variant, a, b)
        handle = compander.apply(model, wc, filter_fn)
        info.update(layers=handle.layers, a=wc.a, b=wc.b, fn=wc.fn, learnable=wc.learnable,
                    decay=wc.decay_mode, positivity=wc.positivity)
        groups = param_groups(model, cfg.weight_decay, wc, lr=cfg.lr)
        if wc.decay_mode == "psi":   # the trainer's lambda, on Psi(v) (v itself is not decayed)
            callbacks.insert(0, PsiDecay(cfg.weight_decay, model=model))
        if opt == "madam":
            optimizer = compander_adam(model, groups, lr=cfg.lr)
    return Setup(cfg, callbacks, groups, optimizer, stats, info)


def fold_variant(model: nn.Module) -> nn.Module:
    """The plain model of any variant: the compander's fold, then torch's fold for the WN/PP baselines."""
    compander.fold(model)
    return rp.fold(model)
