"""Entropy coding of the quantized coefficients with constriction's range coder.

Every layer's integer symbols are coded with a zero-mean quantized Laplace (or Gaussian) over [-B, B]
whose scale is the layer's own (stored as a 1/16-octave code, container.scale_code), so the model costs
one byte per layer and nothing is learned or transmitted beyond that. constriction's "leaky" quantized
models give every symbol in the range a nonzero probability, so any symbol in [-B, B] can be coded; its
arithmetic is integer and float64 in Rust, the same on every platform.
"""

from __future__ import annotations

import math

import numpy as np

from reparam.core.errors import ReparamError
from reparam.image.container import scale_code, scale_of

MIN_SCALE = 2.0 ** -8


def _model(gaussian: bool, bound: int):
    import constriction

    m = constriction.stream.model
    return m.QuantizedGaussian(-bound, bound) if gaussian else m.QuantizedLaplace(-bound, bound)


def fit_scale(symbols: np.ndarray, gaussian: bool) -> float:
    """Maximum-likelihood scale of a zero-mean Laplace (mean |x|) or Gaussian (rms) for the symbols."""
    x = np.asarray(symbols, dtype=np.float64)
    if x.size == 0:
        return MIN_SCALE
    s = math.sqrt(float(np.mean(x * x))) if gaussian else float(np.mean(np.abs(x)))
    return max(s, MIN_SCALE)


def best_codes(blocks: list[np.ndarray], gaussian: bool, bound: int) -> list[int]:
    """Per-layer scale codes: the ML scale's code and its neighbours, whichever codes the layer shortest."""
    out = []
    for sym in blocks:
        c0 = scale_code(fit_scale(sym, gaussian))
        cands = [c for c in (c0 - 2, c0 - 1, c0, c0 + 1, c0 + 2) if 0 <= c <= 255]
        out.append(min(cands, key=lambda c: bits(sym, c, gaussian, bound)))
    return out


def bits(symbols: np.ndarray, code: int, gaussian: bool, bound: int) -> float:
    """Ideal code length (bits) of the symbols under the layer's model: the range coder's size up to
    its final flush."""
    x = np.asarray(symbols, dtype=np.float64)
    if x.size == 0:
        return 0.0
    s = scale_of(code)
    if gaussian:
        from scipy.special import ndtr

        p = ndtr((x + 0.5) / s) - ndtr((x - 0.5) / s)
    else:
        def cdf(t):
            return np.where(t < 0, 0.5 * np.exp(np.minimum(t, 0) / s), 1 - 0.5 * np.exp(-np.maximum(t, 0) / s))

        p = cdf(x + 0.5) - cdf(x - 0.5)
    return float(-np.log2(np.maximum(p, 2.0 ** -24)).sum())


def encode(blocks: list[np.ndarray], codes: list[int], gaussian: bool, bound: int) -> bytes:
    """One range-coded stream of all layers' symbols (int, in [-bound, bound]); whole 32-bit words."""
    import constriction

    enc = constriction.stream.queue.RangeEncoder()
    model = _model(gaussian, bound)
    for sym, code in zip(blocks, codes, strict=True):
        sym = np.ascontiguousarray(sym, dtype=np.int32)
        if sym.size == 0:
            continue
        if np.abs(sym).max() > bound:
            raise ReparamError(f"a quantized coefficient exceeds the symbol bound {bound}")
        enc.encode(sym, model, np.zeros(sym.size), np.full(sym.size, scale_of(code)))
    return enc.get_compressed().astype("<u4").tobytes()


def decode(payload: bytes, counts: list[int], codes: list[int], gaussian: bool, bound: int,
           where: str = "image file") -> list[np.ndarray]:
    """Inverse of `encode`; a payload that runs out or does not decode is refused."""
    import constriction

    words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
    try:
        dec = constriction.stream.queue.RangeDecoder(words)
        model = _model(gaussian, bound)
        out = []
        for n, code in zip(counts, codes, strict=True):
            out.append(np.asarray(dec.decode(model, np.zeros(n), np.full(n, scale_of(code))), dtype=np.int64)
                       if n else np.zeros(0, dtype=np.int64))
    except Exception as e:  # constriction raises ValueError/AssertionError on streams it cannot decode
        raise ReparamError(f"{where}: the coefficient stream does not decode ({type(e).__name__})") from None
    return out
