"""An optional compiled CPU kernel for the basis generator (the same bits as the torch code, faster).

Torch's CPU kernels emulate 64-bit multiplication lane by lane on AVX2 and make one memory pass per
operation: the SplitMix64 hash (13 int64 operations per 4 entries) plus the conversion took about 7 ns
per entry on one thread. This C loop hashes, converts and scales in registers. It is compiled once per
machine with the system C compiler (`cc`, no Python headers, no torch headers, loaded with ctypes) into
a cache folder ($REPARAM_CACHE, default ~/.cache/reparam). Without a compiler, without a writable cache
folder, with REPARAM_KERNEL=0, or when the built kernel fails its self-check (every code path against a
pure-Python definition of the bits, once per process), the generator uses its torch code; tests check
that both give identical bits and that each of those cases falls back.

Exactness: only integer operations (unsigned, wrapping), the exact int16 -> float conversion and +0.5,
and one float multiply per entry; compiled without fast-math and without floating-point contraction.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = r"""
#include <stdint.h>
static inline uint64_t mix(uint64_t z) {
    z ^= z >> 30; z *= 0xBF58476D1CE4E5B9ULL;
    z ^= z >> 27; z *= 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
#define LANE(h, l) ((int16_t)(uint16_t)((h) >> (16 * (l))))
/* Entry (r, c) is 16-bit lane (lo + c) % 4 of mix(keys[r] + (q0 + 1 + (lo + c) / 4) * GOLDEN).
   gaussian == 0: (s + 0.5) * factor[c] (or * fscalar when factor is NULL);
   gaussian == 1: table[s + 32768] (* scale[c] when scale is not NULL). */
static inline float value(int16_t s, int64_t c, const float *factor, float fscalar, const float *table,
                          const float *scale, int gaussian) {
    if (gaussian) {
        float v = table[(int32_t)s + 32768];
        return scale ? v * scale[c] : v;
    }
    float u = (float)s + 0.5f;
    return u * (factor ? factor[c] : fscalar);
}
static void row_uniform(float *o, uint64_t key, int64_t cols, int64_t q0, int64_t lo, const float *f) {
    const uint64_t G = 0x9E3779B97F4A7C15ULL;
    int64_t c = 0;
    uint64_t q = (uint64_t)(q0 + 1 + lo / 4);
    if (lo % 4) {   /* a partial first quad */
        uint64_t h = mix(key + q * G);
        for (int l = (int)(lo % 4); l < 4 && c < cols; l++, c++) o[c] = ((float)LANE(h, l) + 0.5f) * f[c];
        q++;
    }
    for (; c + 4 <= cols; c += 4, q++) {
        uint64_t h = mix(key + q * G);
        o[c] = ((float)LANE(h, 0) + 0.5f) * f[c];
        o[c + 1] = ((float)LANE(h, 1) + 0.5f) * f[c + 1];
        o[c + 2] = ((float)LANE(h, 2) + 0.5f) * f[c + 2];
        o[c + 3] = ((float)LANE(h, 3) + 0.5f) * f[c + 3];
    }
    if (c < cols) {
        uint64_t h = mix(key + q * G);
        for (int l = 0; c < cols; l++, c++) o[c] = ((float)LANE(h, l) + 0.5f) * f[c];
    }
}
void reparam_fill(float *out, int64_t stride, const int64_t *keys, int64_t rows, int64_t cols, int64_t q0,
                  int64_t lo, const float *factor, float fscalar, const float *table, const float *scale,
                  int gaussian) {
    const uint64_t G = 0x9E3779B97F4A7C15ULL;
    for (int64_t r = 0; r < rows; r++) {
        float *o = out + r * stride;
        uint64_t key = (uint64_t)keys[r];
        if (!gaussian && factor) {      /* the hot path: uniform entries with a per-column scale */
            row_uniform(o, key, cols, q0, lo, factor);
            continue;
        }
        int64_t c = 0;
        while (c < cols) {
            int64_t pos = lo + c;
            uint64_t h = mix(key + (uint64_t)(q0 + 1 + pos / 4) * G);
            for (int l = (int)(pos % 4); l < 4 && c < cols; l++, c++)
                o[c] = value(LANE(h, l), c, factor, fscalar, table, scale, gaussian);
        }
    }
}
"""
FLAGS = ["-O3", "-fPIC", "-shared", "-fno-fast-math", "-ffp-contract=off"]

_lib = None
_tried = False


def _cache_dir() -> Path:
    return Path(os.environ.get("REPARAM_CACHE") or Path.home() / ".cache" / "reparam")


def _build() -> ctypes.CDLL | None:
    tag = hashlib.sha256((SOURCE + " ".join(FLAGS)).encode()).hexdigest()[:16]
    lib_path = _cache_dir() / f"genkernel-{tag}.so"
    if not lib_path.exists():
        lib_path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=lib_path.parent) as tmp:
            src = Path(tmp) / "genkernel.c"
            src.write_text(SOURCE)
            out = Path(tmp) / "genkernel.so"
            subprocess.run([os.environ.get("CC", "cc"), *FLAGS, "-o", str(out), str(src)], check=True,
                           capture_output=True, timeout=120)
            os.replace(out, lib_path)      # atomic: processes building at once all end with a whole file
    lib = ctypes.CDLL(str(lib_path))
    f = lib.reparam_fill
    f.restype = None
    f.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                  ctypes.c_int64, ctypes.c_void_p, ctypes.c_float, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    return lib


_MASK = (1 << 64) - 1


def _mix(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def _lane(key: int, q0: int, pos: int) -> int:
    """The signed 16-bit value of entry `pos` (the definition the C loop implements)."""
    h = _mix((key + (q0 + 1 + pos // 4) * 0x9E3779B97F4A7C15) & _MASK)
    v = (h >> (16 * (pos % 4))) & 0xFFFF
    return v - 65536 if v >= 32768 else v


def _self_check(lib: ctypes.CDLL) -> bool:
    """Every path of reparam_fill (uniform with per-column factors or one factor; Gaussian with and without
    per-column scales; a partial first quad; a row stride) against the pure-Python definition, bit for bit.
    A compiler that builds the kernel differently (fast-math, contraction, a miscompile) is not used."""
    keys = torch.tensor([1, -7, 0x5DEECE66D, -(2**63)], dtype=torch.int64)
    q0, lo, cols = 3, 3, 261      # long enough for any unrolled or vectorized main loop and its tail
    s = torch.tensor([[_lane(int(k) & _MASK, q0, lo + c) for c in range(cols)] for k in keys], dtype=torch.float32)
    col = torch.linspace(0.37, 3.1, cols, dtype=torch.float32)
    table = torch.linspace(-4.5, 4.5, 65536, dtype=torch.float32)
    gauss = table[(s + 32768).long()]
    cases = [(col, None, None, (s + 0.5) * col), (0.013, None, None, (s + 0.5) * torch.tensor(0.013)),
             (None, table, col, gauss * col), (None, table, None, gauss)]
    for factor, tab, scale, want in cases:
        out = torch.full((len(keys), cols + 5), float("nan"))
        f = factor if isinstance(factor, torch.Tensor) else None
        lib.reparam_fill(out.data_ptr(), out.stride(0), keys.data_ptr(), len(keys), cols, q0, lo,
                         f.data_ptr() if f is not None else None,
                         float(factor) if isinstance(factor, float) else 0.0,
                         tab.data_ptr() if tab is not None else None,
                         scale.data_ptr() if scale is not None else None, int(tab is not None))
        if not torch.equal(out[:, :cols], want) or not bool(out[:, cols:].isnan().all()):
            return False
    return True


def kernel() -> ctypes.CDLL | None:
    """The loaded kernel, or None (disabled with REPARAM_KERNEL=0, no working C compiler, no writable
    cache folder, or a kernel that fails its self-check)."""
    global _lib, _tried
    if os.environ.get("REPARAM_KERNEL", "1") == "0":
        return None
    if not _tried:
        _tried = True
        try:
            lib = _build()
            _lib = lib if _self_check(lib) else None
        except (OSError, RuntimeError, subprocess.SubprocessError):   # RuntimeError: Path.home() without a home
            _lib = None
    return _lib


def fill(out: torch.Tensor, keys: torch.Tensor, q0: int, lo: int, factor: torch.Tensor | float | None,
         table: torch.Tensor | None, scale: torch.Tensor | None) -> bool:
    """Fill out [rows, cols] (CPU float32, unit column stride) with the kernel; False if it is not available."""
    lib = kernel()
    if lib is None or out.device.type != "cpu" or out.dtype != torch.float32 or (out.numel() and out.stride(1) != 1):
        return False
    rows, cols = out.shape
    keys = keys.contiguous()
    args_f = factor.contiguous() if isinstance(factor, torch.Tensor) else None
    args_s = scale.to(torch.float32).contiguous() if scale is not None else None
    lib.reparam_fill(out.data_ptr(), out.stride(0), keys.data_ptr(), rows, cols, q0, lo,
                     args_f.data_ptr() if args_f is not None else None,
                     float(factor) if isinstance(factor, float) else 0.0,
                     table.data_ptr() if table is not None else None,
                     args_s.data_ptr() if args_s is not None else None, int(table is not None))
    return True
