"""Single images for the image codec: photos bundled with scikit-image, or any PNG/JPEG path.

Bundled images are read straight from scikit-image's package folder with Pillow. Only files that ship
inside the scikit-image wheel are listed (eagle, brain, kidney, ... are fetched with pooch on first use,
which would mean a download, so they are left out).
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from reparam.core.errors import ReparamError

MIN_SIDE = 8  # smaller images are refused: nothing meaningful to fit or compress
# Larger images are refused from their header, before any pixel is decoded: a 92-byte PNG may claim
# 12000x12000 pixels (1 GB decoded). 2**25 is 8192x4096, beyond any image this codec is meant for.
MAX_PIXELS = 1 << 25

# skimage.data function name -> file in skimage/data (the same file that function reads).
_SKIMAGE_FILES = {
    "astronaut": "astronaut.png",
    "brick": "brick.png",
    "camera": "camera.png",
    "cat": "chelsea.png",
    "cell": "cell.png",
    "checkerboard": "chessboard_GRAY.png",
    "chelsea": "chelsea.png",
    "clock": "clock_motion.png",
    "coffee": "coffee.png",
    "coins": "coins.png",
    "colorwheel": "color.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "logo": "logo.png",
    "microaneurysms": "microaneurysms.png",
    "moon": "moon.png",
    "motorcycle": "motorcycle_left.png",
    "page": "page.png",
    "retina": "retina.jpg",
    "rocket": "rocket.jpg",
    "shepp_logan_phantom": "phantom.png",
    "text": "text.png",
}


def _skimage_data_dir() -> Path | None:
    # find_spec locates the package without importing it (importing skimage is slow).
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "data"


_DATA_DIR = _skimage_data_dir()
BUNDLED_IMAGES: list[str] = sorted(
    n for n, f in _SKIMAGE_FILES.items() if _DATA_DIR is not None and (_DATA_DIR / f).is_file()
)
IMAGE_MODES = ("RGB", "L", None)


def bundled_image_path(name: str) -> Path:
    """The file behind a bundled image name, or an error listing the allowed names."""
    if name not in BUNDLED_IMAGES:
        raise ReparamError(f"unknown image {name!r}; allowed: {', '.join(BUNDLED_IMAGES)} "
                           "or a path to a PNG/JPEG file")
    return _DATA_DIR / _SKIMAGE_FILES[name]


def _resolve(name_or_path: str | os.PathLike) -> Path:
    if isinstance(name_or_path, str) and name_or_path in BUNDLED_IMAGES:
        return bundled_image_path(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    text = str(name_or_path)
    if isinstance(name_or_path, str) and os.sep not in text and "/" not in text and not path.suffix:
        bundled_image_path(text)  # a bare word: most likely a misspelt bundled name; raises the list
    if path.is_dir():
        raise ReparamError(f"{path} is a folder, not an image file")
    raise ReparamError(f"image file not found: {path}")


def _open(path: Path) -> Image.Image:
    try:
        with warnings.catch_warnings():   # Pillow's own bomb warning: the limit below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)   # reads the header only
        w, h = im.size
        if w * h > MAX_PIXELS:
            raise ReparamError(f"{path}: image is {w}x{h} = {w * h:,} pixels; allowed: at most {MAX_PIXELS:,}")
        im.load()  # decode now so a truncated or corrupt file fails here, with its name
    except ReparamError:
        raise
    except Exception as e:  # UnidentifiedImageError, OSError, DecompressionBombError, SyntaxError...
        raise ReparamError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    return im


def _to_8bit(im: Image.Image, path: Path) -> Image.Image:
    """Any Pillow mode -> 8-bit 'L' or 'RGB'. Alpha is composited over white; 16-bit is scaled to 8-bit."""
    mode = im.mode
    if mode in ("L", "RGB"):
        return im
    if mode.startswith("I"):  # "I;16", "I;16B", "I;16L", "I;16N" (16-bit PNG/TIFF) and "I" (32-bit int)
        arr = np.asarray(im).astype(np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ReparamError(f"{path}: 32-bit integer image with values {arr.min()}..{arr.max()} is not "
                               "supported; allowed: 8-bit or 16-bit greyscale/RGB images")
        return Image.fromarray(np.round(arr / 257.0).astype(np.uint8), mode="L")
    if mode == "F":
        raise ReparamError(f"{path}: floating-point image (mode 'F') is not supported; "
                           "allowed: 8-bit or 16-bit greyscale/RGB images")
    if mode == "1":
        return im.convert("L")
    # Palette images may carry transparency, so go through RGBA: one path handles P, PA, LA, RGBA, ...
    has_alpha = "A" in mode or "a" in mode or (mode == "P" and "transparency" in im.info)
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        out = Image.alpha_composite(white, rgba).convert("RGB")
        return out.convert("L") if mode in ("LA", "La") else out
    try:
        return im.convert("RGB")  # P without alpha, CMYK, YCbCr, LAB, HSV, RGBX
    except Exception as e:
        raise ReparamError(f"{path}: image mode {mode!r} cannot be converted to RGB ({e})") from None


def _target_size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        hw = (int(size), int(size))
    elif isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 2:
        hw = tuple(size)
    else:
        hw = None
    ints = hw is not None and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in hw)
    if not ints or min(hw) < 1:
        raise ReparamError(f"image size must be a positive int or (height, width), got {size!r}")
    if int(hw[0]) * int(hw[1]) > MAX_PIXELS:
        raise ReparamError(f"image size {hw[0]}x{hw[1]} is not allowed; at most {MAX_PIXELS:,} pixels")
    return int(hw[0]), int(hw[1])


def resize_cover_crop(x: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Scale [C, H, W] (keeping aspect ratio) until it covers `size`, then centre-crop to exactly `size`."""
    th, tw = _target_size(size)
    h, w = x.shape[-2:]
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    if (nh, nw) != (h, w):
        # Antialias when shrinking, or a photo downsampled 8x aliases badly.
        x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=scale < 1)
        x = x[0].clamp_(0.0, 1.0)
    top, left = (nh - th) // 2, (nw - tw) // 2
    return x[:, top : top + th, left : left + tw].contiguous()


def load_image(
    name_or_path: str | os.PathLike,
    *,
    size: int | Sequence[int] | None = None,
    mode: str | None = "RGB",
) -> torch.Tensor:
    """A bundled scikit-image photo (see `BUNDLED_IMAGES`) or an image file as float32 [C, H, W] in [0, 1].

    `mode`: "RGB" (3 channels; greyscale is replicated), "L" (1 channel, ITU-R 601-2 luma) or None (the
    file's own: 1 channel for greyscale, 3 for colour). Palette images become RGB, transparency is
    composited over white, 16-bit images are scaled to 8-bit. `size` (int or (H, W)): scale keeping the
    aspect ratio so the image covers the size, then centre-crop to it. Images under 8x8 are refused.
    """
    if mode not in IMAGE_MODES:
        raise ReparamError(f"unknown image mode {mode!r}; allowed: RGB, L, None (keep the file's)")
    target = None if size is None else _target_size(size)
    path = _resolve(name_or_path)
    im = _to_8bit(_open(path), path)
    if im.width < MIN_SIDE or im.height < MIN_SIDE:
        raise ReparamError(f"{path}: image is {im.width}x{im.height}; "
                           f"at least {MIN_SIDE}x{MIN_SIDE} pixels are needed")
    if mode is not None and im.mode != mode:
        im = im.convert(mode)
    arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    x = torch.from_numpy(arr.transpose(2, 0, 1).copy()).to(torch.float32).div_(255.0)
    return x if target is None else resize_cover_crop(x, target)
