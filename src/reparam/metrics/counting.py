from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (weights) of the model as it runs; buffers are not counted.

    For a parametrized layer this counts the underlying tensors (what is trained), not the weight.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_dense_params(model: torch.nn.Module) -> int:
    """Weights of the equivalent plain model: a parametrized tensor counts with the shape of the weight it
    produces, not of the tensors behind it. Parameters outside any layer's parametrization (e.g. a global
    coefficient vector) are counted as they are; such methods pass their dense count explicitly.
    """
    from torch.nn.utils import parametrize

    total = 0
    for module in model.modules():
        own = dict(module.named_parameters(recurse=False))
        total += sum(p.numel() for p in own.values())
        if parametrize.is_parametrized(module):
            total += sum(getattr(module, name).numel() for name in module.parametrizations.keys())
    # originals live in module.parametrizations.<name> (a ParametrizationList) and were counted above
    originals = sum(p.numel() for m in model.modules() if parametrize.is_parametrized(m)
                    for p in m.parametrizations.parameters())
    return total - originals


def bytes_of(tensors, bits: int = 32) -> int:
    """Bytes needed for the given tensors (or a count of numbers) at `bits` per number."""
    n = tensors if isinstance(tensors, int) else sum(t.numel() for t in tensors)
    return (n * bits + 7) // 8


@torch.no_grad()
def count_flops(model: torch.nn.Module, input_shape: Sequence[int], per_module: bool = False):
    """Forward FLOPs for one input of `input_shape` (batch dim included), via torch.utils.flop_counter.

    A multiply-add counts as 2 FLOPs (MACs = FLOPs / 2). With per_module, also returns
    {module name: FLOPs} for the leaf modules.
    """
    was_training = model.training
    model.eval()
    x = torch.zeros(*input_shape)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    model.train(was_training)
    total = counter.get_total_flops()
    if not per_module:
        return total
    per = {name.removeprefix("Global.").removeprefix("Global"): sum(v.values())
           for name, v in counter.get_flop_counts().items()}
    return total, per
