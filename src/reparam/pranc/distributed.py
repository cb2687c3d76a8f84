"""PRANC's distributed mode (the paper's): the basis is split by rows across processes.

With N processes, process r owns rows [lo_r, hi_r) of every block's k coefficients (balanced contiguous
ranges). In the training forward pass it generates only those basis rows and computes its partial sum
alpha[lo:hi] @ B[lo:hi]; the partial sums are all-reduced so every process holds the full weights. In the
backward pass the weight gradients are all-reduced and each process computes the gradient of its own
coefficients only, B[lo:hi] @ g; the other entries are zero, so DDP's average of alpha's gradient over
processes, times N, is the whole gradient. The N-fold factor is folded in by all-reducing g as a sum.
Every process keeps (and identically updates) the whole alpha vector: k numbers, negligible next to the
k x d basis work, which is what is split.

Because the basis generator is counter-based (any row range can be produced alone), the result does not
depend on the split, and the saved .prnc file (seed + alpha) is the same format whatever the number of
processes; evaluation and reconstruction use the canonical exact sum, which every process computes whole.

This is the i.i.d. basis's distributed mode. The Fastfood basis costs O(d log d) per product whatever k
is, so there is nothing worth splitting: every process computes the whole transform and DDP averages
alpha's gradient like any parameter's (the gradient is linear in dL/dtheta, so the average of the
processes' B g_r is B times the average gradient).

Activated by the trainer (`distributed_start`/`distributed_end` on PrancCoefficients) only while a
multi-process `Trainer.fit` runs; one process never takes this path.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from reparam.core import distributed as rd

if TYPE_CHECKING:
    from reparam.pranc.core import PrancCoefficients
    from reparam.pranc.layout import Segment

_group = None


def _pranc_group():
    """A process group of its own, so these collectives never interleave with DDP's gradient buckets."""
    global _group
    if _group is None:
        _group = dist.new_group(timeout=datetime.timedelta(seconds=rd.timeout_seconds()))
    return _group


class PrancShard:
    """This process's rows of every block, and the sharded training forward/backward."""

    def __init__(self, core: PrancCoefficients, rank: int, world: int):
        self.core, self.rank, self.world = core, rank, world
        self.rows = {b.index: rd.shard_range(b.k, rank, world) for b in core.blocks}
        with rd.guard("creating PRANC's process group"):
            self.group = _pranc_group()

    def segment(self, alpha_b: torch.Tensor, seg: Segment) -> torch.Tensor:
        return _ShardedSegmentFn.apply(alpha_b, self, seg)

    def all_reduce(self, t: torch.Tensor, what: str) -> torch.Tensor:
        with rd.guard(what):
            dist.all_reduce(t, group=self.group)
        return t

    # -- this process's rows only -----------------------------------------------------------------------
    def partial_columns(self, alpha_b: torch.Tensor, block: int, c0: int, c1: int) -> torch.Tensor:
        """alpha_b[lo:hi] @ B[lo:hi, c0:c1], generating (streamed) or slicing (materialized) own rows only."""
        core, basis = self.core, self.core.basis
        lo, hi = self.rows[block]
        out = torch.zeros(c1 - c0, dtype=alpha_b.dtype, device=alpha_b.device)
        step = hi - lo if core.mode == "materialized" else core.config.chunk
        for r0 in range(lo, hi, max(1, step)):
            r1 = min(hi, r0 + step)
            out.add_(alpha_b[r0:r1] @ basis.rows(block, r0, r1, c0, c1).to(alpha_b.dtype))
        return out

    def partial_grad(self, block: int, c0: int, c1: int, g: torch.Tensor) -> torch.Tensor:
        """[k_b] gradient: B[lo:hi, c0:c1] @ g in own rows, zero elsewhere."""
        core, basis = self.core, self.core.basis
        lo, hi = self.rows[block]
        out = torch.zeros(core.blocks[block].k, dtype=g.dtype, device=g.device)
        step = hi - lo if core.mode == "materialized" else core.config.chunk
        for r0 in range(lo, hi, max(1, step)):
            r1 = min(hi, r0 + step)
            out[r0:r1] = basis.rows(block, r0, r1, c0, c1).to(g.dtype) @ g
        return out


class _ShardedSegmentFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, alpha_b, shard: PrancShard, seg: Segment):
        ctx.shard, ctx.seg = shard, seg
        c0, c1 = seg.offset, seg.offset + seg.numel
        with torch.no_grad():
            w = shard.partial_columns(alpha_b.detach(), seg.block, c0, c1)
            shard.all_reduce(w, "summing PRANC partial weights")
        return w.view(seg.shape)

    @staticmethod
    def backward(ctx, g):
        shard, seg = ctx.shard, ctx.seg
        with torch.no_grad():
            g_sum = shard.all_reduce(g.reshape(-1).contiguous().clone(), "summing PRANC weight gradients")
            grad = shard.partial_grad(seg.block, seg.offset, seg.offset + seg.numel, g_sum)
        return grad, None, None
