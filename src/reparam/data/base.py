"""What a dataset loader returns before splitting: arrays plus class names.

Loaders stay tiny (read files, return a `RawDataset`); splitting, class filters, subsets, resizing and
statistics are done once, in `reparam.data.datasets.load_dataset`, so every dataset behaves the same.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from reparam.core.errors import ReparamError

Array = np.ndarray | torch.Tensor


@dataclass
class RawDataset:
    """Images `x` [N, C, H, W] (uint8 0..255, or float in [0, 1]) and integer labels `y` [N].

    `x_test`/`y_test` hold an official test set; when they are None, `load_dataset` carves a stratified
    test split of `test_fraction` out of `x`/`y` (seeded).
    """

    x: Array
    y: Array
    class_names: list[str]
    x_test: Array | None = None
    y_test: Array | None = None
    test_fraction: float = 0.2
    info: dict = field(default_factory=dict)


# A loader gets the user's `root` (or None) and its own keyword options and returns a RawDataset.
Loader = Callable[..., RawDataset]


def data_home() -> Path | None:
    """`$REPARAM_DATA` as a path, or None when unset/empty."""
    value = os.environ.get("REPARAM_DATA", "").strip()
    return Path(value).expanduser() if value else None


def candidate_dirs(root: str | os.PathLike | None, subdir: str, defaults: tuple[str, ...] = ()) -> list[Path]:
    """Folders to look in, in order: `root` and `root/subdir`, else `$REPARAM_DATA/subdir`, else defaults.

    `root` may point at the dataset folder itself or at a parent holding several dataset folders
    (like `$REPARAM_DATA`), so one `--data-root` works for every dataset.
    """
    if root is not None:
        r = Path(root).expanduser()
        return [r, r / subdir]
    dirs = []
    home = data_home()
    if home is not None:
        dirs += [home / subdir, home]
    dirs += [Path(d) for d in defaults]
    return dirs


def check_labels(y: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    """Labels as int64, all in 0..num_classes-1, else a ReparamError naming `where`."""
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ReparamError(f"{where}: labels must be a 1-D integer array, got {y.dtype} of shape {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ReparamError(f"{where}: labels must lie in 0..{num_classes - 1}, got {y.min()}..{y.max()}")
    return y.astype(np.int64)
