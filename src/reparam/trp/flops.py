"""Conv-only multiply-accumulates, counted the paper's way (spec 3.1): BN, ReLU, pooling and FC excluded.

A conv with n filters, c inputs (per group), kernel kh x kw and output H' x W' costs n*c*kh*kw*H'*W'.
`conv_macs` is reparam's one counter (`metrics.count_macs`, ops="conv"); `conv_shapes` records each conv's
input and output sizes, which the paper's formulas need; `formula_macs` predicts a decomposed model's count
from the original model's shapes and the plan, and the tests check the two agree.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from reparam.metrics.counting import count_macs
from reparam.trp.decompose import LayerPlan
from reparam.trp.reshape import canonical_scheme


def conv_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, dict[str, Any]]:
    """Per Conv2d: input (H, W), output (H', W') and its own MACs, from one forward pass of zeros."""
    shapes: dict[str, dict[str, Any]] = {}
    hooks = []

    def hook(name: str):
        def fn(module: nn.Conv2d, inputs, output):
            n, cg, kh, kw = module.weight.shape
            ho, wo = output.shape[-2:]
            shapes[name] = {"in_hw": tuple(inputs[0].shape[-2:]), "out_hw": (int(ho), int(wo)),
                            "macs": int(n * cg * kh * kw * ho * wo)}
        return fn

    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            p = next(model.parameters())
            model(torch.zeros((1, *tuple(input_shape)[-3:]), dtype=p.dtype, device=p.device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return shapes


def conv_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Sum of conv MACs for one input of `input_shape` ([C, H, W] or [N, C, H, W]; batch 1 is counted)."""
    return count_macs(model, (1, *tuple(input_shape)[-3:]), ops="conv")


def layer_macs(plan: LayerPlan, scheme: str, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> int:
    """MACs of one target conv after decomposition at rank r (the spec 3.1 formulas; general stride)."""
    n, c, kh, kw = plan.shape
    ho, wo = out_hw
    if not plan.decompose:
        return n * c * kh * kw * ho * wo
    r = plan.rank
    scheme = canonical_scheme(scheme)
    if scheme == "channel":
        return r * (c * kh * kw + n) * ho * wo
    if scheme == "spatial":
        # the vertical conv keeps the input width (stride (sh, 1), no width padding); this equals the
        # paper's r*(c*kh + n*kw)*H'W' when the stride is 1 and the padding keeps the size
        return r * c * kh * ho * in_hw[1] + r * n * kw * ho * wo
    # nd: the pointwise conv runs at input resolution, the depthwise one at output resolution
    return r * (n * c * in_hw[0] * in_hw[1] + n * kh * kw * ho * wo)


def formula_macs(model: nn.Module, plans: list[LayerPlan], scheme: str, input_shape: tuple[int, ...]) -> int:
    """Predicted conv MACs of `model` (the original) decomposed as `plans`."""
    shapes = conv_shapes(model, input_shape)
    by_name = {p.name: p for p in plans}
    total = 0
    for name, v in shapes.items():
        total += layer_macs(by_name[name], scheme, v["in_hw"], v["out_hw"]) if name in by_name else v["macs"]
    return total


def speedup(original: nn.Module, decomposed: nn.Module, input_shape: tuple[int, ...]) -> dict[str, float]:
    """Conv-FLOPs speed-up the paper's way: sum over all convs before / after (FC excluded)."""
    before = conv_macs(original, input_shape)
    after = conv_macs(decomposed, input_shape)
    return {"conv_macs_before": before, "conv_macs_after": after, "flops_speedup": before / max(1, after)}
