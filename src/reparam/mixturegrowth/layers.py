"""Template-mixing layers (paper §3.1, Eq. 1) as parametrizations, and member-aware BatchNorm.

A selected Conv2d/Linear of a *target-width* network gets a `TemplateMix` parametrization of its weight.
The target weight is a g x g grid of blocks (g = 2); block b is

    W_b = einsum('j,j...->...', alpha[b], templates[block_to_set[b]])

Before growth only the two diagonal blocks exist: block m is small network `member` m (its template set
is m). The stem keeps its full input (grid 2 x 1) and the classifier its full output (grid 1 x 2), so
member m's stem reads all image channels and its classifier returns all logits. `grow()` adds the
off-diagonal blocks (ids 2, 3 in the official code's `diag` layout [[0, 2], [3, 1]]) and switches every
layer to the grown mode, `member=None`.

The layer's own dense weight is replaced by an empty tensor: only templates and coefficients are stored.
`fold_to_plain` turns a grown model back into the plain network of target width.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn.utils import parametrize as tparam

from reparam.core import parametrize as rp
from reparam.core.errors import ReparamError


@dataclass
class MixtureGrowthConfig:
    """How `apply` builds the template-mixing network.

    n_templates: templates per set (paper: 2; with g=2, 2 sets x 2 templates = the full layer's parameters).
    share_templates: paper's cross-layer sharing; pairs of consecutive same-shape layers share template
        tensors and keep their own coefficients (the CIFAR code default is no sharing).
    train_end_coefs: the stem's and classifier's coefficients are trainable (official no-bank code);
        the paper (default, False) keeps them fixed at their initial values.
    full_input / full_output: layer names that keep their full input (stem) / full output (classifier);
        None = the first / last selected layer.
    """

    g: int = 2
    n_templates: int = 2
    share_templates: bool = False
    train_end_coefs: bool = False
    full_input: tuple[str, ...] | None = None
    full_output: tuple[str, ...] | None = None


def _kaiming_templates(n: int, block_shape: tuple[int, ...]) -> torch.Tensor:
    t = torch.empty(n, *block_shape)
    for j in range(n):
        # Each template on its own: kaiming on the stacked [n, ...] tensor would use the wrong fan-in.
        nn.init.kaiming_normal_(t[j], mode="fan_in", nonlinearity="relu")
    return t


class TemplateMix(nn.Module):
    """Parametrization: (templates, coefficients) -> the weight of one member, or of the grown layer."""

    def __init__(self, block_shape: tuple[int, ...], grid: tuple[int, int], n_templates: int = 2,
                 num_sets: int = 2, share_from: TemplateMix | None = None):
        super().__init__()
        self.block_shape = tuple(block_shape)
        self.grid_shape = tuple(grid)           # (g_out, g_in) of the grown layer
        if share_from is not None:
            if share_from.block_shape != self.block_shape:
                raise ReparamError("template sharing needs layers of the same shape")
            self.templates = nn.ParameterList(list(share_from.templates))
        else:
            self.templates = nn.ParameterList(
                [nn.Parameter(_kaiming_templates(n_templates, self.block_shape)) for _ in range(num_sets)])
        n_blocks = self.grid_shape[0] * self.grid_shape[1]
        rows = torch.empty(max(n_blocks, 2), n_templates)
        nn.init.orthogonal_(rows)                # soft-sharing's construction-time coefficient init
        self.coefs = nn.ParameterList([nn.Parameter(rows[m].clone()) for m in range(num_sets)])
        # Rows the official code gives the off-diagonal blocks at construction (its `orthogonal` growth
        # keeps block 2's row); kept for the code variant of the orthogonal init.
        self.register_buffer("reserved_rows", rows[num_sets:].clone(), persistent=False)
        self.block_to_set: list[int] = list(range(num_sets))
        self.grid: list[list[int]] | None = None  # set by grow()
        self.member: int | None = 0
        self.shared = share_from is not None

    @property
    def grown(self) -> bool:
        return self.grid is not None

    def block_weight(self, b: int) -> torch.Tensor:
        return torch.einsum("j,j...->...", self.coefs[b], self.templates[self.block_to_set[b]])

    def forward(self, _original: torch.Tensor) -> torch.Tensor:
        if self.member is not None:
            if self.member >= len(self.templates) or self.member >= len(self.coefs):
                raise ReparamError(f"member {self.member} does not exist; this layer has "
                                   f"{len(self.templates)} template sets")
            return self.block_weight(self.member)
        if self.grid is None:
            raise ReparamError("the network has not been grown yet; run a member (0 or 1) or call grow()")
        rows = [torch.cat([self.block_weight(b) for b in row], dim=1) for row in self.grid]
        return torch.cat(rows, dim=0)

    def extra_repr(self) -> str:
        return (f"block_shape={self.block_shape}, grid={self.grid_shape}, sets={len(self.templates)}, "
                f"templates={self.templates[0].shape[0]}, grown={self.grown}, shared={self.shared}")


class MemberBatchNorm2d(nn.Module):
    """One BatchNorm per template set (each of half the target width); grows by concatenation."""

    def __init__(self, num_features: int, num_sets: int = 2, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        if num_features % num_sets:
            raise ReparamError(f"BatchNorm width {num_features} is not divisible by {num_sets} sets")
        self.num_features = num_features
        self.bns = nn.ModuleList([nn.BatchNorm2d(num_features // num_sets, eps=eps, momentum=momentum)
                                  for _ in range(num_sets)])
        self.full: nn.BatchNorm2d | None = None
        self.member: int | None = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.member is None:
            if self.full is None:
                raise ReparamError("the network has not been grown yet; run a member or call grow()")
            return self.full(x)
        if self.bns is None:
            raise ReparamError("members cannot run after growth: their BatchNorms were merged")
        return self.bns[self.member](x)

    @torch.no_grad()
    def grow(self, sources: list[int | None]) -> None:
        """Concatenate the per-set BNs in channel-block order; a None source is padded (1, 0, 0, 1)."""
        half = self.num_features // len(self.bns)
        ref = self.bns[0]
        full = nn.BatchNorm2d(self.num_features, eps=ref.eps, momentum=ref.momentum)
        for field, pad in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            parts = [getattr(self.bns[s], field).detach().clone() if s is not None
                     else torch.full((half,), pad) for s in sources]
            getattr(full, field).copy_(torch.cat(parts))
        full.num_batches_tracked.copy_(max(int(b.num_batches_tracked) for b in self.bns))
        full.train(self.training)
        self.full = full
        self.bns = None
        self.member = None


def template_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module, TemplateMix]]:
    for name, module in model.named_modules():
        if tparam.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if isinstance(p, TemplateMix):
                    yield name, module, p


def is_template_mixing(model: nn.Module) -> bool:
    return any(True for _ in template_layers(model))


def is_grown(model: nn.Module) -> bool:
    return any(p.grown for _, _, p in template_layers(model))


def set_member(model: nn.Module, member: int | None) -> None:
    """Run small network `member` (0, 1, ...) or the grown network (None) from now on."""
    for m in model.modules():
        if isinstance(m, (TemplateMix, MemberBatchNorm2d)):
            m.member = member


def current_member(model: nn.Module) -> int | None:
    for m in model.modules():
        if isinstance(m, (TemplateMix, MemberBatchNorm2d)):
            return m.member
    return None


@contextmanager
def member_mode(model: nn.Module, member: int | None):
    old = current_member(model)
    set_member(model, member)
    try:
        yield model
    finally:
        set_member(model, old)


def _layer_dims(module: nn.Module) -> tuple[int, int, tuple[int, ...]]:
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise ReparamError("template mixing supports only ungrouped convolutions")
        return module.out_channels, module.in_channels, tuple(module.kernel_size)
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features, ()
    raise ReparamError(f"template mixing supports Conv2d and Linear layers, not {type(module).__name__}")


def apply(model: nn.Module, config: MixtureGrowthConfig | None = None,
          filter_fn: rp.FilterFn | None = None) -> nn.Module:
    """Turn a plain target-width network into a template-mixing one (in place; returns it).

    Every selected Conv2d/Linear gets a TemplateMix parametrization; every BatchNorm2d becomes a
    MemberBatchNorm2d. Afterwards the model runs member 0 (set_member / member_mode switch).
    """
    config = config or MixtureGrowthConfig()
    if config.g != 2:
        raise ReparamError(f"growth factor g={config.g} is not supported; allowed: 2 (the paper's setting)")
    if config.n_templates < 1:
        raise ReparamError(f"n_templates must be >= 1, got {config.n_templates}")
    if is_template_mixing(model):
        raise ReparamError("the model already has template-mixing layers")
    layers = [(n, m) for n, m in rp.select_layers(model, filter_fn) if isinstance(m, (nn.Conv2d, nn.Linear))]
    if len(layers) < 2:
        raise ReparamError("template mixing needs at least a first and a last Conv2d/Linear layer")
    full_in = set(config.full_input) if config.full_input is not None else {layers[0][0]}
    full_out = set(config.full_output) if config.full_output is not None else {layers[-1][0]}
    g = config.g
    prev: TemplateMix | None = None
    prev_shared = False
    for name, module in layers:
        c_out, c_in, k = _layer_dims(module)
        g_out = 1 if name in full_out else g
        g_in = 1 if name in full_in else g
        if c_out % g_out or c_in % g_in:
            raise ReparamError(f"layer {name!r} ({c_out}x{c_in}) is not divisible into {g}x{g} blocks")
        if getattr(module, "bias", None) is not None:
            raise ReparamError(f"layer {name!r} has a bias; template-mixing layers have none (paper §3.1)")
        block = (c_out // g_out, c_in // g_in, *k)
        share = None
        if (config.share_templates and prev is not None and not prev_shared and g_out == g_in == g
                and prev.block_shape == block and prev.grid_shape == (g, g)):
            share = prev
        p = TemplateMix(block, (g_out, g_in), config.n_templates, num_sets=g, share_from=share)
        if (g_out == 1 or g_in == 1) and not config.train_end_coefs:
            for c in p.coefs:
                c.requires_grad_(False)
        # Only templates and coefficients are stored: drop the dense weight.
        module.weight = nn.Parameter(torch.empty(0), requires_grad=False)
        tparam.register_parametrization(module, "weight", p, unsafe=True)
        prev, prev_shared = p, share is not None
    _replace_bns(model, g)
    set_member(model, 0)
    return model


def _replace_bns(model: nn.Module, num_sets: int) -> None:
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                mbn = MemberBatchNorm2d(child.num_features, num_sets, eps=child.eps, momentum=child.momentum)
                setattr(parent, child_name, mbn)


def coefficient_parameters(model: nn.Module) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for _, _, p in template_layers(model):
        for c in p.coefs:
            seen.setdefault(id(c), c)
    return list(seen.values())


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Optimizer groups: weight decay on templates and BN, none on coefficients (soft-sharing, paper)."""
    coef_ids = {id(c) for c in coefficient_parameters(model)}
    coefs = [p for p in model.parameters() if id(p) in coef_ids and p.requires_grad]
    rest = [p for p in model.parameters() if id(p) not in coef_ids and p.requires_grad]
    return [{"params": rest, "weight_decay": weight_decay}, {"params": coefs, "weight_decay": 0.0}]


def stored_parameter_count(model: nn.Module) -> int:
    """Trainable-or-fixed parameters actually stored (templates, coefficients, BN), shared ones once."""
    return sum(p.numel() for p in model.parameters())


def template_parameter_count(p: TemplateMix) -> int:
    return sum(t.numel() for t in p.templates)


def full_layer_size(p: TemplateMix) -> int:
    c_out, c_in = p.block_shape[0] * p.grid_shape[0], p.block_shape[1] * p.grid_shape[1]
    return c_out * c_in * math.prod(p.block_shape[2:])
