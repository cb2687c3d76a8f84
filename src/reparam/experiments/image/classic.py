"""Classic codecs through Pillow (JPEG, WebP, AVIF, JPEG 2000) at a quality sweep, measured in true bits per pixel.

Every point is a real file written to memory: bpp = len(file bytes) * 8 / (H * W), headers included, and the
distortion is measured on Pillow's own decode of those bytes, exactly what a user would get.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import torch
from PIL import Image, features

from reparam.core.errors import ReparamError
from reparam.image.metrics import from_pil, from_uint8, quality, to_pil, to_uint8

# name -> (Pillow format, default quality sweep, feature name for features.check)
CLASSIC = {
    "jpeg": ("JPEG", (1, 3, 5, 8, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95), "jpg"),
    "webp": ("WEBP", (0, 2, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100), "webp"),
    # Pillow's own AVIF support (libavif, Pillow >= 11.3); speed 0 = its best compression
    "avif": ("AVIF", (0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80, 85, 90, 95), "avif"),
    # JPEG 2000 "quality" is a compression ratio here (quality_mode="rates"): larger means smaller files.
    "jp2": ("JPEG2000", (400, 300, 200, 150, 100, 70, 50, 35, 25, 18, 12, 8, 5), "jpg_2000"),
}


def available(name: str) -> bool:
    return name in CLASSIC and bool(features.check(CLASSIC[name][2]))


def encode_bytes(x: torch.Tensor, codec: str, q: int) -> bytes:
    """The file a codec writes for image `x` at quality setting `q`."""
    if codec not in CLASSIC:
        raise ReparamError(f"unknown classic codec {codec!r}; allowed: {', '.join(CLASSIC)}")
    if not available(codec):
        raise ReparamError(f"this Pillow build has no {codec} support")
    fmt = CLASSIC[codec][0]
    buf = io.BytesIO()
    im = to_pil(x)
    if codec == "jpeg":
        im.save(buf, format=fmt, quality=int(q), optimize=True)
    elif codec == "webp":
        im.save(buf, format=fmt, quality=int(q), method=6)
    elif codec == "avif":
        im.save(buf, format=fmt, quality=int(q), speed=0)
    else:
        im.save(buf, format=fmt, quality_mode="rates", quality_layers=[float(q)], irreversible=True)
    return buf.getvalue()


def decode_bytes(data: bytes, channels: int) -> torch.Tensor:
    im = Image.open(io.BytesIO(data))
    im.load()
    return from_pil(im, channels)


def sweep(x: torch.Tensor, codec: str, qualities: Sequence[int] | None = None) -> list[dict]:
    """One rate-distortion point per quality: codec, quality, bytes, bpp (true), psnr, msssim, msssim_kind."""
    c, h, w = x.shape
    ref = from_uint8(to_uint8(x))
    points = []
    for q in qualities or CLASSIC[codec][1]:
        data = encode_bytes(ref, codec, q)
        dec = decode_bytes(data, c)
        points.append({"codec": codec, "quality": q, "bytes": len(data), "bpp": len(data) * 8 / (h * w),
                       **quality(ref, dec)})
    points.sort(key=lambda p: p["bpp"])
    return points


def bd_psnr(ref: Sequence[dict], test: Sequence[dict], key: str = "psnr") -> float | None:
    """Bjontegaard delta (VCEG-M33): mean vertical gap in dB between two rate-distortion curves over their
    common range of log rate, each fitted by a cubic in log10(bpp); positive means `test` is better.
    None when the curves share no rate range or have under 4 points."""
    import numpy as np

    if len(ref) < 4 or len(test) < 4:
        return None
    r1, d1 = np.log10([p["bpp"] for p in ref]), np.array([p[key] for p in ref])
    r2, d2 = np.log10([p["bpp"] for p in test]), np.array([p[key] for p in test])
    lo, hi = max(r1.min(), r2.min()), min(r1.max(), r2.max())
    if not hi > lo:
        return None
    p1, p2 = np.polyint(np.polyfit(r1, d1, 3)), np.polyint(np.polyfit(r2, d2, 3))
    a1 = np.polyval(p1, hi) - np.polyval(p1, lo)
    a2 = np.polyval(p2, hi) - np.polyval(p2, lo)
    return float((a2 - a1) / (hi - lo))


def value_at_bpp(points: Sequence[dict], bpp: float, key: str = "psnr") -> float | None:
    """`key` of a codec's sweep at `bpp`, interpolated linearly between the two nearest points; None when
    `bpp` is outside the sweep's range (the codec cannot make a file that small, or that large)."""
    pts = sorted(points, key=lambda p: p["bpp"])
    if not pts or bpp < pts[0]["bpp"] or bpp > pts[-1]["bpp"]:
        return None
    for a, b in zip(pts, pts[1:], strict=False):
        if a["bpp"] <= bpp <= b["bpp"]:
            if b["bpp"] == a["bpp"]:
                return max(a[key], b[key])
            t = (bpp - a["bpp"]) / (b["bpp"] - a["bpp"])
            return a[key] + t * (b[key] - a[key])
    return pts[-1][key]
