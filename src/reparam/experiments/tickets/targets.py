"""Target tasks with controllable domain gaps, registered as datasets of reparam.data.

`<base>-<shift>` for base in digits (8x8), digits28 (digits resized to 28x28, to pair with a Fashion-MNIST
source) and fashion-mnist, shift in inverted | rotated | noisy | blurred. Shifts are deterministic (the
noise has a fixed seed option), applied to the raw images before splitting, so every split shares them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from reparam.core.errors import ReparamError
from reparam.data.base import RawDataset

SHIFTS = ("identity", "inverted", "rotated", "noisy", "blurred")
BASES = ("digits", "digits28", "fashion-mnist")


def _as_float(x) -> torch.Tensor:
    a = np.asarray(x)
    t = torch.from_numpy(a if a.flags.writeable else a.copy())  # read-only arrays (the FMNIST mmap) are copied
    return t.to(torch.float32) / 255.0 if t.dtype == torch.uint8 else t.to(torch.float32)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(round(2 * sigma)))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(t ** 2) / (2 * sigma ** 2))
    k = (k / k.sum()).view(1, 1, 1, -1)
    c = x.shape[1]
    y = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.expand(c, 1, 1, -1), groups=c)
    kv = k.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    return F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), kv, groups=c)


def apply_shift(x: torch.Tensor, shift: str, noise_std: float = 0.3, blur_sigma: float = 1.0,
                angle: int = 90, seed: int = 1234) -> torch.Tensor:
    """Images [N, C, H, W] in [0, 1] -> shifted images in [0, 1]."""
    if shift == "identity":
        return x
    if shift == "inverted":
        return 1.0 - x
    if shift == "rotated":
        if angle % 90:
            raise ReparamError(f"rotation angle must be a multiple of 90, got {angle}")
        return torch.rot90(x, k=angle // 90, dims=(2, 3)).contiguous()
    if shift == "noisy":
        g = torch.Generator().manual_seed(seed)
        return (x + torch.randn(x.shape, generator=g) * noise_std).clamp(0, 1)
    if shift == "blurred":
        return _blur(x, blur_sigma).clamp(0, 1)
    raise ReparamError(f"unknown domain shift {shift!r}; allowed: {', '.join(SHIFTS)}")


def _base_raw(base: str, root) -> RawDataset:
    from reparam.data.fashion_mnist import load_fashion_mnist_raw
    from reparam.data.sources import load_digits_raw

    if base == "fashion-mnist":
        return load_fashion_mnist_raw(root)
    raw = load_digits_raw(root)
    if base == "digits28":
        from reparam.data.datasets import resize_images

        raw.x = resize_images(_as_float(raw.x), (28, 28))
    return raw


def make_loader(base: str, shift: str):
    def loader(root=None, noise_std: float = 0.3, blur_sigma: float = 1.0, angle: int = 90,
               noise_seed: int = 1234) -> RawDataset:
        raw = _base_raw(base, root)
        kw = dict(noise_std=float(noise_std), blur_sigma=float(blur_sigma), angle=int(angle),
                  seed=int(noise_seed))
        raw.x = apply_shift(_as_float(raw.x), shift, **kw)
        if raw.x_test is not None:
            raw.x_test = apply_shift(_as_float(raw.x_test), shift, **{**kw, "seed": kw["seed"] + 1})
        return raw

    loader.__name__ = f"load_{base}_{shift}"
    return loader


def register_targets() -> list[str]:
    """Register every `<base>-<shift>` (and `digits28`) with reparam.data; idempotent."""
    from reparam.data import DATASETS, register_dataset

    names = []
    for base in BASES:
        for shift in SHIFTS:
            if shift == "identity" and base != "digits28":
                continue
            name = base if shift == "identity" else f"{base}-{shift}"
            if name not in DATASETS:
                register_dataset(name, make_loader(base, shift))
            names.append(name)
    return names
