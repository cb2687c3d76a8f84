"""The Fastfood basis: a structured random basis whose cost does not grow with k.

Li et al. (2018, "Measuring the intrinsic dimension of objective landscapes") train theta = P alpha with
P a Fastfood transform. Here, for a layout block with k_b coefficients and d_b weights:

    n          = 2 ** ceil(log2 d_b)                 (the transform's length; weights i >= d_b are dropped)
    sub-blocks   c = 0 .. ceil(k_b / n) - 1, each with its own independent (B_c, Pi_c, G_c)
    u_c        = H G_c Pi_c H B_c a_c                a_c = alpha_b[c n : (c + 1) n], zero-padded to n
    y          = (...((u_0 + u_1) + u_2) ...)        sub-blocks added in order
    theta_i    = y_i * S_i                           i < d_b

with H the unnormalised Walsh-Hadamard transform, B_c a diagonal of random signs, Pi_c a random
permutation ((Pi x)_m = x[perm_m]), G_c a diagonal of N(0, 1) values and S_i a per-layer constant chosen
so that the basis entries have the i.i.d. basis's per-layer variance: column j of H G Pi H B has
E[entry^2] = n, so S = scale / sqrt(3 n) for the default-init distribution (U(+-scale) has variance
scale^2 / 3) and S = sigma / sqrt(n) for the Gaussian one. Training at alpha = e_0 therefore starts from
weights with the default initialisation's variance, and learning rates carry over. (The entries are near
Gaussian rather than uniform: only the variance is matched.) A product costs O(n log n) per sub-block
and O(n) memory; for k <= n (every model we train) one sub-block, whatever k is.

Bit-exact definition ("reparam-fastfood", version 1), all float32:
* B_c, G_c, Pi_c come from reparam.core.generator (reparam-splitmix64 v1) with the block id
  STREAM + b * 2**24 + c: B_c[m] = +1 if lane(row 0, col m) >= 0 else -1; G_c[m] = the Gaussian table
  at lane(row 1, col m); perm = the order that sorts the (distinct) 64-bit hashes of row 2, quads 0..n-1.
* H: stages h = n/2, n/4, ..., 1; in each, every pair (i, i + h) with bit h of i clear becomes
  (x_i + x_{i+h}, x_i - x_{i+h}). Every multiply is one IEEE multiply; S_i = float32(scale_i * m) with
  m = 1 / sqrt(3 n) or 1 / sqrt(n) computed in double precision.
Every operation is elementwise in a fixed order, so the weights are bit-identical whatever the thread
count, the process count, the batching of sub-blocks or the device, and the training path computes
exactly the weights the file decodes to. `reference_weights` below is this definition in plain Python;
the tests compare the tensor code with it.

No PyPI package was used for the transform: the maintained ones are CUDA-only (fast-hadamard-transform),
float64/int-only on CPU and GPL (pyfwht), or the same plain-torch recursion (hadamard-transform); none
promises a fixed butterfly order, which the bit-exact format needs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from reparam.core import generator
from reparam.pranc.basis import Basis, held, hold

if TYPE_CHECKING:
    from reparam.pranc.core import PrancCoefficients

FASTFOOD_NAME = "reparam-fastfood"
FASTFOOD_VERSION = 1
STREAM = 1 << 32            # generator block ids of the Fastfood diagonals (the i.i.d. basis uses 0, 1, ...)
_GROUP_ELEMS = 1 << 22      # sub-blocks transformed together: at most this many floats (bits do not depend on it)
_SPLIT_MIN = 1 << 12        # from this length on, the transform works on an [n1, n2] matrix and transposes once


def transform_length(d: int) -> int:
    return 1 << max(0, (d - 1).bit_length())


def stream_id(block: int, sub: int) -> int:
    return STREAM + block * (1 << 24) + sub


def multiplier(distribution: str, n: int) -> float:
    """m in S_i = float32(scale_i * m): the per-entry variance of H G Pi H B is n."""
    return 1.0 / math.sqrt(3 * n) if distribution == "default-init" else 1.0 / math.sqrt(n)


# ---------------------------------------------------------------- the Walsh-Hadamard transform
def _stages(x: torch.Tensor, y: torch.Tensor, rows: int, hs: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Butterfly stages h in `hs` (in that order) along the last dim of x [C, rows] (ping-pong with y)."""
    c = x.shape[0]
    for h in hs:
        a = x.view(c, rows // (2 * h), 2, h)
        b = y.view(c, rows // (2 * h), 2, h)
        torch.add(a[:, :, 0], a[:, :, 1], out=b[:, :, 0])
        torch.sub(a[:, :, 0], a[:, :, 1], out=b[:, :, 1])
        x, y = y, x
    return x, y


def fwht(x: torch.Tensor, work: torch.Tensor | None = None) -> torch.Tensor:
    """Unnormalised Walsh-Hadamard transform of every row of x [C, n] (n a power of 2), stages
    h = n/2, ..., 1 in that order. x is overwritten; the result is returned (x or `work`).

    For long rows the stages on the low index bits would touch runs of 1, 2, 4... floats; instead the row
    is seen as an [n1, n2] matrix: the stages of the high bits run along n1, the matrix is transposed once,
    the stages of the low bits run along n2 (now the outer index), and it is transposed back. Each element
    still goes through the same additions in the same order, so the bits do not change.
    """
    c, n = x.shape
    if n == 1:
        return x
    y = torch.empty_like(x) if work is None else work
    hs = [1 << s for s in range(n.bit_length() - 2, -1, -1)]          # n/2, ..., 1
    if n < _SPLIT_MIN:
        return _stages(x, y, n, hs)[0]
    n2 = 1 << ((n.bit_length() - 1) // 2)
    n1 = n // n2
    x, y = _stages(x, y, n, [h for h in hs if h >= n2])
    y.view(c, n2, n1).copy_(x.view(c, n1, n2).transpose(1, 2))      # low bits now index the rows
    x, y = y, x
    x, y = _stages(x, y, n, [h * n1 for h in hs if h < n2])
    y.view(c, n1, n2).copy_(x.view(c, n2, n1).transpose(1, 2))
    return y


# ---------------------------------------------------------------- the basis
class FastfoodBasis(Basis):
    name = "fastfood"
    whole_block = True
    exact_is_fast = True

    def __init__(self, core: PrancCoefficients):
        super().__init__(core)
        self._diag: dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._scale: dict[tuple[int, str], torch.Tensor] = {}

    def header(self) -> dict:
        return {"generator": {"name": FASTFOOD_NAME, "version": FASTFOOD_VERSION}}

    def n(self, block: int) -> int:
        return transform_length(self.core.blocks[block].d)

    def subblocks(self, block: int) -> int:
        return -(-self.core.blocks[block].k // self.n(block))

    def diagonals(self, block: int, sub: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(signs B, perm, Gaussians G) of one sub-block, float32 / int64 [n], cached per device."""
        key = (block, sub, str(device))
        if key not in self._diag:
            n, seed, sid = self.n(block), self.core.seed, stream_id(block, sub)
            lanes = generator.lanes(seed, sid, 0, 2, 0, n, device)
            signs = torch.where(lanes[0] >= 0, 1.0, -1.0).to(torch.float32)
            gauss = generator.gaussian_table_tensor(device)[lanes[1].to(torch.int64) + 32768]
            perm = torch.sort(generator.hashes(seed, sid, 2, 0, n, device)).indices   # keys are distinct
            self._diag[key] = (signs, perm, gauss)
        return self._diag[key]

    def scale_vector(self, block: int, device: torch.device) -> torch.Tensor:
        """S [d_b]: float32(scale * m) per tensor, computed in double precision from the float32 scale."""
        key = (block, str(device))
        if key not in self._scale:
            core = self.core
            m = multiplier(core.config.distribution, self.n(block))
            s = torch.empty(core.blocks[block].d, dtype=torch.float32)
            for seg in core.segments:
                if seg.block == block:
                    s[seg.offset:seg.offset + seg.numel] = float(seg.scale) * m
            self._scale[key] = s.to(device)
        return self._scale[key]

    def _groups(self, block: int):
        n, subs = self.n(block), self.subblocks(block)
        per = max(1, _GROUP_ELEMS // n)
        for c0 in range(0, subs, per):
            yield c0, min(subs, c0 + per)

    # -- the transform and its transpose ----------------------------------------------------------------
    def transform(self, alpha_b: torch.Tensor, block: int) -> torch.Tensor:
        """theta_b = S * sum_c H G_c Pi_c H B_c a_c (the definition above), [d_b]."""
        dev, dt = alpha_b.device, alpha_b.dtype
        n, k, d = self.n(block), alpha_b.shape[0], self.core.blocks[block].d
        y = None
        for c0, c1 in self._groups(block):
            x = torch.zeros(c1 - c0, n, dtype=dt, device=dev)
            lo, hi = c0 * n, min(k, c1 * n)
            x.view(-1)[:hi - lo] = alpha_b[lo:hi]
            diags = [self.diagonals(block, c, dev) for c in range(c0, c1)]
            x.mul_(torch.stack([s for s, _, _ in diags]).to(dt))
            x = fwht(x)
            x = torch.gather(x, 1, torch.stack([p for _, p, _ in diags]))
            x.mul_(torch.stack([g for _, _, g in diags]).to(dt))
            x = fwht(x)
            for row in x:
                y = row.clone() if y is None else y.add_(row)
        return y[:d].mul_(self.scale_vector(block, dev).to(dt))

    def transpose(self, g: torch.Tensor, block: int) -> torch.Tensor:
        """dL/dalpha_b = M^T g = B H Pi^T G H (S g, zero-padded), [k_b]."""
        dev, dt = g.device, g.dtype
        n, k, d = self.n(block), self.core.blocks[block].k, g.shape[0]
        w = torch.zeros(1, n, dtype=dt, device=dev)
        torch.mul(g, self.scale_vector(block, dev).to(dt), out=w[0, :d])
        w = fwht(w)[0]
        out = torch.empty(k, dtype=dt, device=dev)
        for c0, c1 in self._groups(block):
            diags = [self.diagonals(block, c, dev) for c in range(c0, c1)]
            z = w[None, :] * torch.stack([gg for _, _, gg in diags]).to(dt)
            x = torch.empty_like(z).scatter_(1, torch.stack([p for _, p, _ in diags]), z)
            x = fwht(x)
            x.mul_(torch.stack([s for s, _, _ in diags]).to(dt))
            lo, hi = c0 * n, min(k, c1 * n)
            out[lo:hi] = x.view(-1)[:hi - lo]
        return out

    # -- the Basis interface -------------------------------------------------------------------------------
    def block_theta(self, alpha_b: torch.Tensor, block: int) -> torch.Tensor:
        return _FastfoodFn.apply(alpha_b, self, block)

    def exact(self, block: int, c0: int, c1: int, alpha_b: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.transform(alpha_b.detach(), block)[c0:c1]

    def explicit(self, block: int, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
        """Rows r0..r1 of the implicit basis matrix (the weights at alpha = e_j), columns c0..c1."""
        k = self.core.blocks[block].k
        dev = self.core.alpha.device
        out = torch.empty(max(r1 - r0, 0), max(c1 - c0, 0), device=dev)
        with torch.no_grad():
            for j in range(r0, r1):
                e = torch.zeros(k, device=dev)
                e[j] = 1.0
                out[j - r0] = self.transform(e, block)[c0:c1]
        return out


class _FastfoodFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, alpha_b, basis: FastfoodBasis, block: int):
        hold(ctx, basis)
        ctx.block = block
        with torch.no_grad():
            return basis.transform(alpha_b.detach(), block)

    @staticmethod
    def backward(ctx, g):
        with torch.no_grad():
            return held(ctx).transpose(g.contiguous(), ctx.block), None, None


# ---------------------------------------------------------------- the definition in plain Python
def reference_weights(seed: int, block: int, alpha: list[float], d: int, scales: list[float],
                      distribution: str = "default-init") -> list[float]:
    """theta_b of the definition above with Python integers and numpy float32 scalars, one operation at a
    time (slow: for tests with n of a few dozen). scales[i]: the float32 layer scale of weight i."""
    import numpy as np

    f32 = np.float32
    n, k = transform_length(d), len(alpha)
    table = generator.gaussian_table()
    m = multiplier(distribution, n)

    def fwht_ref(x: list) -> list:
        x = list(x)
        h = n // 2
        while h >= 1:
            for i in range(n):
                if not i & h:
                    a, b = x[i], x[i + h]
                    x[i], x[i + h] = f32(a + b), f32(a - b)
            h //= 2
        return x

    y = None
    for c in range(-(-k // n)):
        sid = stream_id(block, c)
        signs = [f32(1.0) if generator.lane_int(seed, sid, 0, i) >= 0 else f32(-1.0) for i in range(n)]
        gauss = [f32(table[generator.lane_int(seed, sid, 1, i) + 32768]) for i in range(n)]
        key = generator.row_key_int(seed, sid, 2)
        hashes = [generator.mix64_int(key + (q + 1) * generator.GOLDEN) for q in range(n)]
        signed = [h - (1 << 64) if h >= 1 << 63 else h for h in hashes]
        perm = sorted(range(n), key=lambda q: signed[q])
        x = [f32(alpha[c * n + i]) if c * n + i < k else f32(0.0) for i in range(n)]
        x = [f32(x[i] * signs[i]) for i in range(n)]
        x = fwht_ref(x)
        x = [x[perm[i]] for i in range(n)]
        x = [f32(x[i] * gauss[i]) for i in range(n)]
        x = fwht_ref(x)
        y = x if y is None else [f32(y[i] + x[i]) for i in range(n)]
    return [float(f32(y[i] * f32(float(scales[i]) * m))) for i in range(d)]
