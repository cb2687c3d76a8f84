"""An optional compiled CPU kernel for the basis generator (the same bits as the torch code, faster).

Torch's CPU kernels emulate 64-bit multiplication lane by lane on AVX2 and make one memory pass per
operation: the SplitMix64 hash (13 int64 operations per 4 entries) plus the conversion took about 7 ns
per entry on one thread. This C code hashes, converts and scales in L1-sized stages, and also computes the
streamed training products (alpha @ B, B @ g) with each piece of the basis used while in cache, never
written out. It is compiled once per machine with the system C compiler (`cc`, no Python headers, no torch
headers, loaded with ctypes) into a cache folder ($REPARAM_CACHE, default ~/.cache/reparam), with an AVX2
and a baseline copy of each function picked at load time from the running CPU (GCC/clang target_clones;
built without where unsupported): a library cached in a home shared by different machines runs on each.
Without a compiler, without a writable cache folder, or when the built kernel fails its self-check (every
code path against a pure-Python definition of the bits, once per process), the same functions JIT-compiled
by numba are used when numba is installed (reparam.core.genjit, `pip install reparam[jit]`), else the
generator's torch code; REPARAM_KERNEL selects (see `kernel`). Tests check that all give identical bits
and that each of those cases falls back.

Exactness: only integer operations (unsigned, wrapping), the exact int16 -> float conversion and +0.5,
and one float multiply per entry; compiled without fast-math and without floating-point contraction. The
fused products' float32 sums follow one order written in the code (theta_reference, grad_reference).
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
/* REPARAM_CLONES: GCC function multiversioning, an AVX2 and a baseline copy of each exported function,
   picked at load time from the running CPU (so a library cached in a shared home runs on any x86-64) */
#if defined(REPARAM_CLONES)
#define MULTI __attribute__((target_clones("avx2", "default")))
#else
#define MULTI
#endif
static inline uint64_t mix(uint64_t z) {
    z ^= z >> 30; z *= 0xBF58476D1CE4E5B9ULL;
    z ^= z >> 27; z *= 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
#define GOLDEN 0x9E3779B97F4A7C15ULL
#define TQ 64       /* quads hashed per stage (256 entries, in L1) */
#define W 1024      /* columns per tile of the fused products (a multiple of 8) */
/* o[c] for c in [0, n): the entry at position p = lo + c of the row with this key, i.e. signed 16-bit lane
   p % 4 of mix(key + (q0 + 1 + p / 4) * GOLDEN); gaussian == 0: (s + 0.5) * factor[c] (fscalar when factor
   is NULL); gaussian == 1: table[s + 32768] (* scale[c] when scale is not NULL). Two stages per 256 entries
   (hash the quads, then convert the int16 lanes), so that each loop is a simple one the compiler vectorizes. */
static inline void gen(float *restrict o, uint64_t key, int64_t q0, int64_t lo, int64_t n,
                       const float *restrict factor, float fscalar, const float *restrict table,
                       const float *restrict scale, int gaussian) {
    uint64_t h[TQ];
    int64_t c = 0;
    while (c < n) {
        int64_t p = lo + c, off = p % 4, m = n - c;
        if (m > 4 * TQ - off) m = 4 * TQ - off;
        int64_t nq = (off + m + 3) / 4;
        uint64_t base = key + (uint64_t)(q0 + 1 + p / 4) * GOLDEN;
        for (int64_t i = 0; i < nq; i++) h[i] = mix(base + (uint64_t)i * GOLDEN);
        const int16_t *s = (const int16_t *)h + off;     /* little-endian: lane 0 = least significant */
        float *oc = o + c;
        if (!gaussian && factor) {
            const float *f = factor + c;
            for (int64_t i = 0; i < m; i++) oc[i] = ((float)s[i] + 0.5f) * f[i];
        } else if (!gaussian) {
            for (int64_t i = 0; i < m; i++) oc[i] = ((float)s[i] + 0.5f) * fscalar;
        } else if (scale) {
            const float *sc = scale + c;
            for (int64_t i = 0; i < m; i++) oc[i] = table[(int32_t)s[i] + 32768] * sc[i];
        } else {
            for (int64_t i = 0; i < m; i++) oc[i] = table[(int32_t)s[i] + 32768];
        }
        c += m;
    }
}
#define DIST const float *factor, float fscalar, const float *table, const float *scale, int gaussian
#define AT(t) (factor ? factor + (t) : 0), fscalar, table, (scale ? scale + (t) : 0), gaussian
/* out[r, c] (row stride `stride`) = entry (r, c) for keys[r] */
MULTI void reparam_fill(float *out, int64_t stride, const int64_t *keys, int64_t rows, int64_t cols, int64_t q0,
                        int64_t lo, DIST) {
    for (int64_t r = 0; r < rows; r++) gen(out + r * stride, (uint64_t)keys[r], q0, lo, cols, AT(0));
}
/* theta[c] += sum_r alpha[r] * entry(r, c): per column, the rows added one after another in order
   (alpha[r] * entry rounded, then added), each tile of W columns generated row by row into L1 and used there */
MULTI void reparam_theta(float *restrict theta, const int64_t *keys, const float *alpha, int64_t rows,
                         int64_t cols, int64_t q0, int64_t lo, DIST) {
    float buf[W];
    for (int64_t t = 0; t < cols; t += W) {
        int64_t m = cols - t < W ? cols - t : W;
        float *restrict y = theta + t;
        for (int64_t r = 0; r < rows; r++) {
            gen(buf, (uint64_t)keys[r], q0, lo + t, m, AT(t));
            float a = alpha[r];
            for (int64_t i = 0; i < m; i++) y[i] += a * buf[i];
        }
    }
}
/* ga[r] = sum_c entry(r, c) * g[c]: eight partial sums, column c into sum c % 8 in column order, then
   ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)); the order is fixed by the code, not the vector width */
MULTI void reparam_grad(float *ga, const int64_t *keys, const float *restrict g, int64_t rows, int64_t cols,
                        int64_t q0, int64_t lo, DIST) {
    float buf[W];
    for (int64_t r = 0; r < rows; r++) {
        float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        for (int64_t t = 0; t < cols; t += W) {
            int64_t m = cols - t < W ? cols - t : W, i = 0;
            gen(buf, (uint64_t)keys[r], q0, lo + t, m, AT(t));
            const float *gt = g + t;
            for (; i + 8 <= m; i += 8)
                for (int j = 0; j < 8; j++) acc[j] += buf[i + j] * gt[i + j];
            for (; i < m; i++) acc[i % 8] += buf[i] * gt[i];
        }
        ga[r] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    }
}
"""
FLAGS = ["-O3", "-fPIC", "-shared", "-fno-fast-math", "-ffp-contract=off", "-fno-strict-aliasing"]
CLONES = "-DREPARAM_CLONES"   # tried first; a compiler or platform without target_clones builds without it

_lib = None
_tried = False
_ARGS = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,        # rows .. lo
         ctypes.c_void_p, ctypes.c_float, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]       # distribution


def _cache_dir() -> Path:
    return Path(os.environ.get("REPARAM_CACHE") or Path.home() / ".cache" / "reparam")


def _tag() -> str:
    return hashlib.sha256((SOURCE + " ".join(FLAGS) + CLONES).encode()).hexdigest()[:16]


class CBackend:
    """The compiled library behind the backend interface that genjit.NumbaBackend shares (tensors: CPU,
    float32 / int64 keys, unit column stride, as fill / theta / grad below pass them)."""

    name = "c"

    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib

    def fill(self, out, keys, q0, lo, factor, table, scale) -> None:
        self.lib.reparam_fill(out.data_ptr(), out.stride(0), keys.data_ptr(), out.shape[0], out.shape[1], q0, lo,
                              *_dist_args(factor, table, scale))

    def theta(self, out, keys, alpha, q0, lo, factor, table, scale) -> None:
        self.lib.reparam_theta(out.data_ptr(), keys.data_ptr(), alpha.data_ptr(), len(keys), out.numel(), q0, lo,
                               *_dist_args(factor, table, scale))

    def grad(self, out, keys, g, q0, lo, factor, table, scale) -> None:
        self.lib.reparam_grad(out.data_ptr(), keys.data_ptr(), g.data_ptr(), len(keys), g.numel(), q0, lo,
                              *_dist_args(factor, table, scale))


def _build() -> CBackend:
    lib_path = _cache_dir() / f"genkernel-{_tag()}.so"
    if not lib_path.exists():
        lib_path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=lib_path.parent) as tmp:
            src = Path(tmp) / "genkernel.c"
            src.write_text(SOURCE)
            out = Path(tmp) / "genkernel.so"
            for extra in ([CLONES], []):
                cmd = [os.environ.get("CC", "cc"), *FLAGS, *extra, "-o", str(out), str(src)]
                if subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0:
                    break
            else:
                raise OSError("the generator kernel did not compile")
            os.replace(out, lib_path)      # atomic: processes building at once all end with a whole file
    lib = ctypes.CDLL(str(lib_path))
    lib.reparam_fill.argtypes = [ctypes.c_void_p, ctypes.c_int64, *_ARGS]
    lib.reparam_theta.argtypes = [ctypes.c_void_p, ctypes.c_void_p, *_ARGS]
    lib.reparam_grad.argtypes = [ctypes.c_void_p, ctypes.c_void_p, *_ARGS]
    for f in (lib.reparam_fill, lib.reparam_theta, lib.reparam_grad):
        f.restype = None
    return CBackend(lib)


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


def _dist_args(factor, table, scale) -> tuple:
    f = factor if isinstance(factor, torch.Tensor) else None
    return (f.data_ptr() if f is not None else None, float(factor) if isinstance(factor, float) else 0.0,
            table.data_ptr() if table is not None else None, scale.data_ptr() if scale is not None else None,
            int(table is not None))


def theta_reference(vals: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """What reparam_theta computes from the entries vals [rows, cols]: rows added in order, float32."""
    out = torch.zeros(vals.shape[1])
    for r in range(vals.shape[0]):
        out = out + alpha[r] * vals[r]
    return out


def grad_reference(vals: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """What reparam_grad computes: column c into partial sum c % 8 in column order, then a fixed tree."""
    prods = vals * g
    acc = torch.zeros(vals.shape[0], 8)
    for i in range(0, vals.shape[1], 8):
        part = prods[:, i:i + 8]
        acc[:, :part.shape[1]] += part
    return ((acc[:, 0] + acc[:, 1]) + (acc[:, 2] + acc[:, 3])) + ((acc[:, 4] + acc[:, 5]) + (acc[:, 6] + acc[:, 7]))


def _self_check(backend) -> bool:
    """Every path of a backend (the C library or numba) against the pure-Python definition of the entries,
    bit for bit: fill (uniform with per-column factors or one factor; Gaussian with and without per-column
    scales; a partial first quad) and the fused products theta / grad (across a tile boundary) against
    theta_reference / grad_reference. A compiler that builds the kernel differently (fast-math,
    contraction, a miscompile) is not used."""
    keys = torch.tensor([1, -7, 0x5DEECE66D, -(2**63)], dtype=torch.int64)
    q0, lo, cols = 3, 3, 1285     # crosses the 256-entry stages and a 1,024-column tile, with tails
    s = torch.tensor([[_lane(int(k) & _MASK, q0, lo + c) for c in range(cols)] for k in keys], dtype=torch.float32)
    col = torch.linspace(0.37, 3.1, cols, dtype=torch.float32)
    table = torch.linspace(-4.5, 4.5, 65536, dtype=torch.float32)
    gauss = table[(s + 32768).long()]
    alpha = torch.tensor([0.3, -1.7, 2.5e-3, 11.0])
    g = torch.linspace(-2.0, 1.3, cols) ** 3
    cases = [(col, None, None, (s + 0.5) * col), (0.013, None, None, (s + 0.5) * torch.tensor(0.013)),
             (None, table, col, gauss * col), (None, table, None, gauss)]
    for factor, tab, scale, want in cases:
        dist = (factor, tab, scale)
        out = torch.full((len(keys), cols + 5), float("nan"))
        backend.fill(out[:, :cols], keys, q0, lo, *dist)
        if not torch.equal(out[:, :cols], want) or not bool(out[:, cols:].isnan().all()):
            return False
        th, ga = torch.zeros(cols), torch.zeros(len(keys))
        backend.theta(th, keys, alpha, q0, lo, *dist)
        backend.grad(ga, keys, g, q0, lo, *dist)
        if not (torch.equal(th, theta_reference(want, alpha)) and torch.equal(ga, grad_reference(want, g))):
            return False
    return True


def _c_kernel() -> CBackend | None:
    global _lib, _tried
    if not _tried:
        _tried = True
        try:
            lib = _build()
            _lib = lib if _self_check(lib) else None
        except (OSError, RuntimeError, subprocess.SubprocessError):   # RuntimeError: Path.home() without a home
            _lib = None
    return _lib


_jit: list = []     # [the numba backend or None], once tried


def _jit_kernel():
    if not _jit:
        from reparam.core import genjit

        jit = genjit.backend()
        try:
            _jit.append(jit if jit is not None and _self_check(jit) else None)
        except Exception:       # noqa: BLE001 - a JIT that fails to compile or run is simply not used
            _jit.append(None)
    return _jit[0]


def kernel() -> CBackend | None:
    """The backend in use, or None (then the generator runs its torch code). REPARAM_KERNEL: unset or 1 =
    the C kernel, else numba when installed; c = the C kernel only; numba = numba only; 0 = neither. The
    C kernel is not used without a working C compiler, a writable cache folder, or when it fails its
    self-check; numba likewise only when installed and it passes the same self-check."""
    mode = os.environ.get("REPARAM_KERNEL", "1")
    if mode == "0":
        return None
    if mode in ("1", "c"):
        lib = _c_kernel()
        if lib is not None or mode == "c":
            return lib
    return _jit_kernel()


def _usable(*tensors: torch.Tensor):
    backend = kernel()
    if backend is None or any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return None
    return backend


def _prep(factor, scale) -> tuple:
    factor = factor.contiguous() if isinstance(factor, torch.Tensor) else factor
    scale = scale.to(torch.float32).contiguous() if scale is not None else None
    return factor, scale


def fill(out: torch.Tensor, keys: torch.Tensor, q0: int, lo: int, factor: torch.Tensor | float | None,
         table: torch.Tensor | None, scale: torch.Tensor | None) -> bool:
    """Fill out [rows, cols] (CPU float32, unit column stride) with the kernel; False if it is not available."""
    backend = _usable(out)
    if backend is None or (out.numel() and out.stride(1) != 1):
        return False
    factor, scale = _prep(factor, scale)
    backend.fill(out, keys.contiguous(), q0, lo, factor, table, scale)
    return True


def _fused(name: str, out: torch.Tensor, keys: torch.Tensor, vec: torch.Tensor, q0: int, lo: int, factor, table,
           scale) -> bool:
    backend = _usable(out, vec)
    if backend is None or not out.is_contiguous():
        return False
    factor, scale = _prep(factor, scale)
    getattr(backend, name)(out, keys.contiguous(), vec.contiguous(), q0, lo, factor, table, scale)
    return True


def theta(out: torch.Tensor, keys: torch.Tensor, alpha: torch.Tensor, q0: int, lo: int,
          factor: torch.Tensor | float | None, table: torch.Tensor | None, scale: torch.Tensor | None) -> bool:
    """out [cols] += sum_r alpha[r] * entry(r, c), the entries generated on the fly (see reparam_theta); out,
    alpha: CPU float32. False (nothing done) if the kernel is not available."""
    return _fused("theta", out, keys, alpha, q0, lo, factor, table, scale)


def grad(out: torch.Tensor, keys: torch.Tensor, g: torch.Tensor, q0: int, lo: int,
         factor: torch.Tensor | float | None, table: torch.Tensor | None, scale: torch.Tensor | None) -> bool:
    """out [rows] = sum_c entry(r, c) * g[c] (see reparam_grad); out, g: CPU float32. False if unavailable."""
    return _fused("grad", out, keys, g, q0, lo, factor, table, scale)
