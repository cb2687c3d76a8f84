"""`load_dataset`: one entry point that turns any registered loader into stratified, seeded splits.

Every dataset goes through the same steps, in this order: load (loader) -> class filter and relabel ->
test split (only for datasets without an official test set) -> validation split carved from train ->
train subset -> float32 in [0, 1] -> optional resize -> per-channel mean/std of the train split.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from reparam.core.errors import ReparamError, choose
from reparam.core.runtime import derive_seed
from reparam.data.base import Array, Loader, RawDataset
from reparam.data.cifar import load_cifar10_raw, load_cifar100_raw
from reparam.data.fashion_mnist import load_fashion_mnist_raw
from reparam.data.sources import load_digits_raw, load_synthetic_raw


@dataclass
class DatasetSplits:
    """Train/val/test `TensorDataset(x, y)`s (x float32 [N, C, H, W] in [0, 1], y int64) and metadata.

    `mean`/`std` are per-channel statistics of the train split (after subset and resize).
    """

    name: str
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str]


DATASETS: dict[str, Loader] = {
    "digits": load_digits_raw,
    "fashion-mnist": load_fashion_mnist_raw,
    "cifar10": load_cifar10_raw,
    "cifar100": load_cifar100_raw,
    "synthetic": load_synthetic_raw,
}
GENERIC_OPTIONS = ("classes", "resize")  # handled by load_dataset itself, valid for every dataset


def register_dataset(name: str, loader: Loader, *, replace: bool = False) -> None:
    """Add a dataset: `loader(root, **options) -> RawDataset`; its keyword options become dataset options."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"dataset name must be a non-empty string, got {name!r}")
    if name in DATASETS and DATASETS[name] is not loader and not replace:
        raise ValueError(f"dataset {name!r} is already registered (pass replace=True to override it)")
    DATASETS[name] = loader


def stratified_indices(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """`k` indices of `y` picked at random per class, in proportion to class sizes (sorted).

    Per-class counts use the largest-remainder rule so they sum to exactly `k`. Each class is permuted
    once per seed and its first indices taken, so for one seed a smaller pick is a subset of a larger one.
    """
    y = np.asarray(y)
    if not 0 <= k <= len(y):
        raise ValueError(f"cannot pick {k} of {len(y)} items")
    classes, counts = np.unique(y, return_counts=True)
    quota = k * counts / max(len(y), 1)
    take = np.floor(quota).astype(np.int64)
    extra = k - int(take.sum())
    take[np.argsort(-(quota - take), kind="stable")[:extra]] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(y == c))[:n] for c, n in zip(classes, take)]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def _complement(n: int, idx: np.ndarray) -> np.ndarray:
    mask = np.ones(n, dtype=bool)
    mask[idx] = False
    return np.flatnonzero(mask)


def _labels(y: Array, where: str) -> np.ndarray:
    y = y.numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ReparamError(f"{where}: labels must be a 1-D integer array, got {y.dtype} {y.shape}")
    return y.astype(np.int64)


def _take(x: Array, idx: np.ndarray | None) -> torch.Tensor:
    # Indexing copies, which also matters because cached arrays (fashion-mnist) are read-only.
    if isinstance(x, torch.Tensor):
        return x if idx is None else x[torch.from_numpy(idx)]
    return torch.from_numpy(np.array(x) if idx is None else np.asarray(x)[idx])


def _to_float(x: torch.Tensor, where: str) -> torch.Tensor:
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    if not x.is_floating_point():
        raise ReparamError(f"{where}: images must be uint8 or float, got {x.dtype}")
    x = x.to(torch.float32)
    if x.numel() and (x.min() < -1e-6 or x.max() > 1 + 1e-6):
        raise ReparamError(f"{where}: float images must lie in [0, 1], got {x.min():.3g}..{x.max():.3g}")
    return x.clamp_(0.0, 1.0)


def _parse_size(value, what: str) -> tuple[int, int]:
    """An int, (H, W), or a string "32" / "32x28" -> (H, W) of positive ints."""
    parts = value
    if isinstance(value, str):
        parts = [p for p in value.lower().replace(",", "x").split("x") if p.strip()]
    elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        parts = [value, value]
    try:
        hw = [int(p) for p in parts]
        if len(hw) == 1:
            hw = hw * 2
        ok = len(hw) == 2 and all(v >= 1 for v in hw) and not isinstance(value, (bool, float))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ReparamError(f"{what} must be a positive int or (height, width), got {value!r}")
    return hw[0], hw[1]


def resize_images(x: torch.Tensor, size: tuple[int, int], chunk: int = 8192) -> torch.Tensor:
    """Bilinear resize of a batch [N, C, H, W] (antialiased when shrinking), clamped to [0, 1]."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    antialias = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    out = [
        F.interpolate(x[i : i + chunk], size=size, mode="bilinear", align_corners=False, antialias=antialias)
        for i in range(0, len(x), chunk)  # chunks bound the peak memory of the intermediate buffers
    ]
    if not out:
        return x.new_zeros((0, x.shape[1], *size))
    return torch.cat(out).clamp_(0.0, 1.0)


def _class_filter(classes, class_names: list[str], name: str) -> list[int]:
    """Original class indices to keep, in the order given (that order defines the new labels 0..n-1)."""
    items = classes
    if isinstance(classes, str):
        items = [c.strip() for c in classes.split(",") if c.strip()]
    elif isinstance(classes, (int, np.integer)) and not isinstance(classes, bool):
        items = [classes]
    if not isinstance(items, Sequence) or isinstance(items, str) or len(items) == 0:
        raise ReparamError(f"classes={classes!r} selects no class of dataset {name!r}; "
                           f"allowed: a non-empty list of indices 0..{len(class_names) - 1} or class names")
    keep: list[int] = []
    for c in items:
        if isinstance(c, str) and c.lstrip("-").isdigit():
            c = int(c)
        if isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= c < len(class_names):
            index = int(c)
        elif isinstance(c, str) and c in class_names:
            index = class_names.index(c)
        else:
            raise ReparamError(f"unknown class {c!r} for dataset {name!r}; allowed: indices "
                               f"0..{len(class_names) - 1} or one of {', '.join(class_names)}")
        if index in keep:
            raise ReparamError(f"class {c!r} is listed twice in classes={classes!r}")
        keep.append(index)
    return keep


def _subset_size(train_subset, n: int) -> int:
    bad = ReparamError(f"train_subset={train_subset!r} is not allowed: use a count 1..{n} "
                       "or a fraction in (0, 1] of the train split")
    if isinstance(train_subset, bool):
        raise bad
    if isinstance(train_subset, (int, np.integer)):
        k = int(train_subset)
    elif isinstance(train_subset, float) and 0 < train_subset <= 1:
        k = int(round(train_subset * n))
    elif isinstance(train_subset, float) and train_subset > 1 and train_subset.is_integer():
        k = int(train_subset)
    else:
        raise bad
    if k == 0:
        raise ReparamError(f"train_subset={train_subset!r} leaves the train split empty "
                           f"(train has {n} examples); use a count 1..{n} or a larger fraction")
    if not 1 <= k <= n:
        raise bad
    return k


def _check_options(name: str, loader: Loader, options: dict) -> None:
    params = list(inspect.signature(loader).parameters.values())[1:]  # the first parameter is root
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    own = [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for key in options:
        if key not in own:
            raise ReparamError(f"unknown option {key!r} for dataset {name!r}; "
                               f"allowed: {', '.join([*GENERIC_OPTIONS, *own])}")


def load_dataset(
    name: str,
    *,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    train_subset: int | float | None = None,
    **options,
) -> DatasetSplits:
    """Load dataset `name` (one of `DATASETS`) as stratified train/val/test splits, deterministic in `seed`.

    `val_fraction` of the train split becomes the validation split. `train_subset` keeps a stratified
    subset of the train split: a count, or a fraction in (0, 1]. Options valid for every dataset:
    `classes=[...]` (indices or names; relabelled 0..n-1 in the order given) and `resize=(H, W)` or an int
    (bilinear). Other options go to the dataset's loader (e.g. synthetic's `size`, `num_classes`).
    """
    loader = choose(name, DATASETS, "dataset")
    classes = options.pop("classes", None)
    resize = options.pop("resize", None)
    size = None if resize is None else _parse_size(resize, "resize")
    _check_options(name, loader, options)
    is_number = isinstance(val_fraction, (int, float)) and not isinstance(val_fraction, bool)
    if not is_number or not 0 < val_fraction < 1:
        raise ReparamError(f"val_fraction={val_fraction!r} is not allowed: use a fraction in (0, 1)")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ReparamError(f"seed must be an integer, got {seed!r}")

    raw: RawDataset = loader(root, **options)
    names = list(raw.class_names)
    x, y = raw.x, _labels(raw.y, name)
    has_test = raw.x_test is not None
    xt, yt = (raw.x_test, _labels(raw.y_test, name)) if has_test else (None, None)
    if len(x) != len(y) or (has_test and len(xt) != len(yt)):
        raise ReparamError(f"dataset {name!r}: number of images and labels differ")

    # Index arrays into x / xt; the images are gathered (and copied) once, at the end.
    idx = np.arange(len(y))
    idx_t = np.arange(len(yt)) if has_test else None
    if classes is not None:
        keep = _class_filter(classes, names, name)
        relabel = np.full(len(names), -1, dtype=np.int64)
        relabel[keep] = np.arange(len(keep))
        idx = idx[relabel[y] >= 0]
        y = relabel[y[idx]]
        if has_test:
            idx_t = idx_t[relabel[yt] >= 0]
            yt = relabel[yt[idx_t]]
        names = [names[i] for i in keep]
        if len(y) == 0 or (has_test and len(yt) == 0):
            raise ReparamError(f"classes={classes!r} leaves no examples in dataset {name!r}")

    if not has_test:
        k = int(round(raw.test_fraction * len(y)))
        pick = stratified_indices(y, k, derive_seed(seed, 1))
        rest = _complement(len(y), pick)
        idx_t, yt, idx, y = idx[pick], y[pick], idx[rest], y[rest]
        xt = x

    n_val = int(round(val_fraction * len(y)))
    if n_val < 1 or n_val >= len(y):
        raise ReparamError(f"val_fraction={val_fraction} leaves the {'val' if n_val < 1 else 'train'} split "
                           f"empty ({len(y)} train examples); use a fraction in (0, 1) that keeps both")
    pick = stratified_indices(y, n_val, derive_seed(seed, 2))
    rest = _complement(len(y), pick)
    idx_v, y_v, idx, y = idx[pick], y[pick], idx[rest], y[rest]

    if train_subset is not None:
        pick = stratified_indices(y, _subset_size(train_subset, len(y)), derive_seed(seed, 3))
        idx, y = idx[pick], y[pick]

    for split, labels in (("train", y), ("val", y_v), ("test", yt)):
        if len(labels) == 0:
            detail = f"classes={classes!r}" if classes is not None else f"dataset {name!r}"
            raise ReparamError(f"the {split} split is empty with {detail}")

    def tensors(source: Array, index: np.ndarray, labels: np.ndarray, split: str) -> TensorDataset:
        xs = _to_float(_take(source, index), f"dataset {name!r} ({split})")
        if xs.ndim != 4:
            raise ReparamError(f"dataset {name!r}: images must be [N, C, H, W], got shape {tuple(xs.shape)}")
        if size is not None:
            xs = resize_images(xs, size)
        return TensorDataset(xs.contiguous(), torch.from_numpy(np.ascontiguousarray(labels)))

    train = tensors(x, idx, y, "train")
    val = tensors(x, idx_v, y_v, "val")
    test = tensors(xt, idx_t, yt, "test")
    xtr = train.tensors[0]
    var, mean = torch.var_mean(xtr, dim=(0, 2, 3), correction=0)
    # A constant channel would make normalisation divide by zero; std 1 leaves it merely centred.
    std = tuple(float(s) if s > 1e-8 else 1.0 for s in var.sqrt())
    return DatasetSplits(
        name=name,
        train=train,
        val=val,
        test=test,
        num_classes=len(names),
        in_channels=int(xtr.shape[1]),
        image_size=(int(xtr.shape[2]), int(xtr.shape[3])),
        mean=tuple(float(m) for m in mean),
        std=std,
        class_names=names,
    )


def limit_test(splits: DatasetSplits, limit: int, seed: int) -> DatasetSplits:
    """A copy of `splits` whose test split keeps a seeded random `limit` of its images (in their original
    order); unchanged when the test split is not larger. For large test sets evaluated many times (ticket
    grids) and smoke tests."""
    x, y = splits.test.tensors
    if limit < 1:
        raise ReparamError(f"test limit must be >= 1, got {limit}")
    if len(y) <= limit:
        return splits
    g = torch.Generator().manual_seed(derive_seed(seed, 78))
    keep = torch.randperm(len(y), generator=g)[:limit].sort().values
    return replace(splits, test=TensorDataset(x[keep], y[keep]))
