"""The TRP operator D(.) (truncated SVD of a reshaped conv weight, or of a Linear weight), the nuclear-norm
sub-gradient, and the old choice of target convs (spec 1.3-1.5, 1.7; `trp.apply` chooses with `choose`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from reparam.core.errors import ReparamError
from reparam.core.parametrize import FilterFn
from reparam.trp.rank import RankRule, numerical_rank
from reparam.trp.reshape import canonical_scheme, from_matrix, to_matrix

RankFn = Callable[[torch.Tensor], int]


def default_filter(module: nn.Module, name: str) -> bool:
    """Official code's look-up table: every Conv2d whose kernel is not 1x1 (ungrouped here)."""
    return (isinstance(module, nn.Conv2d) and tuple(module.kernel_size) != (1, 1)
            and module.groups == 1)


def select_targets(model: nn.Module, filter_fn: FilterFn | None = None,
                   skip_stem: bool = True) -> list[tuple[str, nn.Conv2d]]:
    """(name, conv) pairs of the convs TRP treats by default. The stem is the first Conv2d in module order.

    Used on models TRP was not applied to (the post-hoc baseline); `trp.apply` chooses with
    `reparam.trp.apply.choose`, which also takes Linear layers a filter picks and reports what it skips.
    """
    fn = filter_fn or default_filter
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    stem = convs[0][0] if convs else None
    out = []
    for name, module in convs:
        if skip_stem and name == stem:
            continue
        if not fn(module, name):
            continue
        if module.groups != 1:
            raise ReparamError(f"layer {name!r} is a grouped conv (groups={module.groups}); TRP decomposes "
                               "ungrouped convs only, exclude it with the filter")
        out.append((name, module))
    if not out:
        raise ReparamError("the model has no eligible layers for TRP (Conv2d with a kernel larger than 1x1, "
                           "other than the stem)")
    return out


def _svd(weight: torch.Tensor, scheme: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    m = to_matrix(weight.detach(), scheme)
    return torch.linalg.svd(m, full_matrices=False)


def _ranks(s: torch.Tensor, rank_fn: RankFn) -> list[int]:
    """One rank per matrix: a 1-D s is one matrix; a 2-D s (the 'nd' scheme) is one per filter."""
    if s.dim() == 1:
        return [rank_fn(s)]
    return [rank_fn(row) for row in s]


def _mask(s: torch.Tensor, ranks: list[int]) -> torch.Tensor:
    idx = torch.arange(s.shape[-1], device=s.device)
    k = torch.tensor(ranks, device=s.device).unsqueeze(-1)
    mask = (idx.unsqueeze(0) < k).to(s.dtype)
    return mask[0] if s.dim() == 1 else mask


def low_rank(weight: torch.Tensor, scheme: str, rank: RankFn | int | list[int]
             ) -> tuple[torch.Tensor, list[int]]:
    """D(W): the truncated-SVD approximation of `weight` under `scheme`, and the rank(s) kept.

    `rank` is a rule (e.g. RankRule('energy', 0.05)), a fixed int, or one int per filter for 'nd'.
    """
    scheme = canonical_scheme(scheme)
    u, s, vh = _svd(weight, scheme)
    if callable(rank):
        ranks = _ranks(s, rank)
    elif isinstance(rank, int):
        ranks = [min(max(1, rank), s.shape[-1])] * (s.shape[0] if s.dim() == 2 else 1)
    else:
        ranks = [min(max(1, int(r)), s.shape[-1]) for r in rank]
    kept = s * _mask(s, ranks)
    m = (u * kept.unsqueeze(-2)) @ vh
    return from_matrix(m, scheme, weight.shape).to(weight.dtype), ranks


def nuclear_norm(weight: torch.Tensor, scheme: str) -> torch.Tensor:
    """||M||_* of the scheme's matrix (summed over filters for 'nd')."""
    return torch.linalg.svdvals(to_matrix(weight.detach(), scheme)).sum()


def nuclear_subgradient(weight: torch.Tensor, scheme: str, rank: str | RankFn | list[int] = "full"
                        ) -> torch.Tensor:
    """reshape^-1(U_r V_r^T): a sub-gradient of ||M||_* (eq. 5).

    rank='full' truncates to rank(M) (paper; exact sub-gradient); a rank rule truncates to its k (code);
    a list gives r directly (one per filter for 'nd').
    """
    scheme = canonical_scheme(scheme)
    u, s, vh = _svd(weight, scheme)
    if rank == "full":
        shape = tuple(to_matrix(weight, scheme).shape[-2:])
        ranks = _ranks(s, lambda row: numerical_rank(row, shape))
    elif callable(rank):
        ranks = _ranks(s, rank)
    elif isinstance(rank, (list, tuple)):
        ranks = [int(r) for r in rank]
    else:
        raise ReparamError(f"nuclear sub-gradient rank must be 'full' or a rank rule, got {rank!r}")
    g = (u * _mask(s, ranks).unsqueeze(-2)) @ vh
    return from_matrix(g, scheme, weight.shape).to(weight.dtype)


@torch.no_grad()
def project_(conv: nn.Conv2d | nn.Linear, scheme: str, rank: RankFn | int | list[int]) -> list[int]:
    """Replace conv.weight by D(conv.weight) in place (the Parameter object and optimizer state stay)."""
    if parametrize.is_parametrized(conv, "weight"):
        # the weight is computed from other tensors: writing into it would change nothing that is kept
        raise ReparamError(f"cannot project a parametrized weight ({type(conv).__name__}.weight has "
                           f"{type(conv.parametrizations['weight'][0]).__name__}); TRP needs a plain weight")
    new, ranks = low_rank(conv.weight, scheme, rank)
    conv.weight.copy_(new)
    return ranks


def project_model_(targets: list[tuple[str, nn.Conv2d]], scheme: str, rule: RankRule | RankFn
                   ) -> dict[str, int]:
    """Project every target layer; returns the rank kept per layer (max over filters for 'nd')."""
    return {name: max(project_(conv, scheme, rule)) for name, conv in targets}
