"""The generator kernel JIT-compiled with numba, for machines without a C compiler (optional: `pip install
reparam[jit]`; nothing here runs when numba is missing).

The same three functions as the C kernel in reparam.core.genkernel (fill, theta, grad), line for line the
same arithmetic in the same order (wrapping uint64 hash, exact int16 -> float32, one float32 multiply per
entry; float32 sums in the documented order; LLVM without fast-math flags does not contract), so every
result has the same bits as the C kernel's and, for the entries, the torch code's. genkernel checks that
once per process (its self-check) before using it. Compiled on first use for the running CPU and cached by
numba (keyed on the CPU), about 2 s per function the first time.
"""

from __future__ import annotations

import numpy as np

try:
    import numba
except ImportError:            # the optional extra is not installed
    numba = None

TQ = 64       # quads hashed per stage, as in the C kernel
W = 1024      # columns per tile of the fused products (a multiple of 8), as in the C kernel

if numba is not None:
    _U = np.uint64
    _C1, _C2, _G = _U(0xBF58476D1CE4E5B9), _U(0x94D049BB133111EB), _U(0x9E3779B97F4A7C15)
    _S30, _S27, _S31 = _U(30), _U(27), _U(31)

    @numba.njit(cache=True, nogil=True)
    def _gen(o, key, q0, lo, n, factor, fscalar, table, scale, gaussian, h):
        """o[c] for c in [0, n): see `gen` in the C source (factor / scale: arrays aligned with o, or empty)."""
        s16 = h.view(np.int16)
        c = 0
        while c < n:
            p = lo + c
            off = p % 4
            m = min(n - c, 4 * TQ - off)
            nq = (off + m + 3) // 4
            base = key + np.uint64(q0 + 1 + p // 4) * _G
            for i in range(nq):
                z = base + np.uint64(i) * _G
                z ^= z >> _S30
                z *= _C1
                z ^= z >> _S27
                z *= _C2
                h[i] = z ^ (z >> _S31)
            # slices, so that every index below is a range() variable: numba then needs no negative-index
            # handling inside the loops and LLVM vectorizes them (about 4x faster when it could not)
            s = s16[off:off + m]
            oc = o[c:c + m]
            if not gaussian and factor.size:
                f = factor[c:c + m]
                for i in range(m):
                    oc[i] = (np.float32(s[i]) + np.float32(0.5)) * f[i]
            elif not gaussian:
                for i in range(m):
                    oc[i] = (np.float32(s[i]) + np.float32(0.5)) * fscalar
            elif scale.size:
                sc = scale[c:c + m]
                for i in range(m):
                    oc[i] = table[np.int32(s[i]) + 32768] * sc[i]
            else:
                for i in range(m):
                    oc[i] = table[np.int32(s[i]) + 32768]
            c += m

    @numba.njit(cache=True, nogil=True)
    def _fill(out, keys, q0, lo, factor, fscalar, table, scale, gaussian):
        h = np.empty(TQ, np.uint64)
        for r in range(out.shape[0]):
            _gen(out[r], np.uint64(keys[r]), q0, lo, out.shape[1], factor, fscalar, table, scale, gaussian, h)

    @numba.njit(cache=True, nogil=True)
    def _theta(theta, keys, alpha, q0, lo, factor, fscalar, table, scale, gaussian):
        h = np.empty(TQ, np.uint64)
        buf = np.empty(W, np.float32)
        cols = theta.shape[0]
        for t in range(0, cols, W):
            m = min(W, cols - t)
            f = factor[t:t + m] if factor.size else factor
            sc = scale[t:t + m] if scale.size else scale
            for r in range(keys.shape[0]):
                _gen(buf, np.uint64(keys[r]), q0, lo + t, m, f, fscalar, table, sc, gaussian, h)
                a = alpha[r]
                y = theta[t:t + m]
                for i in range(m):
                    y[i] += a * buf[i]

    @numba.njit(cache=True, nogil=True)
    def _grad(ga, keys, g, q0, lo, factor, fscalar, table, scale, gaussian):
        h = np.empty(TQ, np.uint64)
        buf = np.empty(W, np.float32)
        acc = np.empty(8, np.float32)
        cols = g.shape[0]
        for r in range(keys.shape[0]):
            acc[:] = 0
            for t in range(0, cols, W):
                m = min(W, cols - t)
                f = factor[t:t + m] if factor.size else factor
                sc = scale[t:t + m] if scale.size else scale
                _gen(buf, np.uint64(keys[r]), q0, lo + t, m, f, fscalar, table, sc, gaussian, h)
                gt = g[t:t + m]
                m8 = m - m % 8      # column t + i goes to sum i % 8 (W is a multiple of 8), in column order
                for i in range(0, m8, 8):
                    for j in range(8):
                        acc[j] += buf[i + j] * gt[i + j]
                for i in range(m8, m):
                    acc[i - m8] += buf[i] * gt[i]
            ga[r] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))


_EMPTY = np.empty(0, np.float32)


def _dist(factor, table, scale) -> tuple:
    f = factor.numpy() if factor is not None and not isinstance(factor, float) else _EMPTY
    fscalar = np.float32(factor if isinstance(factor, float) else 0.0)
    tab = table.numpy() if table is not None else _EMPTY
    sc = scale.numpy() if scale is not None else _EMPTY
    return f, fscalar, tab, sc, table is not None


class NumbaBackend:
    """genkernel's backend interface on numba (tensors: CPU float32 / int64, contiguous, as genkernel passes)."""

    name = "numba"

    def fill(self, out, keys, q0, lo, factor, table, scale) -> None:
        _fill(out.numpy(), keys.numpy(), q0, lo, *_dist(factor, table, scale))

    def theta(self, out, keys, alpha, q0, lo, factor, table, scale) -> None:
        _theta(out.numpy(), keys.numpy(), alpha.numpy(), q0, lo, *_dist(factor, table, scale))

    def grad(self, out, keys, g, q0, lo, factor, table, scale) -> None:
        _grad(out.numpy(), keys.numpy(), g.numpy(), q0, lo, *_dist(factor, table, scale))


def backend() -> NumbaBackend | None:
    """The numba backend, or None when numba is not installed (genkernel self-checks it before use)."""
    return NumbaBackend() if numba is not None else None
