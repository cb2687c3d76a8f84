"""The PRANC parametrization: theta = sum_j alpha_j * basis_j on any nn.Module.

`apply_pranc(model, config, filter_fn)` attaches a `PrancCoefficients` module as `model.pranc` (holding
alpha as an ordinary nn.Parameter, so any optimizer and state_dict see it) and registers a
parametrization on every basis tensor (Conv/Linear weight and bias by default). The basis itself is never
in the state_dict: it is regenerated from the seed (streamed) or held in non-persistent buffers
(materialized). BatchNorm and other non-basis parameters are left alone and train as usual.

Two ways of combining alpha with the basis, one math:
* training (module in train mode): fast matmuls, alpha @ B_c per chunk; gradients through a custom
  autograd Function (grad alpha_c = B_c g), regenerating chunks in streamed mode;
* exact (module in eval mode, and every reconstruction): the *canonical* sum, made only of elementwise
  IEEE multiplies and adds in a fixed order (rows in fixed groups of CANON_ROWS summed as a pairwise tree,
  groups added in order). Every element's value depends only on alpha and its own basis column, so it is
  bit-identical whatever the chunking, the column blocking, the layer-by-layer order, the thread count or
  the device. The weights a model evaluates with are therefore exactly the weights decoded from its file.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from reparam.core import generator
from reparam.core.errors import ReparamError
from reparam.core.parametrize import FilterFn
from reparam.core.protocol import Applied, bake_method, claim, report_left_dense
from reparam.pranc.config import PrancConfig
from reparam.pranc.layout import Block, Segment, build_layout

CANON_ROWS = 256          # rows per canonical group (part of the file format: changing it changes bits)
CANON_COLS = 16384        # column block for exact reconstruction (any value gives the same bits)


def tree_sum(p: torch.Tensor) -> torch.Tensor:
    """Sum rows of p [n, c] as a fixed pairwise tree (row 2i + row 2i+1; an odd last row is carried)."""
    while p.shape[0] > 1:
        n = p.shape[0]
        half = p[0:n - 1:2] + p[1:n:2]
        p = torch.cat([half, p[n - 1:n]]) if n % 2 else half
    return p[0]


class PrancCoefficients(nn.Module):
    """alpha (one vector for all blocks), the layout, and the basis generator/materialized basis."""

    def __init__(self, config: PrancConfig, blocks: list[Block], segments: list[Segment]):
        super().__init__()
        self.config = config
        self.blocks = blocks
        self.segments = segments
        self.unit_distribution = "uniform" if config.distribution == "default-init" else "gaussian"
        total = sum(b.k for b in blocks)
        alpha = torch.zeros(total)
        if config.init == "e0":
            for b in blocks:
                alpha[b.alpha_offset] = 1.0
        elif config.init == "l1-randn":   # "zero" (delta mode) keeps the zeros
            g = torch.Generator().manual_seed(generator.mix64_int(config.seed) & 0x7FFFFFFFFFFFFFFF)
            for b in blocks:
                a = torch.randn(b.k, generator=g)
                alpha[b.alpha_offset:b.alpha_offset + b.k] = a / a.abs().sum()
        self.alpha = nn.Parameter(alpha)
        for b in blocks:
            scale = torch.empty(b.d)
            for s in segments:
                if s.block == b.index:
                    scale[s.offset:s.offset + s.numel] = s.scale
            self.register_buffer(f"scale_{b.index}", scale, persistent=False)
        self.mode = "streamed"
        self.cache_policy = "block"      # "block": keep exact block weights; "none": layer by layer
        self._exact_cache: dict[int, tuple[tuple, torch.Tensor]] = {}
        self._train_cache: dict[int, tuple[tuple, dict[int, torch.Tensor], set[int]]] = {}
        self._segs_of_block: dict[int, list[tuple[int, Segment]]] = {}
        self._tensors: list[PrancTensor] = []   # the parametrizations generated from this alpha

    # -- basis ----------------------------------------------------------------------------------------
    @property
    def seed(self) -> int:
        return int(self.config.seed)

    def set_seed(self, seed: int) -> None:
        """Use another basis seed (the 'wrong seed' ablation); drops materialized basis and caches."""
        self.config.seed = int(seed)
        self._exact_cache.clear()
        self._train_cache.clear()
        if self.mode == "materialized":
            self.set_mode("materialized")

    def generate(self, block: int, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
        """Scaled basis entries [r1-r0, c1-c0] of block `block` (float32, on alpha's device)."""
        dev = self.alpha.device
        u = generator.unit_block(self.seed, block, r0, r1, c0, c1, self.unit_distribution, dev)
        return u.mul_(getattr(self, f"scale_{block}")[c0:c1])

    def basis_rows(self, block: int, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
        if self.mode == "materialized":
            return getattr(self, f"basis_{block}")[r0:r1, c0:c1]
        return self.generate(block, r0, r1, c0, c1)

    def set_mode(self, mode: str) -> None:
        """Switch between materialized (one contiguous [k_b, d_b] non-persistent buffer per block, like the
        official code's basis_mat) and streamed."""
        if mode not in ("materialized", "streamed"):
            raise ReparamError(f"unknown PRANC mode {mode!r}; allowed: materialized, streamed")
        for b in self.blocks:
            self._buffers.pop(f"basis_{b.index}", None)
        self._train_cache.clear()
        self.mode = "streamed"
        if mode == "materialized":
            for b in self.blocks:
                full = torch.empty(b.k, b.d, device=self.alpha.device)
                step = max(1, min(b.k, (1 << 24) // max(1, b.d)))
                for r0 in range(0, b.k, step):
                    full[r0:r0 + step] = self.generate(b.index, r0, min(b.k, r0 + step), 0, b.d)
                self.register_buffer(f"basis_{b.index}", full, persistent=False)
        self.mode = mode

    def train_segment(self, seg_index: int) -> torch.Tensor:
        """Training-mode weights of one tensor, materialized mode: one gemv per block and forward pass.

        The block's theta = alpha_b @ B_b is computed once and handed out as one output per tensor of the
        block (the official algorithm's single matmul). One `split` rather than a slice per tensor lets
        the backward concatenate the tensors' gradients once instead of scattering each slice's gradient
        into its own zero-filled block-sized buffer. A tensor asking twice (a second forward
        pass, weight sharing) triggers a fresh computation. Reusing the node is safe either way: it is
        linear and saves nothing.
        """
        seg = self.segments[seg_index]
        key = self._key() + (torch.is_grad_enabled(),)
        hit = self._train_cache.get(seg.block)
        if hit is None or hit[0] != key or seg_index in hit[2]:
            segs = self._block_segments(seg.block)
            theta = _BlockFn.apply(self.block_alpha(seg.block), self, seg.block)
            parts = theta.split([s.numel for _, s in segs])
            hit = (key, {i: t.view(s.shape) for t, (i, s) in zip(parts, segs)}, set())
            self._train_cache[seg.block] = hit
        hit[2].add(seg_index)
        return hit[1][seg_index]

    def _block_segments(self, block: int) -> list[tuple[int, Segment]]:
        """(index, segment) of every tensor of `block`, in column order (they tile the block)."""
        if block not in self._segs_of_block:
            self._segs_of_block[block] = self._tile(block)
        return self._segs_of_block[block]

    def _tile(self, block: int) -> list[tuple[int, Segment]]:
        segs = sorted(((i, s) for i, s in enumerate(self.segments) if s.block == block), key=lambda t: t[1].offset)
        ends = [0] + [s.offset + s.numel for _, s in segs]
        if any(s.offset != e for (_, s), e in zip(segs, ends)) or ends[-1] != self.blocks[block].d:
            raise AssertionError(f"PRANC block {block}: tensors do not tile the block's columns")
        return segs

    def block_alpha(self, block: int) -> torch.Tensor:
        if len(self.blocks) == 1:      # the global layout: no slice (an autograd node per weight access)
            return self.alpha
        b = self.blocks[block]
        return self.alpha[b.alpha_offset:b.alpha_offset + b.k]

    # -- training path (fast) ---------------------------------------------------------------------------
    def fast_columns(self, alpha_b: torch.Tensor, block: int, c0: int, c1: int) -> torch.Tensor:
        if self.mode == "materialized":
            return alpha_b @ getattr(self, f"basis_{block}")[:, c0:c1].to(alpha_b.dtype)
        out = None
        k, step = alpha_b.shape[0], self.config.chunk
        for r0 in range(0, k, step):
            r1 = min(k, r0 + step)
            part = alpha_b[r0:r1] @ self.generate(block, r0, r1, c0, c1).to(alpha_b.dtype)
            out = part if out is None else out.add_(part)
        return out

    def grad_columns(self, block: int, c0: int, c1: int, g: torch.Tensor) -> torch.Tensor:
        """dL/dalpha_b = B[:, c0:c1] @ g, chunk by chunk in streamed mode."""
        if self.mode == "materialized":
            return getattr(self, f"basis_{block}")[:, c0:c1].to(g.dtype) @ g
        k, step = self.blocks[block].k, self.config.chunk
        out = torch.empty(k, dtype=g.dtype, device=g.device)
        for r0 in range(0, k, step):
            r1 = min(k, r0 + step)
            out[r0:r1] = self.generate(block, r0, r1, c0, c1).to(g.dtype) @ g
        return out

    # -- exact path (canonical) ---------------------------------------------------------------------------
    def exact_columns(self, block: int, c0: int, c1: int, alpha_b: torch.Tensor | None = None) -> torch.Tensor:
        """Canonical sum over rows for columns [c0, c1) of a block; bit-identical however it is split."""
        alpha_b = (self.block_alpha(block) if alpha_b is None else alpha_b).detach()
        k = alpha_b.shape[0]
        out = torch.zeros(c1 - c0, device=alpha_b.device)
        cols = max(1, min(CANON_COLS, (1 << 22) // CANON_ROWS))
        for a in range(c0, c1, cols):
            b_ = min(c1, a + cols)
            acc = out[a - c0:b_ - c0]
            for r0 in range(0, k, CANON_ROWS):
                r1 = min(k, r0 + CANON_ROWS)
                p = alpha_b[r0:r1, None] * self.basis_rows(block, r0, r1, a, b_)
                acc = acc + tree_sum(p)
            out[a - c0:b_ - c0] = acc
        return out

    def _key(self) -> tuple:
        a = self.alpha
        return (a._version, a.data_ptr(), a.device, self.config.seed)

    def exact_segment(self, seg: Segment) -> torch.Tensor:
        if self.cache_policy == "none":
            return self.exact_columns(seg.block, seg.offset, seg.offset + seg.numel).view(seg.shape)
        key = self._key()
        hit = self._exact_cache.get(seg.block)
        if hit is None or hit[0] != key:
            b = self.blocks[seg.block]
            with torch.no_grad():
                hit = (key, self.exact_columns(b.index, 0, b.d))
            self._exact_cache[seg.block] = hit
        return hit[1][seg.offset:seg.offset + seg.numel].view(seg.shape)

    def exact_theta(self) -> torch.Tensor:
        """All basis parameters, canonical, concatenated block after block (O(d) memory)."""
        with torch.no_grad():
            return torch.cat([self.exact_columns(b.index, 0, b.d) for b in self.blocks])

    # -- distributed mode (reparam.pranc.distributed; the trainer calls these under torchrun) -------------------
    shard = None   # a PrancShard while a multi-process Trainer.fit runs

    def distributed_start(self, rank: int, world: int) -> None:
        from reparam.pranc.distributed import PrancShard

        self.shard = PrancShard(self, rank, world)

    def distributed_end(self) -> None:
        self.shard = None

    # -- bookkeeping -----------------------------------------------------------------------------------------
    @property
    def k(self) -> int:
        return int(self.alpha.numel())

    @property
    def d(self) -> int:
        return sum(b.d for b in self.blocks)

    def extra_repr(self) -> str:
        layout = "global" if self.config.budgets is None else f"per-layer ({len(self.blocks)} blocks)"
        return (f"k={self.k}, d={self.d}, layout={layout}, mode={self.mode}, seed={self.seed}, "
                f"distribution={self.config.distribution}")


class _BlockFn(torch.autograd.Function):
    """alpha_b -> theta_b = alpha_b @ B_b (materialized); backward = B_b @ g."""

    @staticmethod
    def forward(ctx, alpha_b, core: PrancCoefficients, block: int):
        ctx.core, ctx.block = core, block
        with torch.no_grad():
            return alpha_b.detach() @ getattr(core, f"basis_{block}").to(alpha_b.dtype)

    @staticmethod
    def backward(ctx, g):
        with torch.no_grad():
            return getattr(ctx.core, f"basis_{ctx.block}").to(g.dtype) @ g.contiguous(), None, None


class _SegmentFn(torch.autograd.Function):
    """alpha_b -> one tensor's weights; backward = B_seg @ g (regenerated chunk by chunk if streamed)."""

    @staticmethod
    def forward(ctx, alpha_b, core: PrancCoefficients, seg: Segment, exact: bool):
        ctx.core, ctx.seg = core, seg
        c0, c1 = seg.offset, seg.offset + seg.numel
        with torch.no_grad():
            w = core.exact_columns(seg.block, c0, c1, alpha_b) if exact else \
                core.fast_columns(alpha_b.detach(), seg.block, c0, c1)
        return w.view(seg.shape)

    @staticmethod
    def backward(ctx, g):
        core, seg = ctx.core, ctx.seg
        with torch.no_grad():
            grad = core.grad_columns(seg.block, seg.offset, seg.offset + seg.numel, g.reshape(-1).contiguous())
        return grad, None, None, None


class PrancTensor(nn.Module):
    """Parametrization of one basis tensor. Its `original` is an empty placeholder (nothing dense is kept), or
    in delta mode the pretrained tensor (frozen): the weight is then original + the generated delta."""

    reparam_method = "pranc"

    def __init__(self, core: PrancCoefficients, seg: Segment, index: int, holds_core: bool = False):
        super().__init__()
        # The coefficient module is a submodule of exactly one PrancTensor (alpha appears once in the
        # state_dict, moves with model.to, and no child is added to the user's model, which nn.Sequential
        # would call); the others keep a plain reference.
        object.__setattr__(self, "_core", core)
        if holds_core:
            self.core = core
        core._tensors.append(self)
        self.seg, self.index = seg, index

    def shared_storage(self) -> list[tuple[str, torch.Tensor]]:
        """The one coefficient vector every PRANC tensor is generated from (reparam.summary counts it once)."""
        return [("pranc coefficients", self._core.alpha)]

    def release(self) -> None:
        """Called before this parametrization is removed (core.protocol.bake): if it holds the coefficient
        module, hand it to a PRANC tensor that stays, so the remaining layers keep their alpha."""
        core = self._core
        core._tensors = [t for t in core._tensors if t is not self]
        if "core" in self._modules:
            del self._modules["core"]
            if core._tensors:
                core._tensors[0].core = core

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        generated = self.generated()
        # delta mode: whichever basis generates it, the delta adds to the pretrained tensor; alpha = 0
        # gives +0.0 and the pretrained weights exactly
        return original + generated if self._core.config.delta else generated

    def generated(self) -> torch.Tensor:
        """The generated tensor (the whole weight, or the delta in delta mode)."""
        core, seg = self._core, self.seg
        if self.training and core.mode == "materialized" and core.shard is None:
            return core.train_segment(self.index)
        alpha_b = core.block_alpha(seg.block)
        if not self.training:
            if torch.is_grad_enabled() and core.alpha.requires_grad:
                return _SegmentFn.apply(alpha_b, core, seg, True)
            return core.exact_segment(seg)
        if core.shard is not None:   # several processes: each generates only its rows of the basis
            return core.shard.segment(alpha_b, seg)
        return _SegmentFn.apply(alpha_b, core, seg, False)

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        return value if self._core.config.delta else value.new_empty(0)

    def extra_repr(self) -> str:
        return f"{self.seg.tensor} {list(self.seg.shape)} <- block {self.seg.block} cols {self.seg.offset}+"


def _is_batchnorm(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm)


def _plan(model: nn.Module, config: PrancConfig, filter_fn: FilterFn | None):
    """Layout + ownership check, before anything changes."""
    blocks, segments = build_layout(model, config, filter_fn)
    modules = dict(model.named_modules())
    claim("pranc", [(s.module, modules[s.module], s.tensor) for s in segments], may_follow=(),
          hint=lambda other: "apply PRANC first, then " + other if other in ("compander", "tickets") else "")
    return blocks, segments


def apply_pranc(model: nn.Module, config: PrancConfig | None = None, filter_fn: FilterFn | None = None
                ) -> PrancCoefficients:
    """Reparametrize `model` in place; returns the coefficient module (see `apply` for the handle).

    filter_fn(module, name) -> bool picks the basis layers (default: every Conv, Linear, Embedding and
    MultiheadAttention input projection); their weight (and bias, unless config.include_bias is False)
    are generated from alpha. The layers' current values are replaced by basis network 0 (init "e0").
    A wrong or degenerate setting raises ReparamError; k >= d warns because nothing is compressed.
    """
    config = config or PrancConfig()
    if not isinstance(config, PrancConfig):
        raise ReparamError(f"config must be a reparam.pranc.Config, got {type(config).__name__}")
    config.validate()
    blocks, segments = _plan(model, config, filter_fn)
    d = sum(b.d for b in blocks)
    k = sum(b.k for b in blocks)
    if k >= d:
        warnings.warn(f"PRANC k={k} >= d={d} basis parameters: nothing is compressed", stacklevel=2)
    too_big = [b for b in blocks if b.k > b.d]
    if config.budgets is not None and too_big:
        warnings.warn(f"layer {too_big[0].name!r} has budget {too_big[0].k} > its {too_big[0].d} parameters",
                      stacklevel=2)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    basis_names = {(s.module, s.tensor) for s in segments}
    core = PrancCoefficients(config, blocks, segments).to(device)
    if config.mode == "materialized":
        core.set_mode("materialized")
    modules = dict(model.named_modules())
    for i, seg in enumerate(segments):
        m = modules[seg.module]
        parametrize.register_parametrization(m, seg.tensor, PrancTensor(core, seg, i, holds_core=i == 0),
                                             unsafe=True)
        getattr(m.parametrizations, seg.tensor).original.requires_grad_(False)
    if config.delta:   # fine-tuning: alpha is the only trainable number, the pretrained model stays as it is
        for p in model.parameters():
            if p is not core.alpha:
                p.requires_grad_(False)
    elif config.other_params == "freeze":
        for name, m in model.named_modules():
            if _is_batchnorm(m) or ".parametrizations." in f".{name}.":   # PRANC's own alpha stays trainable
                continue
            for pname, p in m.named_parameters(recurse=False):
                if (name, pname) not in basis_names:
                    p.requires_grad_(False)
    return core


def apply(model: nn.Module, config: PrancConfig | None = None, filter_fn: FilterFn | None = None) -> Applied:
    """PRANC on `model` in place (see apply_pranc); returns the handle. `handle.extra["core"]` is the
    coefficient module (also `pranc_core(model)`). PRANC needs no training hooks: train alpha (and the
    BatchNorm parameters) with any optimizer over model.parameters(). Delta mode has one, which keeps the
    pretrained BatchNorm statistics (`reparam.train.hooks.KeepNormStatistics`)."""
    core = apply_pranc(model, config, filter_fn)
    rest, dense_total = report_left_dense("pranc", model)
    layers = list(dict.fromkeys(s.module for s in core.segments))
    hooks, what = [], f"seed + {core.k:,} coefficients"
    if core.config.delta:   # the base's BatchNorm statistics are part of the pretrained function
        from reparam.train.hooks import KeepNormStatistics

        hooks, what = [KeepNormStatistics(model)], what + " over the pretrained weights"
    return Applied("pranc", core.config, layers, [s.state_name for s in core.segments], core.k,
                   what, dense_total, rest, hooks=hooks, extra={"core": core})


def pranc_core(model: nn.Module) -> PrancCoefficients:
    """The coefficient module of a PRANC model."""
    for module in model.modules():
        if isinstance(module, PrancTensor):
            return module._core
    raise ReparamError("the model has no PRANC parametrization (use reparam.pranc.apply)")


def set_inference(model: nn.Module, policy: str = "block") -> None:
    """'block': eval-mode weights are rebuilt once per alpha and kept (fast repeated inference);
    'layerwise': each layer's weights are rebuilt when the layer runs and dropped after (peak memory one
    layer). Both give the same bits."""
    core = pranc_core(model)
    if policy not in ("block", "layerwise"):
        raise ReparamError(f"unknown inference policy {policy!r}; allowed: block, layerwise")
    core.cache_policy = "block" if policy == "block" else "none"
    core._exact_cache.clear()


def fold(model: nn.Module) -> nn.Module:
    """Plain parameters holding the exact (canonical) weights, bit-identical to what the file decodes to;
    drops alpha. A method chained on a PRANC tensor (the compander, masks) is baked in with it. In delta
    mode this merges: pretrained + delta become the layer's (trainable) weights."""
    pranc_core(model)
    was_training = model.training
    bake_method(model, "pranc")
    model.train(was_training)
    return model


fold_pranc = fold   # the old name, kept for one release


def basis_state_names(core: PrancCoefficients) -> set[str]:
    return {s.state_name for s in core.segments}


def dense_param_count(core: PrancCoefficients, model: nn.Module) -> int:
    """Parameters of the equivalent dense model: basis parameters + every other parameter."""
    other = sum(p.numel() for n, p in model.named_parameters()
                if ".parametrizations." not in n)
    return core.d + other


def bytes_of_alpha(k: int, dtype: str) -> int:
    return k * (2 if dtype == "float16" else 4)


def _fmt(x: float) -> str:
    return f"{x:.1f}" if math.isfinite(x) else "inf"
