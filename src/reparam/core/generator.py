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
import zlib
from functools import lru_cache
from statistics import NormalDist

import torch

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
_TILE = 1 << 16        # int64 hashes per tile on CPU

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
def _mix_(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64 finaliser in place on an int64 tensor (logical shifts emulated with masks)."""
    t = torch.empty_like(z)
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


def lanes(seed: int, block: int, row_start: int, row_end: int, col_start: int, col_end: int,
          device: torch.device | str | None = None) -> torch.Tensor:
    """int16 tensor [rows, cols] of the raw 16-bit lanes for a rectangle of the basis."""
    if sys.byteorder != "little":  # the int64 -> int16 view below assumes little-endian lane order
        raise RuntimeError("the PRANC generator needs a little-endian machine")
    if row_end <= row_start or col_end <= col_start:
        return torch.empty(max(row_end - row_start, 0), max(col_end - col_start, 0),
                           dtype=torch.int16, device=device)
    q0, q1 = col_start // 4, (col_end - 1) // 4 + 1
    nq = q1 - q0
    keys = row_keys(seed, block, row_start, row_end, device)
    ctr = torch.arange(q0 + 1, q1 + 1, dtype=torch.int64, device=device).mul_(_G)
    z = torch.empty(row_end - row_start, nq, dtype=torch.int64, device=device)
    # Hash tile by tile so the dozen int64 passes stay in cache (about 1.5x faster on CPU; same bits).
    rows = max(1, _TILE // nq) if z.device.type == "cpu" else z.shape[0]
    for a in range(0, z.shape[0], rows):
        _mix_(torch.add(keys[a:a + rows, None], ctr[None, :], out=z[a:a + rows]))
    lo = col_start - 4 * q0
    return z.view(torch.int16)[:, lo:lo + (col_end - col_start)]


@lru_cache(maxsize=1)
def gaussian_table() -> tuple[float, ...]:
    nd = NormalDist()
    return tuple(nd.inv_cdf((q + 0.5) / 65536.0) for q in range(65536))


_TABLES: dict[str, torch.Tensor] = {}


def gaussian_table_tensor(device: torch.device | str | None = None) -> torch.Tensor:
    key = str(torch.device(device) if device is not None else torch.device("cpu"))
    if key not in _TABLES:
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
    s = lanes(seed, block, row_start, row_end, col_start, col_end, device)
    if distribution == "uniform":
        # (2s + 1) is an odd integer below 2**16 in magnitude: exact in float32, and so is the power of 2
        return s.to(torch.float32).mul_(2.0).add_(1.0).mul_(2.0 ** -16)
    if distribution == "gaussian":
        idx = s.to(torch.int64).add_(32768)
        return gaussian_table_tensor(s.device)[idx]
    raise ValueError(f"unknown distribution {distribution!r}; allowed: {', '.join(DISTRIBUTIONS)}")
