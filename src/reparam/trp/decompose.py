"""Split each target conv into two real convs (spec 1.6): no fine-tuning, logits equal the projected model's.

channel (NC): conv c->r with the original kernel, stride, padding and dilation, then a 1x1 conv r->n with the
    bias; sqrt(sigma) goes on each factor (official code).
spatial (VH): conv c->r with kernel (kh, 1), stride (sh, 1), padding (ph, 0), then conv r->n with kernel
    (1, kw), stride (1, sw), padding (0, pw) and the bias; all of sigma on the second factor (official code).
nd: r parallel paths, each a pointwise conv c->n then a depthwise kh x kw conv; outputs summed.
Linear (any scheme): Linear in->r without bias, then Linear r->out with the bias; sqrt(sigma) on each.

`decompose(model)` splits the layers `trp.apply` took, with their Config; `decompose_model(model, scheme,
rank, filter_fn=...)` splits the convs a filter picks in any model (the post-hoc truncated-SVD baseline).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn

from reparam.core.errors import ReparamError
from reparam.core.parametrize import FilterFn
from reparam.trp.apply import fold, layer_config, layers
from reparam.trp.project import _ranks, _svd, select_targets
from reparam.trp.rank import RankRule
from reparam.trp.reshape import canonical_scheme, max_rank

RankSpec = RankRule | str | int | list | dict


class MultiPathConv(nn.Module):
    """Network decoupling: sum over paths of depthwise(pointwise(x)); the bias sits on path 0."""

    def __init__(self, paths: list[nn.Sequential]):
        super().__init__()
        self.paths = nn.ModuleList(paths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.paths[0](x)
        for p in self.paths[1:]:
            out = out + p(x)
        return out


@dataclass
class LayerPlan:
    name: str
    shape: list[int]
    stride: list[int]
    rank: int                 # rank kept (number of paths for 'nd')
    max_rank: int
    decompose: bool
    reason: str = ""
    filter_ranks: list[int] = field(default_factory=list)  # nd only: the rule's rank per filter (all fill `rank` paths)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _split(v, n: int = 2) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def _pair_conv(conv: nn.Conv2d, c_out: int, kernel, stride, padding, dilation, bias: bool,
               c_in: int | None = None) -> nn.Conv2d:
    return nn.Conv2d(c_in if c_in is not None else conv.in_channels, c_out, kernel, stride=stride,
                     padding=padding, dilation=dilation, bias=bias, padding_mode=conv.padding_mode,
                     device=conv.weight.device, dtype=conv.weight.dtype)


def empty_decomposed(conv: nn.Conv2d | nn.Linear, scheme: str, rank: int) -> nn.Module:
    """The two-conv (or multi-path, or two-Linear) module of `scheme` and `rank` for `conv`, weights unset."""
    scheme = canonical_scheme(scheme)
    if isinstance(conv, nn.Linear):
        kw = {"device": conv.weight.device, "dtype": conv.weight.dtype}
        return nn.Sequential(nn.Linear(conv.in_features, rank, bias=False, **kw),
                             nn.Linear(rank, conv.out_features, bias=conv.bias is not None, **kw))
    n, c, kh, kw = conv.weight.shape
    has_bias = conv.bias is not None
    if scheme == "channel":
        a = _pair_conv(conv, rank, (kh, kw), conv.stride, conv.padding, conv.dilation, False)
        b = _pair_conv(conv, n, 1, 1, 0, 1, has_bias, c_in=rank)
        return nn.Sequential(a, b)
    if scheme == "spatial":
        sh, sw = _split(conv.stride)
        dh, dw = _split(conv.dilation)
        if isinstance(conv.padding, str):
            pa = pb = conv.padding
        else:
            ph, pw = _split(conv.padding)
            pa, pb = (ph, 0), (0, pw)
        a = _pair_conv(conv, rank, (kh, 1), (sh, 1), pa, (dh, 1), False)
        b = _pair_conv(conv, n, (1, kw), (1, sw), pb, (1, dw), has_bias, c_in=rank)
        return nn.Sequential(a, b)
    paths = []
    for j in range(rank):
        pw_conv = _pair_conv(conv, n, 1, 1, 0, 1, False)
        dw_conv = nn.Conv2d(n, n, (kh, kw), stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                            groups=n, bias=has_bias and j == 0, padding_mode=conv.padding_mode,
                            device=conv.weight.device, dtype=conv.weight.dtype)
        paths.append(nn.Sequential(pw_conv, dw_conv))
    return MultiPathConv(paths)


@torch.no_grad()
def decompose_conv(conv: nn.Conv2d, scheme: str, rank: RankSpec) -> tuple[nn.Module, list[int]]:
    """The decomposed module for `conv` and the rank(s) kept (one per filter for 'nd')."""
    scheme = canonical_scheme(scheme)
    if conv.groups != 1:
        raise ReparamError(f"cannot decompose a grouped conv (groups={conv.groups})")
    w = conv.weight.detach()
    n, c, kh, kw = w.shape
    u, s, vh = _svd(w, scheme)
    rule = _as_rule(rank)
    if isinstance(rule, list):
        if len(rule) != (n if scheme == "nd" else 1):
            raise ReparamError(f"got {len(rule)} ranks for a conv with {n} filters under scheme {scheme!r}")
        ranks = [max(1, min(int(k), s.shape[-1])) for k in rule]
    elif isinstance(rule, int):
        ranks = [max(1, min(rule, s.shape[-1]))] * (n if scheme == "nd" else 1)
    else:
        ranks = _ranks(s, rule)
    r = max(ranks)
    mod = empty_decomposed(conv, scheme, r)
    bias = conv.bias.detach() if conv.bias is not None else None
    if scheme == "channel":
        root = s[:r].sqrt()
        mod[0].weight.copy_((root[:, None] * vh[:r]).reshape(r, c, kh, kw))
        mod[1].weight.copy_((u[:, :r] * root).reshape(n, r, 1, 1))
        if bias is not None:
            mod[1].bias.copy_(bias)
    elif scheme == "spatial":
        # M = V diag(s) H^T with M of shape (c*kh) x (n*kw)
        mod[0].weight.copy_(u[:, :r].reshape(c, kh, r).permute(2, 0, 1).unsqueeze(-1))
        mod[1].weight.copy_((s[:r, None] * vh[:r]).reshape(r, n, kw).permute(1, 0, 2).unsqueeze(2))
        if bias is not None:
            mod[1].bias.copy_(bias)
    else:
        # every filter fills all r paths (the official network_decouple does): a path exists for the filter
        # with the largest rank anyway, so the extra singular values cost nothing and only reduce the error
        root = s[:, :r].sqrt()                       # [n, r]
        for j, path in enumerate(mod.paths):
            path[0].weight.copy_((u[:, :, j] * root[:, j:j + 1]).reshape(n, c, 1, 1))
            path[1].weight.copy_((vh[:, j, :] * root[:, j:j + 1]).reshape(n, 1, kh, kw))
        if bias is not None:
            mod.paths[0][1].bias.copy_(bias)
    return mod, ranks


@torch.no_grad()
def decompose_linear(linear: nn.Linear, rank: RankSpec) -> tuple[nn.Sequential, list[int]]:
    """Linear(in, out) -> Linear(in, r, no bias) then Linear(r, out, bias): the rank-r truncated SVD."""
    u, s, vh = torch.linalg.svd(linear.weight.detach(), full_matrices=False)
    rule = _as_rule(rank)
    if isinstance(rule, list):
        if len(rule) != 1:
            raise ReparamError(f"got {len(rule)} ranks for a Linear layer (it takes one)")
        rule = rule[0]
    r = max(1, min(int(rule), s.numel())) if isinstance(rule, int) else rule(s)
    mod = empty_decomposed(linear, "channel", r)
    root = s[:r].sqrt()
    mod[0].weight.copy_(root[:, None] * vh[:r])
    mod[1].weight.copy_(u[:, :r] * root)
    if linear.bias is not None:
        mod[1].bias.copy_(linear.bias.detach())
    return mod, [r]


def _as_rule(rank: RankSpec):
    if isinstance(rank, (RankRule, int)):
        return rank
    if isinstance(rank, (list, tuple)):
        return [int(k) for k in rank]
    if isinstance(rank, str):
        return RankRule.parse(rank)
    raise ReparamError(f"rank must be a rule like 'value:0.05', an int or a dict per layer, got {rank!r}")


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _decompose_layers(out: nn.Module, layers: list[tuple[str, nn.Module]], scheme: str, rank: RankSpec,
                      only_stride1: bool) -> list[LayerPlan]:
    """Replace each layer of `out` by its decomposition; one plan row per layer."""
    plans = []
    for name, layer in layers:
        shape = list(layer.weight.shape)
        stride = list(_split(layer.stride)) if isinstance(layer, nn.Conv2d) else []
        mr = max_rank(layer.weight.shape, scheme)
        if only_stride1 and stride not in ([1, 1], []):
            plans.append(LayerPlan(name, shape, stride, mr, mr, False, "stride != 1"))
            continue
        spec = rank[name] if isinstance(rank, dict) else rank
        if spec is None:
            plans.append(LayerPlan(name, shape, stride, mr, mr, False, "no rank given"))
            continue
        if isinstance(layer, nn.Linear):
            mod, ranks = decompose_linear(layer, spec)
        else:
            mod, ranks = decompose_conv(layer, scheme, spec)
        _set_module(out, name, mod)
        plans.append(LayerPlan(name, shape, stride, max(ranks), mr, True,
                               filter_ranks=ranks if scheme == "nd" and stride else []))
    return plans


def decompose(model: nn.Module, rule: RankSpec | None = None, *, scheme: str | None = None,
              only_stride1: bool | None = None, inplace: bool = False) -> tuple[nn.Module, list[LayerPlan]]:
    """Split every layer `trp.apply` took into two (Conv2d: two convs; Linear: two Linears), no fine-tuning.

    Returns (a plain model with no TRP marks, one LayerPlan per TRP layer). rule: the rank rule (default:
    the Config's decompose_rule, 'value:0.05' for TRP-trained models), a fixed int, or {layer: rank} (e.g.
    the hook's last_ranks). scheme and only_stride1 default to the Config's. The decomposed model computes
    what the projected one does (to float rounding). The original is left as it is unless inplace.
    """
    if not layers(model):
        raise ReparamError("the model has no TRP layers; call trp.apply first (or decompose_model(model, "
                           "scheme, rank) for a model trained without TRP)")
    out = model if inplace else copy.deepcopy(model)
    plans = []
    for name, layer in layers(out):     # each layer with the Config it was applied with (apply may run twice)
        cfg = layer_config(layer)
        plans += _decompose_layers(out, [(name, layer)], canonical_scheme(scheme or cfg.scheme),
                                   cfg.decompose_rule if rule is None else rule,
                                   cfg.only_stride1 if only_stride1 is None else only_stride1)
    return fold(out), plans


def decompose_model(model: nn.Module, scheme: str, rank: RankSpec = "value:0.05", *,
                    filter_fn: FilterFn | None = None, skip_stem: bool = True, only_stride1: bool = True,
                    inplace: bool = False) -> tuple[nn.Module, list[LayerPlan]]:
    """Replace every conv `select_targets` picks by its decomposition, in any model (TRP-trained or not:
    the post-hoc truncated-SVD baseline). Returns (new model, one plan row per target).

    rank: a rule ('value:0.05' for TRP-trained models, 'energy:0.15' for post-hoc baselines), a fixed int,
    or a dict {layer name: rank} (e.g. the ranks the last TRP projection kept). only_stride1 leaves convs
    with a stride other than 1 undecomposed, as the official code does.
    """
    scheme = canonical_scheme(scheme)
    out = model if inplace else copy.deepcopy(model)
    return out, _decompose_layers(out, select_targets(out, filter_fn, skip_stem), scheme, rank, only_stride1)


def skeleton(model: nn.Module, scheme: str, plans: list[LayerPlan]) -> nn.Module:
    """Rebuild a decomposed architecture (weights unset) from its plan, to load a saved decomposed model."""
    out = copy.deepcopy(model)
    for p in plans:
        if not p.decompose:
            continue
        try:
            conv = out.get_submodule(p.name)
        except AttributeError:
            raise ReparamError(f"the model has no layer {p.name!r} named in the decomposition plan") from None
        kind = nn.Linear if len(p.shape) == 2 else nn.Conv2d
        if not isinstance(conv, kind) or list(conv.weight.shape) != list(p.shape):
            raise ReparamError(f"layer {p.name!r} does not match the plan "
                               f"(expected a {kind.__name__} of shape {p.shape})")
        _set_module(out, p.name, empty_decomposed(conv, scheme, p.rank))
    return out


def plans_from_dicts(rows: list[dict[str, Any]]) -> list[LayerPlan]:
    return [LayerPlan(**r) for r in rows]
