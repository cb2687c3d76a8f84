"""The embedded datasets: scikit-learn's digits and a synthetic class-conditional image generator."""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from reparam.core.errors import ReparamError
from reparam.data.base import RawDataset


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    # `import sklearn.datasets` costs ~2 s (scipy) in every process; the data is one small CSV inside the
    # scikit-learn package (the file load_digits itself reads), so read it directly when it is there.
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",", dtype=np.float32)
            if table.shape == (1797, 65):
                return table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(np.int64)
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no file to fetch, no download

    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


def load_digits_raw(root: str | os.PathLike | None = None) -> RawDataset:
    """scikit-learn's bundled 8x8 digits (1,797 images, pixel values 0..16 scaled to [0, 1])."""
    images, target = _digits_arrays()
    return RawDataset(x=(images / 16.0)[:, None], y=target.copy(), class_names=[str(i) for i in range(10)])


def _positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ReparamError(f"synthetic: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def load_synthetic_raw(
    root: str | os.PathLike | None = None,
    *,
    size: int = 16,
    channels: int = 1,
    num_classes: int = 4,
    n_train: int = 512,
    n_test: int = 256,
    noise: float = 0.3,
    data_seed: int = 0,
) -> RawDataset:
    """Class-conditional images: a smooth random prototype per class plus Gaussian pixel noise.

    The images depend only on the options and `data_seed` (not on the split seed), so like a real
    dataset the data is fixed and `seed` only changes how it is split.
    """
    size = _positive_int(size, "size", 2)
    channels = _positive_int(channels, "channels")
    num_classes = _positive_int(num_classes, "num_classes", 2)
    n_train = _positive_int(n_train, "n_train", num_classes)
    n_test = _positive_int(n_test, "n_test", 1)
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
        raise ReparamError(f"synthetic: noise must be a number >= 0, got {noise!r}")
    g = torch.Generator().manual_seed(int(data_seed))
    # Smooth prototypes: coarse 4x4 random fields upsampled; rescaled to [0.15, 0.85] per class so that
    # noise has room on both sides before clipping.
    coarse = torch.rand(num_classes, channels, 4, 4, generator=g)
    protos = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    lo = protos.amin(dim=(1, 2, 3), keepdim=True)
    hi = protos.amax(dim=(1, 2, 3), keepdim=True)
    protos = 0.15 + 0.7 * (protos - lo) / (hi - lo).clamp_min(1e-6)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % num_classes  # balanced classes
        x = protos[y] + float(noise) * torch.randn(n, channels, size, size, generator=g)
        return x.clamp_(0.0, 1.0), y

    x_train, y_train = sample(n_train)
    x_test, y_test = sample(n_test)
    return RawDataset(
        x=x_train,
        y=y_train,
        x_test=x_test,
        y_test=y_test,
        class_names=[f"class{i}" for i in range(num_classes)],
    )
