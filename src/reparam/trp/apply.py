"""`trp.apply`: choose the layers, claim their weights, project once; `trp.fold`: let them go.

TRP needs no parametrization: it trains the plain weights and projects them in place every m steps (the
hook), so it marks each weight with a tag (`reparam.core.protocol.tag`) and keeps its Config on the layer
for `trp.decompose`. No other method may go on a TRP weight, and TRP goes on no other method's.
"""

from __future__ import annotations

import torch.nn as nn

from reparam.core.errors import ReparamError
from reparam.core.parametrize import FilterFn
from reparam.core.protocol import Applied, claim, report_left_dense, select, tag, tagged, untag, weight_tensors
from reparam.trp.config import Config

CONFIG_ATTR = "_reparam_trp_config"   # module __dict__ entry: the Config a TRP layer was applied with


def _stem(model: nn.Module) -> str | None:
    """The first Conv2d in module order (the official code leaves it alone)."""
    return next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def _default_pick(module: nn.Module, name: str) -> bool:
    """The official code's look-up table: every Conv2d whose kernel is not 1x1 (grouped ones are then
    reported as not taken)."""
    return isinstance(module, nn.Conv2d) and tuple(module.kernel_size) != (1, 1)


def _why_not(module: nn.Module) -> str:
    """Why TRP cannot take a layer ('' when it can)."""
    if isinstance(module, nn.Conv2d):
        return "" if module.groups == 1 else (f"grouped conv (groups={module.groups}); TRP decomposes "
                                              "ungrouped convs only")
    if isinstance(module, nn.Linear):
        return ""
    return f"{type(module).__name__}: TRP takes Conv2d and Linear layers only"


def choose(model: nn.Module, filter_fn: FilterFn | None = None, skip_stem: bool = True
           ) -> tuple[list[tuple[str, nn.Module]], list[tuple[str, str]]]:
    """(layers TRP takes, [(layer, why not)] for those the filter picked that it cannot take).

    Without filter_fn: every Conv2d with a kernel larger than 1x1; with one: the weight layers (Conv, Linear,
    Embedding, MultiheadAttention) it keeps. The stem is left out either way when skip_stem is set.
    """
    stem = _stem(model) if skip_stem else None
    pick = filter_fn or _default_pick
    taken, skipped = [], []
    for name, module in select(model, lambda m: bool(weight_tensors(m)), None):
        if name == stem or not pick(module, name):
            continue
        why = _why_not(module)
        if why:
            skipped.append((name, why))
        else:
            taken.append((name, module))
    return taken, skipped


def apply(model: nn.Module, config: Config | None = None, filter_fn: FilterFn | None = None) -> Applied:
    """Put TRP on `model` in place; returns the handle whose `hooks` ([TRPHook]) do the training-time work.

    With counter='global' the targets are projected once here (step 0 starts from D(W_0), and the model
    is exactly low-rank from now on at every multiple of m); with counter='epoch' the hook projects at
    the first batch. Refuses (ReparamError, the model untouched) when no layer can be taken or when a
    chosen weight already carries a method (TRP composes with none).
    """
    from reparam.trp.hooks import TRPHook  # the hook interface lives with the trainer; load it on use

    config = Config() if config is None else config
    if not isinstance(config, Config):
        raise ReparamError(f"config must be a reparam.trp.Config, got {type(config).__name__}")
    taken, skipped = choose(model, filter_fn, config.skip_stem)
    if not taken:
        why = "; ".join(f"{n} ({w})" for n, w in skipped[:4])
        raise ReparamError("the model has no eligible layers for TRP (Conv2d with a kernel larger than 1x1, "
                           "other than the stem, or a Linear picked by filter_fn)" + (f"; not taken: {why}" if why
                                                                                      else ""))
    claim("trp", [(name, m, "weight") for name, m in taken], may_follow=())
    for _, module in taken:
        tag(module, "weight", "trp")
        module.__dict__[CONFIG_ATTR] = config
    hook = TRPHook(taken, config)
    if config.counter == "global":
        hook.project_at_start()
    rest, dense_total = report_left_dense("trp", model, skipped)
    weights = sum(m.weight.numel() for _, m in taken)
    return Applied(method="trp", config=config, layers=[n for n, _ in taken],
                   tensors=[f"{n}.weight" for n, _ in taken], stored=weights,
                   stored_what="the weights themselves, kept low-rank; trp.decompose stores the two factors",
                   dense_params=dense_total, left_dense=rest, skipped=skipped, hooks=[hook])


def layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every layer TRP was applied to, in module order."""
    return [(n, m) for n, m, t in tagged(model, "trp") if t == "weight"]


def layer_config(module: nn.Module) -> Config:
    return module.__dict__[CONFIG_ATTR]


def fold(model: nn.Module) -> nn.Module:
    """The plain model: TRP trains plain weights, so this only removes TRP's marks (same function)."""
    for _, module in layers(model):
        untag(module, "weight", "trp")
        module.__dict__.pop(CONFIG_ATTR, None)
    return model
