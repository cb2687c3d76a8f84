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
`apply` (apply.py) builds these layers on a plain network; `fold` (grow.py) turns a grown model back
into the plain network of target width, or a member into the small one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
from torch.nn.utils import parametrize as tparam

from reparam.core.errors import ReparamError
from reparam.core.protocol import tag

TEMPLATE_INITS = ("per-template", "stacked")


def _kaiming_templates(n: int, block_shape: tuple[int, ...], init: str = "per-template") -> torch.Tensor:
    """Kaiming-normal templates. "per-template" (default): each template with its own layer fan-in, so a
    member starts with a standard layer's scale. "stacked": the official code's kaiming_normal_ over the
    stacked [n, out, in, k, k] tensor, whose fan-in counts the output channels too (out * in * k * k):
    templates sqrt(out) times smaller (4x at WRN-10-2, about 18x in WRN-28-10's last stage)."""
    t = torch.empty(n, *block_shape)
    if init == "stacked":
        nn.init.kaiming_normal_(t)       # torch's defaults, as the official code calls it
        return t
    for j in range(n):
        nn.init.kaiming_normal_(t[j], mode="fan_in", nonlinearity="relu")
    return t


class TemplateMix(nn.Module):
    """Parametrization: (templates, coefficients) -> the weight of one member, or of the grown layer."""

    reparam_method = "mixturegrowth"

    def __init__(self, block_shape: tuple[int, ...], grid: tuple[int, int], n_templates: int = 2,
                 num_sets: int = 2, share_from: TemplateMix | None = None, template_init: str = "per-template"):
        super().__init__()
        self.block_shape = tuple(block_shape)
        self.grid_shape = tuple(grid)           # (g_out, g_in) of the grown layer
        if share_from is not None:
            if share_from.block_shape != self.block_shape:
                raise ReparamError("template sharing needs layers of the same shape")
            self.templates = nn.ParameterList(list(share_from.templates))
        else:
            self.templates = nn.ParameterList(
                [nn.Parameter(_kaiming_templates(n_templates, self.block_shape, template_init))
                 for _ in range(num_sets)])
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
        for bn in self.bns:
            _own(bn)
        self.full: nn.BatchNorm2d | None = None
        self.member: int | None = 0

    def inactive_parameters(self) -> list[str]:
        """Parameters the current mode does not compute with (the other member's BatchNorm): stored, but
        not part of the plain network this mode folds to (reparam.summary counts them so)."""
        if self.member is None or self.bns is None:
            return []
        return [f"bns.{i}.{n}" for i, bn in enumerate(self.bns) if i != self.member
                for n, _ in bn.named_parameters()]

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
        self.full = _own(full)
        self.bns = None
        self.member = None


def _own(bn: nn.BatchNorm2d) -> nn.BatchNorm2d:
    # The member BNs are MixtureGrowth's (grow() concatenates them): no other method may go on them.
    tag(bn, "weight", "mixturegrowth")
    tag(bn, "bias", "mixturegrowth")
    return bn


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
