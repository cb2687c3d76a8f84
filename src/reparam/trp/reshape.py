"""Conv weight <-> matrix reshapes of the two low-rank schemes TRP builds on (spec 1.2).

channel (code name NC, Zhang et al.): M = W reshaped to n x (c*kh*kw).
spatial (code name VH, Jaderberg et al. scheme 2): M = W permuted to (c, kh, n, kw), reshaped to
    (c*kh) x (n*kw): rows are (in-channel, kernel row), columns are (filter, kernel column).
nd (network decoupling, code only): one c x (kh*kw) matrix per filter, returned as a batch [n, c, kh*kw].
A Linear weight [out, in] is its own matrix under every scheme (there is no kernel to arrange).
"""

from __future__ import annotations

import torch

from reparam.core.errors import ReparamError

SCHEMES = ("channel", "spatial", "nd")
SCHEME_ALIASES = {"nc": "channel", "vh": "spatial", "channel": "channel", "spatial": "spatial", "nd": "nd"}


def canonical_scheme(scheme: str) -> str:
    """Accept the paper's names and the official code's ('NC', 'VH', 'ND'), case-insensitive."""
    key = str(scheme).lower()
    if key not in SCHEME_ALIASES:
        raise ReparamError(f"unknown scheme {scheme!r}; allowed: channel (NC), spatial (VH), nd")
    return SCHEME_ALIASES[key]


def to_matrix(weight: torch.Tensor, scheme: str) -> torch.Tensor:
    """The 2-D matrix (batch of matrices for 'nd') a 4-D conv weight [n, c, kh, kw] is decomposed as; a 2-D
    Linear weight is returned as it is."""
    scheme = canonical_scheme(scheme)
    if weight.dim() == 2:
        return weight
    if weight.dim() != 4:
        raise ReparamError(f"expected a 4-D conv weight [n, c, kh, kw] or a 2-D Linear weight, got shape "
                           f"{list(weight.shape)}")
    n, c, kh, kw = weight.shape
    if scheme == "channel":
        return weight.reshape(n, c * kh * kw)
    if scheme == "spatial":
        return weight.permute(1, 2, 0, 3).reshape(c * kh, n * kw)
    return weight.reshape(n, c, kh * kw)


def from_matrix(matrix: torch.Tensor, scheme: str, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of `to_matrix`: back to a contiguous weight of `shape` = (n, c, kh, kw) or (out, in)."""
    scheme = canonical_scheme(scheme)
    if len(shape) == 2:
        return matrix.reshape(tuple(int(s) for s in shape)).contiguous()
    n, c, kh, kw = (int(s) for s in shape)
    if scheme == "channel":
        return matrix.reshape(n, c, kh, kw).contiguous()
    if scheme == "spatial":
        return matrix.reshape(c, kh, n, kw).permute(2, 0, 1, 3).contiguous()
    return matrix.reshape(n, c, kh, kw).contiguous()


def max_rank(shape: torch.Size | tuple[int, ...], scheme: str) -> int:
    """The largest rank the scheme's matrix can have (per filter for 'nd'; min(out, in) for a Linear)."""
    scheme = canonical_scheme(scheme)
    if len(shape) == 2:
        return min(int(shape[0]), int(shape[1]))
    n, c, kh, kw = (int(s) for s in shape)
    if scheme == "channel":
        return min(n, c * kh * kw)
    if scheme == "spatial":
        return min(c * kh, n * kw)
    return min(c, kh * kw)
