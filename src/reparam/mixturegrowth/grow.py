"""Growing two trained small networks into one twice as wide (paper §3.3, Fig. 2; official `growth_update`).

Block layout of a grown conv (rows = output-channel blocks, columns = input-channel blocks), as in the
official code's `diag` growth: [[0, 2], [3, 1]]. Blocks 0 and 1 are the trained members; 2 and 3 are new
combinations of the existing templates. `layout="vertical"` (paper's better variant, code default
`--member_template_sets 0,1,0,1`) gives block 2 set 0 and block 3 set 1, so quadrants with the same output
share a set; `"horizontal"` (`0,1,1,0`) lets quadrants with the same input share one.

The stem stacks the members' output channels ([[0], [1]]); the classifier concatenates inputs ([[0, 1]]),
so the grown logits are the *sum* of the members' logits plus the contribution of the new blocks. With
coef_init="zero" the grown network therefore equals the logit-sum ensemble exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from reparam.core.errors import ReparamError, choose
from reparam.core.protocol import bake_method
from reparam.mixturegrowth.layers import (
    MemberBatchNorm2d,
    TemplateMix,
    current_member,
    is_grown,
    is_template_mixing,
    set_member,
    template_layers,
)
from reparam.models.wrn import WideResNet

LAYOUTS = {"vertical": (0, 1, 0, 1), "horizontal": (0, 1, 1, 0)}
COEF_INITS = {
    "orthogonal": "paper: unit vector orthogonal to the existing coefficients of the same template set",
    "orthogonal-code": "official code: block 2 keeps its construction-time row, block 3 = last right "
                       "singular vector of [a0; a1; a2]",
    "random": "paper: N(0, 1)",
    "random-code": "official code: U[0, 1)",
    "copy": "copy the coefficients of the member that owns the template set (+ copy_noise * unit vector)",
    "zero": "zero: the grown network equals the logit-sum ensemble of the members",
    "none": "keep the construction-time (orthogonal) rows",
}
GRID = [[0, 2], [3, 1]]


@dataclass
class GrowthInfo:
    layout: str
    coef_init: str
    fusion: bool
    layers: int = 0
    new_blocks: int = 0
    new_coefficients: dict[str, list[list[float]]] = field(default_factory=dict)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm().clamp_min(1e-12)


def _orthogonal_to(existing: list[torch.Tensor], n: int, gen: torch.Generator) -> torch.Tensor:
    """A random unit vector in the orthogonal complement of span(existing); random if the span is full."""
    v = torch.randn(n, generator=gen)
    if existing:
        a = torch.stack(existing)                                   # [m, n]
        q, r = torch.linalg.qr(a.T)                                 # columns of q span the α's
        rank = int((r.diagonal().abs() > 1e-8).sum())
        if rank < n:
            q = q[:, :rank]
            v = v - q @ (q.T @ v)
    return _unit(v)


def _init_block(p: TemplateMix, b: int, method: str, source: int, existing: list[torch.Tensor],
                all_coefs: list[torch.Tensor], scale: float, copy_noise: float,
                gen: torch.Generator) -> torch.Tensor:
    n = p.templates[p.block_to_set[b]].shape[0]
    if method == "orthogonal":
        return scale * _orthogonal_to(existing, n, gen)
    if method == "orthogonal-code":
        if b == 2 and p.reserved_rows.shape[0] > 0:
            return p.reserved_rows[0].clone()
        if len(all_coefs) >= n:
            # The code's "null-ish" direction: with 2 templates it cannot be orthogonal to 3 vectors.
            _, _, vh = torch.linalg.svd(torch.stack(all_coefs), full_matrices=True)
            return scale * vh[-1]
        return scale * _orthogonal_to(all_coefs, n, gen)
    if method == "random":
        return scale * torch.randn(n, generator=gen)
    if method == "random-code":
        return scale * torch.rand(n, generator=gen)
    if method == "copy":
        u = _unit(torch.rand(n, generator=gen))
        return p.coefs[source].detach().clone() + copy_noise * u
    if method == "zero":
        return torch.zeros(n)
    if method == "none":
        idx = b - 2
        if 0 <= idx < p.reserved_rows.shape[0]:
            return p.reserved_rows[idx].clone()
        return _unit(torch.randn(n, generator=gen))
    raise AssertionError(method)


@torch.no_grad()
def grow(model: nn.Module, layout: str = "vertical", coef_init: str = "orthogonal", *, fusion: bool = True,
         source_member: int = 0, untrained_member: bool = False, coef_scale: float = 1.0,
         copy_noise: float = 0.0, seed: int = 0) -> GrowthInfo:
    """Grow a template-mixing model in place to the full width and switch it to the grown mode.

    fusion=True (MixtureGrowth): members 0 and 1 sit on the diagonal; the off-diagonal blocks are new
    coefficient vectors over the existing template sets chosen by `layout`.
    fusion=False (paper's "w/o fusion"): only `source_member` was trained; every block of the grown layer
    uses its template set (g^2 - 1 new coefficient vectors) and the BN of the other half is padded with
    (weight 1, bias 0, mean 0, var 1). untrained_member=True is the official code's behaviour instead:
    the untrained member's templates and BN stay in block (1, 1).
    """
    choose(layout, LAYOUTS, "growth layout")
    choose(coef_init, COEF_INITS, "coefficient init")
    if not is_template_mixing(model):
        raise ReparamError("grow() needs a template-mixing model; run reparam.mixturegrowth.apply first")
    if is_grown(model):
        raise ReparamError("this network was already grown; growing twice is not supported (g = 2 only)")
    if source_member not in (0, 1):
        raise ReparamError(f"source_member must be 0 or 1, got {source_member}")
    gen = torch.Generator().manual_seed(seed)
    info = GrowthInfo(layout=layout, coef_init=coef_init, fusion=fusion)
    sets = LAYOUTS[layout]
    src = source_member
    for name, _module, p in template_layers(model):
        info.layers += 1
        g_out, g_in = p.grid_shape
        old = [c.detach().clone() for c in p.coefs]
        trainable = [c.requires_grad for c in p.coefs]
        if fusion:
            block_to_set = list(sets) if (g_out, g_in) == (2, 2) else [0, 1]
            coefs = old[:2]
            sources = {2: 0, 3: 1} if layout == "vertical" else {2: 1, 3: 0}
        else:
            keep_other = untrained_member
            n_blocks = g_out * g_in
            block_to_set = [src] * n_blocks
            coefs = [old[src]]
            if keep_other:
                block_to_set[1] = 1 - src
            sources = {b: src for b in range(1, n_blocks)}
        new_vectors = []
        for b in range(len(coefs), g_out * g_in):
            if not fusion and b == 1 and untrained_member:
                coefs.append(old[1 - src])
                continue
            p.block_to_set = block_to_set  # _init_block reads the set of block b
            same_set = [coefs[i] for i in range(len(coefs)) if block_to_set[i] == block_to_set[b]]
            v = _init_block(p, b, coef_init, sources[b] if fusion else 0, same_set, list(coefs),
                            coef_scale, copy_noise, gen)
            if coef_init == "copy" and not fusion:
                v = old[src].clone() + copy_noise * _unit(torch.rand(v.numel(), generator=gen))
            coefs.append(v.to(old[0].dtype))
            new_vectors.append(v.tolist())
            info.new_blocks += 1
        train_new = all(trainable) or (g_out, g_in) == (2, 2)
        p.coefs = nn.ParameterList([nn.Parameter(c.clone(), requires_grad=(trainable[min(i, 1)] if i < 2
                                                                            else train_new))
                                    for i, c in enumerate(coefs)])
        p.block_to_set = block_to_set
        p.grid = GRID if (g_out, g_in) == (2, 2) else ([[0], [1]] if g_out == 2 else [[0, 1]])
        if not fusion and not untrained_member:
            # The other set's templates were never trained and nothing reads them any more.
            p.templates[1 - src] = nn.Parameter(torch.empty(0), requires_grad=False)
        info.new_coefficients[name] = new_vectors
    for m in model.modules():
        if isinstance(m, MemberBatchNorm2d):
            if fusion:
                m.grow([0, 1])
            else:
                m.grow([src, (1 - src) if untrained_member else None])
    set_member(model, None)
    return info


def _fix_layer_attributes(module: nn.Module) -> None:
    w = module.weight
    if isinstance(module, nn.Conv2d):
        module.out_channels, module.in_channels = w.shape[0], w.shape[1]
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = w.shape[0], w.shape[1]


@torch.no_grad()
def fold(model: nn.Module, member: int | None = None) -> nn.Module:
    """Replace templates by the weights they generate: a plain network (in place; returns it).

    member=None folds what the model runs now: the grown network (target width) once grown, else the
    current small network; member=m folds small network m (half width).
    No parametrization, MemberBatchNorm2d or MixtureGrowth tag is left: the plain layers compute exactly
    what the template-mixing model computed in that mode.
    """
    if not is_template_mixing(model):
        raise ReparamError("fold needs a template-mixing model (reparam.mixturegrowth.apply)")
    if member is None and not is_grown(model):
        member = current_member(model)
        if member is None:
            raise ReparamError("the network has not been grown; pass member=0 or 1 to fold a small network")
    if member is not None and is_grown(model):
        raise ReparamError("members cannot be folded after growth (their BatchNorms were merged)")
    set_member(model, member)
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, MemberBatchNorm2d):
                setattr(parent, child_name, child.full if member is None else child.bns[member])
    layers = [m for _, m, _ in template_layers(model)]
    bake_method(model, "mixturegrowth")      # also drops the tags of the member BatchNorms
    for m in layers:
        _fix_layer_attributes(m)
    if isinstance(model, WideResNet):
        model.widen = model.stage_1[0].conv1.out_channels / 16
        model.feature_dim = model.head.in_features
    return model


fold_to_plain = fold
