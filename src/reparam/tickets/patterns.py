"""Sparsity patterns: turn per-weight scores into 0/1 masks (unstructured, channel/filter, N:M).

Scores are importance values (|theta| for magnitude pruning, learned scores for LMP); the highest are
kept. `prev` (an earlier mask) restricts the choice to still-alive entries, which makes IMP masks nested.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from reparam.core.errors import ReparamError

SCOPES = ("global", "layer")


@dataclass(frozen=True)
class Pattern:
    kind: str           # unstructured | channel | nm
    n: int = 0          # N:M -> keep n of every m
    m: int = 0
    channel_norm: int = 1   # 1 | 2: filter norm for channel pruning

    def __str__(self) -> str:
        return f"nm:{self.n}:{self.m}" if self.kind == "nm" else self.kind

    @property
    def fixed_sparsity(self) -> float | None:
        return 1 - self.n / self.m if self.kind == "nm" else None


def parse_pattern(text: str) -> Pattern:
    """'unstructured' | 'channel' | 'channel-l2' | 'nm:N:M' (e.g. nm:2:4, nm:1:4, nm:4:8)."""
    t = text.strip().lower()
    if t == "unstructured":
        return Pattern("unstructured")
    if t in ("channel", "channel-l1", "filter"):
        return Pattern("channel", channel_norm=1)
    if t == "channel-l2":
        return Pattern("channel", channel_norm=2)
    if t.startswith("nm:"):
        parts = t.split(":")
        try:
            n, m = int(parts[1]), int(parts[2])
        except (IndexError, ValueError):
            n = m = -1
        if len(parts) != 3 or not 0 < n <= m:
            raise ReparamError(f"bad N:M pattern {text!r}; write nm:N:M with 0 < N <= M, e.g. nm:2:4")
        return Pattern("nm", n=n, m=m)
    raise ReparamError(f"unknown sparsity pattern {text!r}; allowed: unstructured, channel, channel-l2, "
                       "nm:N:M")


def _check_sparsity(s: float) -> None:
    if not 0.0 <= s < 1.0:
        raise ReparamError(f"sparsity must be in [0, 1), got {s}")


def _alive(score: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
    s = score.detach().to(torch.float64).clone()
    if prev is not None:
        s[prev == 0] = float("-inf")
    return s


def _keep_top(flat: torch.Tensor, n_keep: int) -> torch.Tensor:
    """0/1 mask keeping the n_keep largest entries; pruned = the (numel - n_keep) smallest (like
    torch.nn.utils.prune, which zeroes topk(largest=False))."""
    mask = torch.ones_like(flat, dtype=torch.float32)
    n_prune = flat.numel() - n_keep
    if n_prune > 0:
        idx = torch.topk(flat, n_prune, largest=False).indices
        mask[idx] = 0
    return mask


def _filter_scores(s: torch.Tensor, norm: int) -> torch.Tensor:
    flat = s.reshape(s.shape[0], -1)
    dead = torch.isinf(flat).all(1)
    f = flat.clamp_min(0).nan_to_num(0, posinf=0, neginf=0)
    v = f.sum(1) if norm == 1 else f.pow(2).sum(1).sqrt()
    v[dead] = float("-inf")
    return v


def nm_mask(score: torch.Tensor, n: int, m: int, prev: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the top-n of every m consecutive weights along the flattened input axis of each output row.

    A row length that is not a multiple of m gets a short last group (which keeps at most n).
    """
    s = _alive(score, prev)
    rows = s.reshape(s.shape[0], -1)
    length = rows.shape[1]
    pad = (-length) % m
    if pad:
        rows = torch.cat([rows, torch.full((rows.shape[0], pad), float("-inf"), dtype=rows.dtype)], 1)
    groups = rows.reshape(rows.shape[0], -1, m)
    idx = torch.topk(groups, min(n, m), dim=2).indices
    keep = torch.zeros_like(groups, dtype=torch.float32).scatter_(2, idx, 1.0)
    keep = keep.reshape(rows.shape[0], -1)[:, :length]
    keep[torch.isinf(s.reshape(s.shape[0], -1)) & (s.reshape(s.shape[0], -1) < 0)] = 0
    return keep.reshape(score.shape)


def layer_mask(score: torch.Tensor, pattern: Pattern, keep: int | float,
               prev: torch.Tensor | None = None) -> torch.Tensor:
    """Mask for one tensor. `keep`: kept entries (int, unstructured), kept filters (int, channel), or the
    kept fraction (float) which is rounded to a count. N:M ignores `keep`."""
    if pattern.kind == "nm":
        return nm_mask(score, pattern.n, pattern.m, prev)
    s = _alive(score, prev)
    if pattern.kind == "channel":
        fs = _filter_scores(s, pattern.channel_norm)
        k = keep if isinstance(keep, int) else max(1, round(keep * fs.numel()))
        fmask = _keep_top(fs, k)
        return fmask.view(-1, *([1] * (score.dim() - 1))).expand_as(score).clone()
    k = keep if isinstance(keep, int) else round(keep * s.numel())
    return _keep_top(s.flatten(), k).view_as(score)


def select(scores: Mapping[str, torch.Tensor], pattern: Pattern, sparsity: float, scope: str = "global",
           prev: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Masks keeping the highest scores at the requested sparsity (exact count for unstructured).

    unstructured/global: one threshold over all tensors, round(sparsity * total) entries pruned.
    unstructured/layer: the same fraction in every tensor.
    channel/layer: round(sparsity * filters) filters pruned per tensor by filter L1/L2 norm of scores.
    channel/global: filters ranked across layers by mean |score| (norm / filter size), >= 1 kept per layer.
    nm: sparsity is fixed by N:M (the argument is ignored).
    """
    if scope not in SCOPES:
        raise ReparamError(f"unknown pruning scope {scope!r}; allowed: {', '.join(SCOPES)}")
    _check_sparsity(sparsity)
    names = list(scores)
    if not names:
        raise ReparamError("no prunable layers: the model has no conv layers (include Linear layers with "
                           "prune_linear / --prune-linear)")
    prev = prev or {}
    if pattern.kind == "nm" or scope == "layer":
        return {k: layer_mask(scores[k], pattern, 1.0 - sparsity, prev.get(k)) for k in names}
    if pattern.kind == "unstructured":
        flat = torch.cat([_alive(scores[k], prev.get(k)).flatten() for k in names])
        mask = _keep_top(flat, flat.numel() - round(sparsity * flat.numel()))
        out, i = {}, 0
        for k in names:
            n = scores[k].numel()
            out[k] = mask[i:i + n].view_as(scores[k]).clone()
            i += n
        return out
    # channel, global: normalized filter scores so layers with large fan-in are not favoured
    fs = {k: _filter_scores(_alive(scores[k], prev.get(k)), pattern.channel_norm)
          / scores[k][0].numel() ** (1.0 / pattern.channel_norm) for k in names}
    flat = torch.cat([fs[k] for k in names])
    n_total = flat.numel()
    fmask = _keep_top(flat, n_total - round(sparsity * n_total))
    out, i = {}, 0
    for k in names:
        n = fs[k].numel()
        fm = fmask[i:i + n].clone()
        if fm.sum() == 0:   # never cut a layer completely: keep its best filter
            fm[int(torch.argmax(fs[k]))] = 1
        out[k] = fm.view(-1, *([1] * (scores[k].dim() - 1))).expand_as(scores[k]).clone()
        i += n
    return out
