"""Width-growth baselines of the paper's Table 1: Random growth (GradMax-style) and Net2Net widening.

Both grow a trained plain half-width WRN (stem 8, width k/2) into the plain target WRN-d-k, the same
small -> target pair MixtureGrowth grows. Every widened activation keeps its old channels first and
appends the new ones, and `WideResNet.channel_spaces()` says which layers write and read each activation,
so all producers and consumers of one activation (e.g. a residual stream) are widened consistently.

* random (GradMax authors' `AddRandom`, grow_epsilon = 0, scale 0.5, mean_norm): new units get zero
  incoming weights; their outgoing weights are random, each unit's vector scaled to 0.5 x the mean L2
  norm of the existing units' outgoing vectors in that layer. New BN channels are (1, 0, 0, 1). The grown
  network computes exactly what the small one did.
* random-full: every new weight block is freshly initialized (kaiming normal), "fully random new weights".
* net2net (Chen et al.; official code `models/net2net.py`): each new unit replicates a randomly chosen
  existing unit (incoming weights and BN copied); the outgoing weights of every replicated unit are
  divided by its number of copies. Function preserving; optional noise (std = noise x std(W)) on the new
  units' incoming weights breaks the symmetry between copies (the official call uses none).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from reparam.core.errors import ReparamError, choose
from reparam.models.wrn import WideResNet

WIDEN_METHODS = ("random", "random-full", "net2net")


def _named(model: nn.Module) -> dict[str, nn.Module]:
    return dict(model.named_modules())


def _space_widths(small: WideResNet, large: WideResNet) -> dict[str, tuple[int, int]]:
    s_mods, l_mods = _named(small), _named(large)
    widths: dict[str, tuple[int, int]] = {}
    for name, (sin, sout) in small.channel_spaces().items():
        sm, lm = s_mods[name], l_mods[name]
        if isinstance(sm, nn.BatchNorm2d):
            widths[sin] = (sm.num_features, lm.num_features)
            continue
        widths[sin] = (sm.weight.shape[1], lm.weight.shape[1])
        widths[sout] = (sm.weight.shape[0], lm.weight.shape[0])
    return widths


def widen(small: WideResNet, large: WideResNet, method: str = "random", *, scale: float = 0.5,
          noise: float = 0.0, seed: int = 0) -> WideResNet:
    """Copy the trained `small` WRN into the freshly built `large` one (in place) and return `large`."""
    choose(method, WIDEN_METHODS, "widening method")
    if not (isinstance(small, WideResNet) and isinstance(large, WideResNet)):
        raise ReparamError("widen() grows a reparam.models.wrn WideResNet into a wider one")
    if small.channel_spaces().keys() != large.channel_spaces().keys():
        raise ReparamError("small and large networks must have the same depth and layout")
    gen = torch.Generator().manual_seed(seed)
    widths = _space_widths(small, large)
    maps: dict[str, torch.Tensor] = {}
    for space, (s, big) in widths.items():
        if big < s:
            raise ReparamError(f"activation {space!r} would shrink from {s} to {big} channels")
        if method == "net2net":
            extra = torch.randint(0, s, (big - s,), generator=gen)
        else:
            extra = torch.full((big - s,), -1, dtype=torch.long)
        maps[space] = torch.cat([torch.arange(s), extra])
    counts = {sp: torch.bincount(m[m >= 0], minlength=widths[sp][0]).float() for sp, m in maps.items()}
    s_mods, l_mods = _named(small), _named(large)
    with torch.no_grad():
        large.norm.mean.copy_(small.norm.mean)
        large.norm.std.copy_(small.norm.std)
        for name, (sin, sout) in small.channel_spaces().items():
            sm, lm = s_mods[name], l_mods[name]
            if isinstance(sm, nn.BatchNorm2d):
                _widen_bn(sm, lm, maps[sin], method)
            else:
                lm.weight.copy_(_widen_weight(sm.weight, lm.weight, maps[sin], maps[sout], counts[sin],
                                              method, scale, noise, gen))
    return large


def _widen_bn(sm: nn.BatchNorm2d, lm: nn.BatchNorm2d, m: torch.Tensor, method: str) -> None:
    s = sm.num_features
    for field, pad in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
        src, dst = getattr(sm, field), getattr(lm, field)
        if method == "net2net":
            dst.copy_(src[m])
        else:
            dst.fill_(pad)
            dst[:s].copy_(src)
    lm.num_batches_tracked.copy_(sm.num_batches_tracked)


def _widen_weight(w: torch.Tensor, fresh: torch.Tensor, m_in: torch.Tensor, m_out: torch.Tensor,
                  count_in: torch.Tensor, method: str, scale: float, noise: float,
                  gen: torch.Generator) -> torch.Tensor:
    s_out, s_in = w.shape[:2]
    big_out, big_in = fresh.shape[:2]
    if method == "net2net":
        shape = (1, -1) + (1,) * (w.dim() - 2)
        out = w[m_out][:, m_in] / count_in[m_in].view(shape)
        if noise > 0 and big_out > s_out:
            std = w.std().item() * noise
            out[s_out:] += torch.randn(out[s_out:].shape, generator=gen) * std
        return out
    if method == "random-full":
        out = fresh.clone()              # the large net's own init for every new block
        out[:s_out, :s_in] = w
        return out
    out = torch.zeros_like(fresh)
    out[:s_out, :s_in] = w
    if big_in > s_in:
        # Outgoing weights of the new input units: a column per unit, scaled to scale x mean column norm.
        norms = w.transpose(0, 1).reshape(s_in, -1).norm(dim=1)
        target = scale * norms.mean()
        new = torch.randn((s_out, big_in - s_in) + tuple(w.shape[2:]), generator=gen)
        col = new.transpose(0, 1).reshape(big_in - s_in, -1).norm(dim=1).clamp_min(1e-12)
        shape = (1, -1) + (1,) * (w.dim() - 2)
        out[:s_out, s_in:] = new / col.view(shape) * target
    return out
