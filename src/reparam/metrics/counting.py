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


# Operator families, by the names torch.utils.flop_counter reports (a multiply-add counts as 2 FLOPs).
OP_FAMILIES = {
    "conv": ("aten.convolution", "aten._convolution", "aten.convolution_overrideable"),
    "linear": ("aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm"),
}


def _selected(ops: str | None) -> set[str] | None:
    if ops is None or ops == "all":
        return None
    names: set[str] = set()
    for fam in ops.split("+"):
        if fam not in OP_FAMILIES:
            raise ValueError(f"unknown op family {fam!r}; allowed: all, " + ", ".join(OP_FAMILIES)
                             + " or a '+' of them")
        names.update(OP_FAMILIES[fam])
    return names


@torch.no_grad()
def count_flops(model: torch.nn.Module, input_shape: Sequence[int], per_module: bool = False,
                ops: str | None = None, device: torch.device | str | None = None, **forward_kwargs):
    """Forward FLOPs for one input of `input_shape` (batch dim included), via torch.utils.flop_counter.

    The one FLOPs counter of reparam. A multiply-add counts as 2 FLOPs (MACs = FLOPs / 2); BatchNorm,
    activations and pooling count nothing. `ops` picks operator families: None/"all" (everything torch
    counts), "conv" (TRP's conv-only convention), "conv+linear" (MixtureGrowth's). A parametrization's
    weight generation (template mixing, PRANC's sum, ...) is computed before counting and not counted:
    the count is the network's forward pass. Works on the meta device (no memory, no compute). With
    per_module, also returns {module name: FLOPs} for the modules that ran counted ops (leaves and
    their parents, "" for the whole model).
    """
    from torch.nn.utils import parametrize

    keep = _selected(ops)
    if device is None:
        device = next((t.device for t in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    x = torch.zeros(*input_shape, device=device)
    counter = FlopCounterMode(display=False)
    try:
        with parametrize.cached():
            for m in model.modules():   # generate every parametrized weight once, outside the count
                if parametrize.is_parametrized(m):
                    for name in m.parametrizations.keys():
                        getattr(m, name)
            with counter:
                model(x, **forward_kwargs)
    finally:
        model.train(was_training)
    counts = counter.get_flop_counts()

    def total(by_op) -> int:
        return int(sum(v for op, v in by_op.items() if keep is None or str(op) in keep))

    whole = total(counts.get("Global", {}))
    if not per_module:
        return whole
    root = type(model).__name__
    per = {}
    for name, by_op in counts.items():
        if name == "Global":
            continue
        key = "" if name == root else name.removeprefix(root + ".")
        per[key] = total(by_op)
    return whole, per


def count_macs(model: torch.nn.Module, input_shape: Sequence[int], ops: str | None = None,
               device: torch.device | str | None = None, **forward_kwargs) -> int:
    """Multiply-accumulates of one forward pass (count_flops / 2)."""
    return count_flops(model, input_shape, ops=ops, device=device, **forward_kwargs) // 2
