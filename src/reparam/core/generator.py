"""A portable, counter-based generator for PRANC basis entries.

Entry (j, i) of basis block b is a pure function of (seed, b, j, i): there is no generator state, so any
sub-rectangle of the k x d basis can be generated alone (one chunk of rows, one layer's columns, one
filter) and is bit-identical to the same entries of the whole matrix, whatever the chunk size, thread
count, process count or device. Only int64 tensor ops (wrapping multiply, xor, shifts, masks) and exact
integer -> float32 conversions are used, so CPU and CUDA give the same bits.

Construction ("reparam-splitmix64", version 1), all arithmetic modulo 2**64:
    mix(z)      = the SplitMix64 finaliser (xor-shift 30, * C1, xor-shift 27, * C2, xor-shift 31)
    k0          = mix(seed + GOLDEN)
    kb          = mix(k0 + (b + 1) * C3)                     (block key)
    key_j       = mix(kb + (j + 1) * GOLDEN)                 (row key)
    h(j, q)     = mix(key_j + (q + 1) * GOLDEN)              (one 64-bit hash per quad q = i // 4)
    s(j, i)     = signed 16-bit lane (i % 4) of h(j, i // 4), lane 0 = least significant bits
Unit values (float32, exact):
    uniform     u = (2 s + 1) / 2**16            symmetric in (-1, 1), 65,536 levels
    gaussian    z = T[s + 32768]                 T = N(0, 1) quantiles at (q + 0.5) / 65536, as float32
A layer's entry is then float32(unit * scale) with one IEEE multiply (scale = 1/sqrt(fan_in) for the
default-init distribution, sigma for the Gaussian one).
"""

from __future__ import annotations

import sys
import threading
import zlib
from functools import lru_cache
from statistics import NormalDist

import torch

from reparam.core import genkernel

GENERATOR_NAME = "reparam-splitmix64"
GENERATOR_VERSION = 1
DISTRIBUTIONS = ("uniform", "gaussian")

_MASK64 = (1 << 64) - 1


def _s64(x: int) -> int:
    x &= _MASK64
    return x - (1 << 64) if x >= (1 << 63) else x


GOLDEN = 0x9E3779B97F4A7C15
C1 = 0xBF58476D1CE4E5B9
C2 = 0x94D049BB133111EB
C3 = 0xD6E8FEB86659FD93
_G, _C1, _C2 = _s64(GOLDEN), _s64(C1), _s64(C2)
_TILE = 1 << 17        # int64 hashes per tile on CPU (larger tiles: fewer Python calls; 2**17 was fastest)

# CRC32 of the float32 Gaussian table; a platform whose libm gives a different table fails loudly.
GAUSS_TABLE_CRC32 = 0x1296E3AD


# ---------------------------------------------------------------- pure-Python reference (the definition)
def mix64_int(z: int) -> int:
    z &= _MASK64
    z ^= z >> 30
    z = (z * C1) & _MASK64
    z ^= z >> 27
    z = (z * C2) & _MASK64
    return z ^ (z >> 31)


def block_key_int(seed: int, block: int) -> int:
    k0 = mix64_int((seed & _MASK64) + GOLDEN)
    return mix64_int(k0 + (block + 1) * C3)


def row_key_int(seed: int, block: int, row: int) -> int:
    return mix64_int(block_key_int(seed, block) + (row + 1) * GOLDEN)


def lane_int(seed: int, block: int, row: int, col: int) -> int:
    """The signed 16-bit integer behind entry (row, col) of block `block`."""
    h = mix64_int(row_key_int(seed, block, row) + (col // 4 + 1) * GOLDEN)
    v = (h >> (16 * (col % 4))) & 0xFFFF
    return v - 65536 if v >= 32768 else v


def reference_unit(seed: int, block: int, row: int, col: int, distribution: str = "uniform") -> float:
    """One unit value computed with Python integers only; the tests check the tensor code against it."""
    s = lane_int(seed, block, row, col)
    if distribution == "uniform":
        return (2 * s + 1) / 65536.0
    import numpy as np

    return float(np.float32(gaussian_table()[s + 32768]))


# ---------------------------------------------------------------- tensor implementation
def _mix_(z: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
    """SplitMix64 finaliser in place on an int64 tensor (logical shifts emulated with masks); t: scratch."""
    t = torch.empty_like(z) if t is None else t
    torch.bitwise_right_shift(z, 30, out=t)
    t.bitwise_and_((1 << 34) - 1)
    z.bitwise_xor_(t)
    z.mul_(_C1)
    torch.bitwise_right_shift(z, 27, out=t)
    t.bitwise_and_((1 << 37) - 1)
    z.bitwise_xor_(t)
    z.mul_(_C2)
    torch.bitwise_right_shift(z, 31, out=t)
    t.bitwise_and_((1 << 33) - 1)
    z.bitwise_xor_(t)
    return z


def row_keys(seed: int, block: int, row_start: int, row_end: int,
             device: torch.device | str | None = None) -> torch.Tensor:
    rows = torch.arange(row_start + 1, row_end + 1, dtype=torch.int64, device=device)
    z = rows.mul_(_G).add_(_s64(block_key_int(seed, block)))
    return _mix_(z)


def hashes(seed: int, block: int, row: int, q_start: int, q_end: int,
           device: torch.device | str | None = None) -> torch.Tensor:
    """int64 [q_end - q_start]: the 64-bit hashes h(row, q) whose 16-bit lanes are the entries of `row`."""
    z = torch.arange(q_start + 1, q_end + 1, dtype=torch.int64, device=device).mul_(_G)
    return _mix_(z.add_(row_keys(seed, block, row, row + 1, device)[0]))


def lanes(seed: int, block: int, row_start: int, row_end: int, col_start: int, col_end: int,
          device: torch.device | str | None = None) -> torch.Tensor:
    """int16 tensor [rows, cols] of the raw 16-bit lanes for a rectangle of the basis."""
    _check_byteorder()
    if row_end <= row_start or col_end <= col_start:
        return torch.empty(max(row_end - row_start, 0), max(col_end - col_start, 0),
                           dtype=torch.int16, device=device)
    q0, q1 = col_start // 4, (col_end - 1) // 4 + 1
    keys = row_keys(seed, block, row_start, row_end, device)
    ctr = torch.arange(q0 + 1, q1 + 1, dtype=torch.int64, device=device).mul_(_G)
    z = torch.empty(row_end - row_start, q1 - q0, dtype=torch.int64, device=device)
    t = torch.empty_like(z)
    for a, b, qa, qb in _tiles(z.shape[0], z.shape[1], z.device):
        _hash_tile(keys[a:b], ctr[qa:qb], z[a:b, qa:qb], t[a:b, qa:qb])
    lo = col_start - 4 * q0
    return z.view(torch.int16)[:, lo:lo + (col_end - col_start)]


def _check_byteorder() -> None:
    if sys.byteorder != "little":  # the int64 -> int16 view assumes little-endian lane order
        raise RuntimeError("the PRANC generator needs a little-endian machine")


def _tiles(rows: int, quads: int, device: torch.device):
    """(row range, quad range) tiles of about _TILE hashes, so the dozen int64 passes stay in cache on
    CPU (one tile on other devices). The bits do not depend on the tiling."""
    if device.type != "cpu":
        yield 0, rows, 0, quads
        return
    tq = min(quads, _TILE)
    tr = max(1, _TILE // tq)
    for qa in range(0, quads, tq):
        for a in range(0, rows, tr):
            yield a, min(rows, a + tr), qa, min(quads, qa + tq)


def _hash_tile(keys: torch.Tensor, ctr: torch.Tensor, z: torch.Tensor, t: torch.Tensor) -> None:
    """z[r, q] = mix(keys[r] + ctr[q]) in place (z, t: int64 [rows, quads], t is scratch)."""
    torch.add(ctr[None, :], keys[:, None], out=z)
    _mix_(z, t)


class _Scratch:
    """Buffers reused across calls (per thread and device), grown as needed: a fresh multi-megabyte tensor
    per call costs page faults that took longer than the hashing itself."""

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self, name: str, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        bufs = self._local.__dict__.setdefault("bufs", {})
        key = (name, dtype, str(device))
        buf = bufs.get(key)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(max(numel, 1), dtype=dtype, device=device)
            bufs[key] = buf
        return buf[:numel]

    def clear(self) -> None:
        self._local.__dict__.pop("bufs", None)


scratch = _Scratch()


def fill_block(out: torch.Tensor, seed: int, block: int, row_start: int, row_end: int, col_start: int,
               col_end: int, distribution: str = "uniform", scale: torch.Tensor | None = None,
               factor: torch.Tensor | None = None, keys: torch.Tensor | None = None) -> torch.Tensor:
    """Write the float32 entries of a rectangle into `out` [rows, cols] (any row stride, unit column stride):
    the unit values, or float32(unit * scale[col]) with one IEEE multiply when `scale` [cols] is given.
    `factor` = uniform_factor(scale), when the caller keeps it (uniform only; saves a pass per call);
    `keys` = row_keys(seed, block, row_start, row_end), likewise.

    The same bits as `unit_block(...) * scale`, produced tile by tile while the hashes are in cache, into
    reused scratch buffers. Uniform: unit * scale = (s + 0.5) * (scale * 2**-15), where s + 0.5 is exact
    and scale * 2**-15 only moves the exponent, so the one rounding of the product is the same.
    """
    _check_byteorder()
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {distribution!r}; allowed: {', '.join(DISTRIBUTIONS)}")
    rows, cols = row_end - row_start, col_end - col_start
    if rows <= 0 or cols <= 0:
        return out
    dev = out.device
    q0, q1 = col_start // 4, (col_end - 1) // 4 + 1
    lo = col_start - 4 * q0
    keys = row_keys(seed, block, row_start, row_end, dev) if keys is None else keys
    if distribution == "uniform":
        factor = uniform_factor(scale, dev) if factor is None else factor
        table = None
    else:
        factor, table = None, gaussian_table_tensor(dev)
    if genkernel.fill(out, keys, q0, lo, factor, table, None if factor is not None else scale):   # compiled, same bits
        return out
    ctr = torch.arange(q0 + 1, q1 + 1, dtype=torch.int64, device=dev).mul_(_G)
    tq = min(q1 - q0, _TILE) if dev.type == "cpu" else q1 - q0
    tr = max(1, _TILE // tq) if dev.type == "cpu" else rows
    zbuf = scratch.get("z", tr * tq, torch.int64, dev)
    tbuf = scratch.get("t", tr * tq, torch.int64, dev)
    for a, b, qa, qb in _tiles(rows, q1 - q0, dev):
        z = zbuf[:(b - a) * (qb - qa)].view(b - a, qb - qa)
        _hash_tile(keys[a:b], ctr[qa:qb], z, tbuf[:z.numel()].view_as(z))
        ca, cb = max(0, 4 * qa - lo), min(cols, 4 * qb - lo)      # output columns of this tile
        s = z.view(torch.int16)[:, lo + ca - 4 * qa:lo + cb - 4 * qa]
        o = out[a:b, ca:cb]
        if factor is not None:
            o.copy_(s)
            o.add_(0.5)
            o.mul_(factor if isinstance(factor, float) else factor[ca:cb])
        else:
            idx = scratch.get("idx", s.numel(), torch.int32, dev).view(s.shape)
            idx.copy_(s)
            idx.add_(32768)
            vals = scratch.get("vals", s.numel(), torch.float32, dev)
            torch.index_select(table, 0, idx.view(-1), out=vals)
            o.copy_(vals.view(s.shape))
            if scale is not None:
                o.mul_(scale[ca:cb])
    return out


def fused_product(kind: str, out: torch.Tensor, keys: torch.Tensor, vec: torch.Tensor, col_start: int,
                  col_end: int, distribution: str = "uniform", scale: torch.Tensor | None = None,
                  factor: torch.Tensor | float | None = None) -> bool:
    """With the compiled kernel, the basis products with the entries generated on the fly and used while in
    cache, never written out: kind "theta": out [cols] += sum_r vec[r] * entry(r, c) (vec: one coefficient
    per row key); kind "grad": out [rows] = sum_c entry(r, c) * vec[c] (vec: one value per column). The
    entries are those of fill_block (same bits); the sums' order is fixed by the kernel (see genkernel).
    Returns False, doing nothing, where the kernel is not available (no compiler, not CPU float32): the caller
    then generates tiles with fill_block."""
    _check_byteorder()
    q0 = col_start // 4
    lo = col_start - 4 * q0
    if distribution == "uniform":
        factor = uniform_factor(scale, out.device) if factor is None else factor
        table, scale = None, None
    else:
        factor, table = None, gaussian_table_tensor(out.device)
    fn = genkernel.theta if kind == "theta" else genkernel.grad
    return fn(out, keys, vec, q0, lo, factor, table, scale)


def uniform_factor(scale: torch.Tensor | None, device: torch.device | str | None = None) -> torch.Tensor | float:
    """scale * 2**-15 (exact: only the exponent moves, for any scale above 2**-100), or 2**-15."""
    if scale is None:
        return 2.0 ** -15
    if scale.numel() and not bool((scale.abs() >= 2.0 ** -100).all()):
        raise ValueError("basis scales below 2**-100 are not supported by the uniform generator")
    return scale.to(device=device, dtype=torch.float32) * (2.0 ** -15)


@lru_cache(maxsize=1)
def gaussian_table() -> tuple[float, ...]:
    nd = NormalDist()
    return tuple(nd.inv_cdf((q + 0.5) / 65536.0) for q in range(65536))


_TABLES: dict[str, torch.Tensor] = {}


def gaussian_table_tensor(device: torch.device | str | None = None) -> torch.Tensor:
    key = str(torch.device(device) if device is not None else torch.device("cpu"))
    if key not in _TABLES:
        # torch.special.ndtri in double gives the same float32 table as the Python quantiles, 7x faster;
        # the CRC decides, and the pure-Python table is the fallback
        q = (torch.arange(65536, dtype=torch.float64) + 0.5) / 65536.0
        t = torch.special.ndtri(q).to(torch.float32)
        if zlib.crc32(t.numpy().tobytes()) != GAUSS_TABLE_CRC32:
            t = torch.tensor(gaussian_table(), dtype=torch.float32)
        crc = zlib.crc32(t.numpy().tobytes())
        if crc != GAUSS_TABLE_CRC32:
            raise RuntimeError(f"Gaussian quantile table CRC {crc:#x} != {GAUSS_TABLE_CRC32:#x}: this "
                               "platform's math library differs; gaussian bases would not be portable")
        _TABLES[key] = t.to(key)
    return _TABLES[key]


def unit_block(seed: int, block: int, row_start: int, row_end: int, col_start: int, col_end: int,
               distribution: str = "uniform", device: torch.device | str | None = None) -> torch.Tensor:
    """float32 [rows, cols] unit values (uniform in (-1, 1) or standard normal) for a rectangle."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {distribution!r}; allowed: {', '.join(DISTRIBUTIONS)}")
    out = torch.empty(max(row_end - row_start, 0), max(col_end - col_start, 0), device=device)
    return fill_block(out, seed, block, row_start, row_end, col_start, col_end, distribution)


def tree_sum(p: torch.Tensor) -> torch.Tensor:
    """Sum the rows of p [n, ...] as a fixed pairwise tree (row 2i + row 2i+1; an odd last row is carried):
    its shape alone fixes the order of the adds, so generated weights are the same bits however they are
    chunked, threaded or placed (PRANC's and NOLA's bases both sum this way)."""
    while p.shape[0] > 1:
        n = p.shape[0]
        half = p[0:n - 1:2] + p[1:n:2]
        p = torch.cat([half, p[n - 1:n]]) if n % 2 else half
    return p[0]
