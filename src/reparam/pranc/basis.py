"""How the k basis networks are produced: the `Basis` interface and the i.i.d. basis (the paper's).

A basis turns one layout block's coefficients alpha_b [k_b] into that block's weights theta_b [d_b]
(theta_b = B_b^T alpha_b for a k_b x d_b matrix B_b, explicit or implicit). Everything that depends on
*which* matrix lives behind this interface, so that other modes (e.g. a delta on top of pretrained
weights) compose with any basis:

    block_theta(alpha_b, block)   training forward for the whole block, differentiable in alpha_b
                                  (None: the basis computes tensor by tensor, see segment_theta)
    segment_theta(alpha_b, seg)   training forward of one tensor (i.i.d. streamed mode)
    exact(block, c0, c1, alpha_b) the canonical weights of columns [c0, c1): a pure function of alpha_b
                                  and the file, bit-identical however it is split, threaded or sharded
    explicit(block, r0, r1, c0, c1)  explicit basis entries B_b[r0:r1, c0:c1] (tests, regression baseline)
    set_mode(mode)                materialize / release what the basis keeps in memory
    header()                      the file's generator {name, version} and basis name

Two bases: `IIDBasis` (here: every entry drawn independently by reparam.core.generator, the official
code's construction) and `reparam.pranc.fastfood.FastfoodBasis` (structured, O(d log d) per product).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import torch

from reparam.core import generator
from reparam.core.errors import ReparamError

if TYPE_CHECKING:
    from reparam.pranc.core import PrancCoefficients
    from reparam.pranc.layout import Segment

CANON_ROWS = 256          # rows per canonical group (part of the file format: changing it changes bits)
CANON_COLS = 4096         # column block for exact reconstruction (any value gives the same bits; 4,096
                          # was the fastest of 256 / 1,024 / 4,096 / 16,384 on one CPU thread)
BASES = ("iid", "fastfood")


def tree_sum_(p: torch.Tensor) -> torch.Tensor:
    """tree_sum in place (p is overwritten): the same pairs in the same order, no allocation. After each
    level the sums sit in rows 0, 2, 4, ... and an odd last row is already in place for the next level."""
    while p.shape[0] > 1:
        n = p.shape[0]
        p[0:n - 1:2].add_(p[1:n:2])
        p = p[0:n:2]
    return p[0]


class Basis:
    """The interface (see the module docstring); subclasses fill it in."""

    name = ""
    whole_block = False     # True: training computes the whole block at once (block_theta)
    exact_is_fast = False   # True: block_theta gives the exact weights' bits (used in eval mode with grad)

    def __init__(self, core: PrancCoefficients):
        self.core = core

    def header(self) -> dict:
        raise NotImplementedError

    def set_mode(self, mode: str) -> None:
        pass

    def block_theta(self, alpha_b: torch.Tensor, block: int) -> torch.Tensor:
        raise NotImplementedError

    def segment_theta(self, alpha_b: torch.Tensor, seg: Segment) -> torch.Tensor:
        raise NotImplementedError

    def exact(self, block: int, c0: int, c1: int, alpha_b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def explicit(self, block: int, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
        raise NotImplementedError


class IIDBasis(Basis):
    """Entry (j, i) of block b = unit(seed, b, j, i) * scale_i, every entry independent (official code)."""

    name = "iid"

    def __init__(self, core: PrancCoefficients):
        super().__init__(core)
        self.unit_distribution = "uniform" if core.config.distribution == "default-init" else "gaussian"
        self.materialized: dict[int, torch.Tensor] = {}
        self._factor: dict[tuple[int, str], torch.Tensor] = {}
        self._keys: dict[tuple[int, str], torch.Tensor] = {}

    whole_block = True   # materialized: one gemv per block (the official algorithm); streamed: row chunks x
                         # column tiles of the whole block (a tile stays in cache between generating and using it)

    def header(self) -> dict:
        return {"generator": {"name": generator.GENERATOR_NAME, "version": generator.GENERATOR_VERSION}}

    # -- entries ---------------------------------------------------------------------------------------
    def _entry_args(self, block: int, c0: int, c1: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(the block's k row keys, its scales and uniform factors for columns [c0, c1)), cached per device."""
        core = self.core
        key = (block, str(core.alpha.device))
        if key not in self._keys:     # the k row keys of the block, hashed once
            self._keys[key] = generator.row_keys(core.seed, block, 0, core.blocks[block].k, core.alpha.device)
        factor = None
        if self.unit_distribution == "uniform":
            if key not in self._factor:
                self._factor[key] = generator.uniform_factor(core.scale(block), core.alpha.device)
            factor = self._factor[key][c0:c1]
        return self._keys[key], core.scale(block)[c0:c1], factor

    def explicit(self, block: int, r0: int, r1: int, c0: int, c1: int,
                 out: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled entries [r1-r0, c1-c0] (float32, on alpha's device), into `out` if given."""
        core = self.core
        if out is None:
            out = torch.empty(max(r1 - r0, 0), max(c1 - c0, 0), device=core.alpha.device)
        keys, scale, factor = self._entry_args(block, c0, c1)
        return generator.fill_block(out, core.seed, block, r0, r1, c0, c1, self.unit_distribution, scale,
                                    factor=factor, keys=keys[r0:r1])

    def fused(self, kind: str, out: torch.Tensor, vec: torch.Tensor, block: int, c0: int, c1: int) -> bool:
        """Streamed products in one compiled call over all k rows (generator.fused_product): theta = alpha @
        B[:, c0:c1] or grad = B[:, c0:c1] @ g. False where the kernel is not there (the tiles do it)."""
        if block in self.materialized:
            return False
        keys, scale, factor = self._entry_args(block, c0, c1)
        return generator.fused_product(kind, out, keys, vec.contiguous(), c0, c1, self.unit_distribution, scale,
                                       factor)

    def rows(self, block: int, r0: int, r1: int, c0: int, c1: int, name: str = "rows") -> torch.Tensor:
        """Entries from the materialized basis, or generated into a reused buffer (valid until the next
        call with the same `name`)."""
        if block in self.materialized:
            return self.materialized[block][r0:r1, c0:c1]
        buf = generator.scratch.get(name, (r1 - r0) * (c1 - c0), torch.float32, self.core.alpha.device)
        return self.explicit(block, r0, r1, c0, c1, out=buf.view(r1 - r0, c1 - c0))

    def set_mode(self, mode: str) -> None:
        self.materialized.clear()
        if mode == "materialized":
            for b in self.core.blocks:
                full = torch.empty(b.k, b.d, device=self.core.alpha.device)
                self.explicit(b.index, 0, b.k, 0, b.d, out=full)
                self.materialized[b.index] = full

    # -- training path (fast matmuls) ---------------------------------------------------------------------
    def block_theta(self, alpha_b: torch.Tensor, block: int) -> torch.Tensor:
        if block in self.materialized:
            return _BlockFn.apply(alpha_b, self, block)
        return _StreamedBlockFn.apply(alpha_b, self, block)

    def tiles(self, block: int):
        """(r0, r1, c0, c1) of the streamed block: `chunk` rows x about 2**18 / chunk columns (1 MB)."""
        b, rows = self.core.blocks[block], self.core.config.chunk
        cols = max(1024, (1 << 18) // rows)
        for c0 in range(0, b.d, cols):
            for r0 in range(0, b.k, rows):
                yield r0, min(b.k, r0 + rows), c0, min(b.d, c0 + cols)

    def streamed_theta(self, alpha_b: torch.Tensor, block: int) -> torch.Tensor:
        out = torch.zeros(self.core.blocks[block].d, dtype=alpha_b.dtype, device=alpha_b.device)
        if self.fused("theta", out, alpha_b, block, 0, out.numel()):
            return out
        for r0, r1, c0, c1 in self.tiles(block):
            out[c0:c1].addmv_(self.rows(block, r0, r1, c0, c1).to(alpha_b.dtype).T, alpha_b[r0:r1])
        return out

    def streamed_grad(self, block: int, g: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(self.core.blocks[block].k, dtype=g.dtype, device=g.device)
        if self.fused("grad", out, g, block, 0, g.numel()):
            return out
        for r0, r1, c0, c1 in self.tiles(block):
            out[r0:r1].addmv_(self.rows(block, r0, r1, c0, c1).to(g.dtype), g[c0:c1])
        return out

    def segment_theta(self, alpha_b: torch.Tensor, seg: Segment) -> torch.Tensor:
        return _SegmentFn.apply(alpha_b, self, seg)

    def fast_columns(self, alpha_b: torch.Tensor, block: int, c0: int, c1: int) -> torch.Tensor:
        if block in self.materialized:
            return alpha_b @ self.materialized[block][:, c0:c1].to(alpha_b.dtype)
        out = torch.zeros(c1 - c0, dtype=alpha_b.dtype, device=alpha_b.device)
        if self.fused("theta", out, alpha_b, block, c0, c1):
            return out
        k, step = alpha_b.shape[0], self.core.config.chunk
        for r0 in range(0, k, step):
            r1 = min(k, r0 + step)
            out.addmv_(self.rows(block, r0, r1, c0, c1).to(alpha_b.dtype).T, alpha_b[r0:r1])
        return out

    def grad_columns(self, block: int, c0: int, c1: int, g: torch.Tensor) -> torch.Tensor:
        """dL/dalpha_b = B[:, c0:c1] @ g, chunk by chunk in streamed mode."""
        if block in self.materialized:
            return self.materialized[block][:, c0:c1].to(g.dtype) @ g
        k, step = self.core.blocks[block].k, self.core.config.chunk
        out = torch.empty(k, dtype=g.dtype, device=g.device)
        if self.fused("grad", out, g, block, c0, c1):
            return out
        for r0 in range(0, k, step):
            r1 = min(k, r0 + step)
            torch.mv(self.rows(block, r0, r1, c0, c1).to(g.dtype), g, out=out[r0:r1])
        return out

    # -- exact path (canonical) -----------------------------------------------------------------------------
    def exact(self, block: int, c0: int, c1: int, alpha_b: torch.Tensor) -> torch.Tensor:
        """Canonical sum over rows for columns [c0, c1): rows in groups of CANON_ROWS, each group's
        products alpha_j * B[j, i] summed as a fixed pairwise tree, groups added in order. Every column
        depends only on alpha and its own entries: bit-identical however the columns are split."""
        alpha_b = alpha_b.detach()
        k = alpha_b.shape[0]
        out = torch.zeros(c1 - c0, device=alpha_b.device)
        if block in self.materialized:
            cols = max(1, min(c1 - c0, (1 << 22) // CANON_ROWS))
        else:
            cols = CANON_COLS
        for a in range(c0, c1, cols):
            b_ = min(c1, a + cols)
            acc = out[a - c0:b_ - c0]
            for r0 in range(0, k, CANON_ROWS):
                r1 = min(k, r0 + CANON_ROWS)
                if block in self.materialized:
                    p = alpha_b[r0:r1, None] * self.materialized[block][r0:r1, a:b_]
                else:
                    p = self.rows(block, r0, r1, a, b_, name="canon")
                    p.mul_(alpha_b[r0:r1, None])
                acc.add_(tree_sum_(p))
        return out


def hold(ctx, basis: Basis) -> None:
    """Keep the basis on an autograd ctx by weak reference. A strong one closes a cycle that runs through
    autograd's C++ graph (core -> its cached training weights -> their grad_fn -> ctx -> basis -> core),
    which Python's collector cannot see: every trained model, and its materialized basis, then stayed in
    memory for the rest of the process (a 3-seed ResNet-20 comparison was killed for memory)."""
    ctx.basis_ref = weakref.ref(basis)


def held(ctx) -> Basis:
    basis = ctx.basis_ref()
    if basis is None:
        raise ReparamError("backward through a PRANC model that has been freed: keep the model alive until "
                           "backward() is done")
    return basis


class _BlockFn(torch.autograd.Function):
    """alpha_b -> theta_b = alpha_b @ B_b (materialized); backward = B_b @ g."""

    @staticmethod
    def forward(ctx, alpha_b, basis: IIDBasis, block: int):
        hold(ctx, basis)
        ctx.block = block
        with torch.no_grad():
            return alpha_b.detach() @ basis.materialized[block].to(alpha_b.dtype)

    @staticmethod
    def backward(ctx, g):
        with torch.no_grad():
            return held(ctx).materialized[ctx.block].to(g.dtype) @ g.contiguous(), None, None


class _StreamedBlockFn(torch.autograd.Function):
    """alpha_b -> theta_b, regenerating the basis tile by tile in the forward and again in the backward."""

    @staticmethod
    def forward(ctx, alpha_b, basis: IIDBasis, block: int):
        hold(ctx, basis)
        ctx.block = block
        with torch.no_grad():
            return basis.streamed_theta(alpha_b.detach(), block)

    @staticmethod
    def backward(ctx, g):
        with torch.no_grad():
            return held(ctx).streamed_grad(ctx.block, g.contiguous()), None, None


class _SegmentFn(torch.autograd.Function):
    """alpha_b -> one tensor's weights; backward = B_seg @ g (regenerated chunk by chunk if streamed)."""

    @staticmethod
    def forward(ctx, alpha_b, basis: IIDBasis, seg: Segment):
        hold(ctx, basis)
        ctx.seg = seg
        with torch.no_grad():
            w = basis.fast_columns(alpha_b.detach(), seg.block, seg.offset, seg.offset + seg.numel)
        return w.view(seg.shape)

    @staticmethod
    def backward(ctx, g):
        basis, seg = held(ctx), ctx.seg
        with torch.no_grad():
            grad = basis.grad_columns(seg.block, seg.offset, seg.offset + seg.numel, g.reshape(-1).contiguous())
        return grad, None, None


class _ExactSegmentFn(torch.autograd.Function):
    """Eval mode with gradients: the canonical weights forward, the basis's gradient backward."""

    @staticmethod
    def forward(ctx, alpha_b, basis: Basis, seg: Segment):
        hold(ctx, basis)
        ctx.seg = seg
        with torch.no_grad():
            w = basis.exact(seg.block, seg.offset, seg.offset + seg.numel, alpha_b.detach())
        return w.view(seg.shape)

    @staticmethod
    def backward(ctx, g):
        basis, seg = held(ctx), ctx.seg
        with torch.no_grad():
            grad = basis.grad_columns(seg.block, seg.offset, seg.offset + seg.numel, g.reshape(-1).contiguous())
        return grad, None, None


def make_basis(core: PrancCoefficients) -> Basis:
    name = core.config.basis
    if name == "iid":
        return IIDBasis(core)
    if name == "fastfood":
        from reparam.pranc.fastfood import FastfoodBasis

        return FastfoodBasis(core)
    raise ReparamError(f"unknown PRANC basis {name!r}; allowed: {', '.join(BASES)}")
