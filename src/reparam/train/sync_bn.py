"""BatchNorm whose training-mode statistics are taken over the global batch of every process.

torch.nn.SyncBatchNorm only runs on CUDA modules inside DDP; this one is plain torch (differentiable
all-reduce of per-channel sums), so it works on CPU with gloo too. With it, N processes give the same
result as 1 process with the same global batch (to floating-point tolerance). Conversion is temporary:
the wrappers share the original modules' parameters and buffers, and `revert_sync_batchnorm` puts the
original BatchNorm modules back, so saved models and method code only ever see nn.BatchNorm*d.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn

from reparam.core import distributed as rd


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; its gradient is the sum over processes of the incoming gradients."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        return rd.all_reduce_(t.clone(), "synchronising BatchNorm statistics")

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        return rd.all_reduce_(g.clone(), "synchronising BatchNorm gradients")


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    return _AllReduceSum.apply(t)


_excluded = False


@contextmanager
def local_batch_excluded(flag: bool = True) -> Iterator[None]:
    """Inside, this process's examples do not count in the global statistics (a placeholder batch)."""
    global _excluded
    old, _excluded = _excluded, flag
    try:
        yield
    finally:
        _excluded = old


class GlobalBatchNorm(nn.Module):
    """Wraps one BatchNorm module; in training mode normalizes with the statistics of all processes."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        object.__setattr__(self, "_bn", bn)   # not a submodule: keep the state_dict names of `bn`
        self.weight, self.bias = bn.weight, bn.bias
        if bn.running_mean is not None:
            self.register_buffer("running_mean", bn.running_mean)
            self.register_buffer("running_var", bn.running_var)
            self.register_buffer("num_batches_tracked", bn.num_batches_tracked)
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def train(self, mode: bool = True) -> GlobalBatchNorm:
        super().train(mode)
        self._bn.train(mode)   # not a submodule, so Module.train does not reach it
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self._bn
        use_batch = self.training or self.running_mean is None
        if not use_batch or not rd.is_distributed():
            return bn(x)
        dims = [0] + list(range(2, x.dim()))
        # A placeholder batch still runs the same collectives (every process must), contributing zeros.
        keep = 0.0 if _excluded else 1.0
        count = torch.tensor([keep * x.numel() / max(1, x.shape[1])], dtype=x.dtype, device=x.device)
        # Two passes (mean, then squared deviations), like the 1-process kernel, for matching rounding.
        s = _all_reduce(torch.cat([x.sum(dims) * keep, count]))
        n = s[-1]
        mean = s[:-1] / n
        shape = [1, -1] + [1] * (x.dim() - 2)
        xc = x - mean.view(shape)
        var = _all_reduce((xc * xc).sum(dims) * keep) / n
        y = xc * torch.rsqrt(var + bn.eps).view(shape)
        if bn.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.training and bn.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = bn.momentum if bn.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var.detach() * (n / (n - 1)).clamp(min=0) if n > 1 else var.detach()
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        return y


def convert_sync_batchnorm(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """Swap every BatchNorm child for a GlobalBatchNorm in place; returns what revert needs."""
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
                wrapper = GlobalBatchNorm(child)
                wrapper.train(child.training)
                setattr(parent, name, wrapper)
                swapped.append((parent, name, child))
    return swapped


def revert_sync_batchnorm(swapped: list[tuple[nn.Module, str, nn.Module]]) -> None:
    for parent, name, child in swapped:
        child.train(getattr(parent, name).training)
        setattr(parent, name, child)


def batchnorm_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


