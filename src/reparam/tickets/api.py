"""`apply` and `fold`: a ticket (binary masks) on any model, in the shape every reparam method has.

`apply(model, config, filter_fn)` draws a one-shot magnitude ticket from the model's current weights (the
paper's OMP; the weight a layer computes with, so Psi(v) after the compander or PRANC's generated weight)
or takes the masks given in the config, and registers the one mask parametrization (`MaskParam`, w = theta
* mask) on each layer. Masks compose after PRANC and the compander; TRP and MixtureGrowth are refused.
Iterative and learned tickets (IMP / A-IMP, LMP) are drawn with `reparam.tickets.draw` and applied with
`Config(masks=...)`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn
from torch.nn.utils import parametrize as tparam

from reparam.core.errors import ReparamError
from reparam.core.parametrize import FilterFn
from reparam.core.protocol import Applied, claim, report_left_dense, select, weight_tensors
from reparam.tickets import masks as mk
from reparam.tickets.config import Config
from reparam.tickets.draw import omp
from reparam.tickets.masks import fold

__all__ = ["Config", "apply", "fold"]

PRUNED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _layers(model: nn.Module, config: Config, filter_fn: FilterFn | None) -> list[tuple[str, nn.Module]]:
    """The prunable layers (`masks.prunable`: convolutions, Linear when asked, never the head) filter_fn keeps."""
    prunable = mk.prunable(first_conv=config.first_conv, linear=config.linear)
    # every module passes through `prunable` in order (it remembers the first conv), then filter_fn decides
    return [(n, m) for n, m in select(model, lambda m: True, None)
            if prunable(m, n) and (filter_fn is None or filter_fn(m, n))]


def _given(model: nn.Module, masks: Mapping[str, torch.Tensor] | str, filter_fn: FilterFn | None
           ) -> tuple[list[tuple[str, nn.Module]], mk.Masks]:
    if not isinstance(masks, Mapping):
        masks = mk.load_masks(masks)[0]
    bad = [k for k in masks if not k.endswith(".weight")]
    if bad:
        raise ReparamError(f"tickets masks must name layer weights ('<layer>.weight'), got {bad[0]!r}")
    mk.check_masks(model, masks)
    layers, kept = [], {}
    for key, m in masks.items():
        name = key[: -len(".weight")]
        module = model.get_submodule(name)
        if filter_fn is None or filter_fn(module, name):
            layers.append((name, module))
            kept[key] = m.detach().to(torch.float32)
    return layers, kept


def _not_taken(model: nn.Module, filter_fn: FilterFn | None) -> list[tuple[str, str]]:
    """Embedding / MultiheadAttention weights: masks here cover Conv and Linear weights only."""
    return [(n, "tickets mask Conv and Linear weights only") for n, m in
            select(model, lambda m: bool(weight_tensors(m)) and not isinstance(m, PRUNED), filter_fn)]


def apply(model: nn.Module, config: Config | None = None, filter_fn: FilterFn | None = None) -> Applied:
    """Mask the prunable layers `filter_fn` keeps (in place): OMP at config.sparsity, or config.masks.

    Returns the handle (layers, tensors, stored numbers, what was left dense; `extra["masks"]` holds the
    masks, `extra["sparsity"]` their exact sparsity). Raises ReparamError, leaving the model unchanged,
    when a layer already carries a method masks cannot follow (masks included) or the masks do not fit.
    """
    config = (config or Config()).validate()
    if config.masks is None:
        layers = _layers(model, config, filter_fn)
        if not layers:
            raise ReparamError("tickets found no prunable layer: convolutions are pruned, Linear layers only "
                               "with linear=True, the head never (and filter_fn must keep some)")
    else:
        layers, masks = _given(model, config.masks, filter_fn)
        if not layers:
            raise ReparamError("tickets: filter_fn dropped every layer the masks name")
    claim("tickets", [(n, m, "weight") for n, m in layers], may_follow=("pranc", "compander"))
    if config.masks is None:
        names = {n for n, _ in layers}
        masks = omp(model, config.sparsity, config.pattern, config.scope, lambda m, n: n in names)

    for name, module in layers:
        tparam.register_parametrization(module, "weight", mk.MaskParam(masks[f"{name}.weight"]))

    skipped = _not_taken(model, filter_fn)
    left, dense_total = report_left_dense("tickets", model, skipped)
    own = sum(m.parametrizations.weight.original.numel() for _, m in layers
              if isinstance(m.parametrizations.weight[0], mk.MaskParam))
    kept, total = mk.count(masks)
    what = f"masks {total:,} ({kept:,} kept, sparsity {mk.sparsity(masks):.4f})"
    if own:
        what = f"weights {own:,} + " + what
    return Applied(method="tickets", config=config, layers=[n for n, _ in layers],
                   tensors=[f"{n}.weight" if n else "weight" for n, _ in layers], stored=own + total,
                   stored_what=what, dense_params=dense_total, left_dense=left, skipped=skipped,
                   extra={"masks": {k: v.clone() for k, v in masks.items()}, "sparsity": mk.sparsity(masks)})
