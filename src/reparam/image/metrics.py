"""Distortion metrics on images in [0, 1]: PSNR and MS-SSIM (SSIM for images too small for 5 scales).

MS-SSIM uses pytorch-msssim with its standard settings (Gaussian window 11, sigma 1.5, the five weights
of Wang et al. 2003). Five scales need the shorter side to exceed (11 - 1) * 2**4 = 160 pixels; for smaller
images single-scale SSIM with the same window is returned instead, and `quality()` says which one it was,
so a table never mixes the two silently. Images under 11 pixels a side use the largest odd window that
fits (kind "ssim-win7" for 8x8).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from pytorch_msssim import ms_ssim as _ms_ssim
from pytorch_msssim import ssim as _ssim

WIN = 11
MSSSIM_MIN_SIDE = (WIN - 1) * 2**4 + 1  # pytorch-msssim asserts min side > 160


def _batch(x: torch.Tensor) -> torch.Tensor:
    x = x.detach().to(torch.float32)
    return x[None] if x.dim() == 3 else x


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1] (peak 1). Identical images give inf."""
    mse = float(torch.mean((_batch(x).double() - _batch(y).double()) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def msssim_kind(height: int, width: int) -> str:
    return "ms-ssim" if min(height, width) >= MSSSIM_MIN_SIDE else "ssim"


def msssim(x: torch.Tensor, y: torch.Tensor) -> tuple[float, str]:
    """(value, kind): 5-scale MS-SSIM when the image is large enough, otherwise SSIM (kind 'ssim')."""
    xb, yb = _batch(x), _batch(y)
    h, w = xb.shape[-2:]
    kind = msssim_kind(h, w)
    if kind == "ms-ssim":
        return float(_ms_ssim(xb, yb, data_range=1.0, size_average=True, win_size=WIN)), kind
    win = min(WIN, min(h, w) - (1 - min(h, w) % 2))  # largest odd window that fits (8x8 images: 7)
    if win != WIN:
        kind = f"ssim-win{win}"
    return float(_ssim(xb, yb, data_range=1.0, size_average=True, win_size=win)), kind


def quality(reference: torch.Tensor, decoded: torch.Tensor) -> dict[str, float | str]:
    """PSNR and (MS-)SSIM of `decoded` against `reference`, both [C, H, W] in [0, 1]."""
    value, kind = msssim(reference, decoded)
    return {"psnr": psnr(reference, decoded), "msssim": value, "msssim_kind": kind}


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[C, H, W] float in [0, 1] -> uint8, rounding to nearest (what a PNG of the decode holds)."""
    return x.detach().clamp(0, 1).mul(255.0).round().to(torch.uint8)


def from_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32).div(255.0)


def to_pil(x: torch.Tensor) -> Image.Image:
    """[C, H, W] float in [0, 1] -> 8-bit Pillow image (L for 1 channel, RGB for 3)."""
    arr = to_uint8(x).permute(1, 2, 0).numpy()
    return Image.fromarray(arr[:, :, 0], mode="L") if arr.shape[2] == 1 else Image.fromarray(arr, mode="RGB")


def from_pil(im: Image.Image, channels: int) -> torch.Tensor:
    im = im.convert("L" if channels == 1 else "RGB")
    arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return from_uint8(torch.from_numpy(arr.transpose(2, 0, 1).copy()))
