"""The PRANC parametrization: theta = sum_j alpha_j * basis_j on any nn.Module.

`apply_pranc(model, config, filter_fn)` keeps a `PrancCoefficients` module (alpha, an ordinary
nn.Parameter, so any optimizer and state_dict see it) inside the first PRANC parametrization and registers
a parametrization on every basis tensor (Conv/Linear weight and bias by default). Which matrix the basis
is lives behind `reparam.pranc.basis.Basis` (the i.i.d. basis there, the structured Fastfood basis in
reparam.pranc.fastfood): this module only asks it for a block's training-mode weights (`block_theta`,
differentiable) and its exact weights (`exact`). The basis is never in the state_dict. BatchNorm and other
non-basis parameters are left alone and train as usual.

Two ways of combining alpha with the i.i.d. basis, one math:
* training (module in train mode): fast matmuls, alpha @ B_c per chunk; gradients through a custom
  autograd Function (grad alpha_c = B_c g), regenerating chunks in streamed mode;
* exact (module in eval mode, and every reconstruction): the *canonical* sum, made only of elementwise
  IEEE multiplies and adds in a fixed order (rows in fixed groups of CANON_ROWS summed as a pairwise tree,
  groups added in order). Every element's value depends only on alpha and its own basis column, so it is
  bit-identical whatever the chunking, the column blocking, the layer-by-layer order, the thread count or
  the device. The weights a model evaluates with are therefore exactly the weights decoded from its file.
The Fastfood basis has one path: its transform is already a fixed sequence of elementwise operations, so
training, evaluation and decoding compute the same bits.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from reparam.core import generator
from reparam.core.errors import ReparamError
from reparam.core.generator import tree_sum
from reparam.core.parametrize import FilterFn, SharedCoreParam
from reparam.core.protocol import Applied, bake_method, claim, report_left_dense
from reparam.pranc.basis import CANON_COLS, CANON_ROWS, Basis, _ExactSegmentFn, make_basis, tree_sum_
from reparam.pranc.config import PrancConfig
from reparam.pranc.layout import Block, Segment, build_layout

__all__ = ["CANON_COLS", "CANON_ROWS", "PrancCoefficients", "PrancTensor", "apply", "apply_pranc", "fold",
           "fold_pranc", "pranc_core", "set_inference", "tree_sum", "tree_sum_"]

class PrancCoefficients(nn.Module):
    """alpha (one vector for all blocks), the layout, and the basis generator/materialized basis."""

    def __init__(self, config: PrancConfig, blocks: list[Block], segments: list[Segment]):
        super().__init__()
        self.config = config
        self.blocks = blocks
        self.segments = segments
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
        self.basis: Basis = make_basis(self)
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
        """Use another basis seed (the 'wrong seed' ablation); rebuilds what the basis keeps, drops caches."""
        self.config.seed = int(seed)
        self._exact_cache.clear()
        self._train_cache.clear()
        self.basis = make_basis(self)
        self.basis.set_mode(self.mode)

    def scale(self, block: int) -> torch.Tensor:
        """Per-column scale of a block (1/sqrt(fan_in) or sigma per tensor), float32 [d_b]."""
        return getattr(self, f"scale_{block}")

    def generate(self, block: int, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
        """Explicit basis entries B_b[r0:r1, c0:c1] (float32, on alpha's device), whatever the basis."""
        return self.basis.explicit(block, r0, r1, c0, c1)

    def set_mode(self, mode: str) -> None:
        """Switch between materialized (i.i.d.: one contiguous [k_b, d_b] matrix per block, like the
        official code's basis_mat) and streamed. The Fastfood basis has nothing to materialize."""
        if mode not in ("materialized", "streamed"):
            raise ReparamError(f"unknown PRANC mode {mode!r}; allowed: materialized, streamed")
        self._train_cache.clear()
        self.mode = "streamed"
        self.basis.set_mode(mode)
        self.mode = mode

    def train_segment(self, seg_index: int) -> torch.Tensor:
        """Training-mode weights of one tensor when the basis computes whole blocks (i.i.d. materialized:
        one gemv per block and forward pass, the official algorithm; Fastfood: one transform).

        The block's theta is computed once and handed out as one output per tensor of the block. One
        `split` rather than a slice per tensor lets the backward concatenate the tensors' gradients once
        instead of scattering each slice's gradient into its own zero-filled block-sized buffer. A tensor
        asking twice (a second forward pass, weight sharing) triggers a fresh computation. Reusing the
        node is safe either way: it is linear and saves nothing.
        """
        seg = self.segments[seg_index]
        key = self._key() + (torch.is_grad_enabled(),)
        hit = self._train_cache.get(seg.block)
        if hit is None or hit[0] != key or seg_index in hit[2]:
            segs = self._block_segments(seg.block)
            theta = self.basis.block_theta(self.block_alpha(seg.block), seg.block)
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

    # -- exact path (canonical) ---------------------------------------------------------------------------
    def exact_columns(self, block: int, c0: int, c1: int, alpha_b: torch.Tensor | None = None) -> torch.Tensor:
        """Canonical weights of columns [c0, c1) of a block; bit-identical however it is split."""
        alpha_b = (self.block_alpha(block) if alpha_b is None else alpha_b).detach()
        return self.basis.exact(block, c0, c1, alpha_b)

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
        if self.config.basis != "iid":     # Fastfood: each process does the whole O(d log d) transform
            return
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
        return (f"k={self.k}, d={self.d}, basis={self.config.basis}, layout={layout}, mode={self.mode}, "
                f"seed={self.seed}, distribution={self.config.distribution}")


class PrancTensor(SharedCoreParam):
    """Parametrization of one basis tensor. Its `original` is an empty placeholder (nothing dense is kept), or
    in delta mode the pretrained tensor (frozen): the weight is then original + the generated delta."""

    reparam_method = "pranc"

    def __init__(self, core: PrancCoefficients, seg: Segment, index: int, holds_core: bool = False):
        super().__init__(core, holds_core)   # the coefficient module lives in one PrancTensor (SharedCoreParam)
        self.seg, self.index = seg, index

    def shared_storage(self) -> list[tuple[str, torch.Tensor]]:
        """The one coefficient vector every PRANC tensor is generated from (reparam.summary counts it once)."""
        return [("pranc coefficients", self._core.alpha)]

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        generated = self.generated()
        # delta mode: whichever basis generates it, the delta adds to the pretrained tensor; alpha = 0
        # gives +0.0 and the pretrained weights exactly
        return original + generated if self._core.config.delta else generated

    def generated(self) -> torch.Tensor:
        """The generated tensor (the whole weight, or the delta in delta mode)."""
        core, seg = self._core, self.seg
        basis = core.basis
        if core.shard is not None and self.training:   # several processes: each generates only its rows
            return core.shard.segment(core.block_alpha(seg.block), seg)
        grad = torch.is_grad_enabled() and core.alpha.requires_grad
        if self.training or (grad and basis.exact_is_fast):
            if basis.whole_block:
                return core.train_segment(self.index)
            return basis.segment_theta(core.block_alpha(seg.block), seg)
        if grad:
            return _ExactSegmentFn.apply(core.block_alpha(seg.block), basis, seg)
        return core.exact_segment(seg)

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
    """PRANC on `model` in place (see apply_pranc); returns the handle. The generated weights replace the
    taken layers' current ones (a trained model's weights are not kept); `Config(delta=True)` keeps them
    and learns a generated delta on top. `handle.extra["core"]` is the coefficient module (also
    `pranc_core(model)`). PRANC needs no training hooks: train alpha (and the
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
