"""Fashion-MNIST from the real idx files (gzipped or not), parsed with numpy and cached per process."""

from __future__ import annotations

import functools
import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from reparam.core.errors import ReparamError
from reparam.data.base import RawDataset, candidate_dirs, check_labels

SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# idx type codes -> numpy dtype (big-endian as the format stores them)
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(data: bytes, where: str = "idx file") -> np.ndarray:
    """Parse the bytes of an idx file (already decompressed) into a numpy array."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ReparamError(f"{where}: not an idx file (bad magic number {data[:4].hex() or 'empty'})")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise ReparamError(f"{where}: truncated idx header ({len(data)} bytes, {ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise ReparamError(f"{where}: idx size mismatch: header says shape {shape}, "
                           f"expected {expected} bytes, file has {len(data)}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file; gzip is detected from its magic bytes, not the file name."""
    path = Path(path)
    try:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise ReparamError(f"cannot read idx file {path}: {e}") from None
    return parse_idx(data, where=str(path))


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def find_fashion_mnist(root: str | os.PathLike | None = None) -> Path:
    """The first folder holding all four idx files, else one error naming every way to get them."""
    dirs = candidate_dirs(root, "fashion-mnist", (SYSTEM_DIR,))
    for d in dirs:
        if all(_find(d, stem) for stem in FILES.values()):
            return d
    looked = ", ".join(str(d) for d in dirs)
    raise ReparamError(
        f"fashion-mnist idx files not found (looked in: {looked}); install them with `make data` "
        "(apt-get install dataset-fashion-mnist, into /usr/share/datasets/fashion-mnist) or put "
        "train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte(.gz), t10k-images-idx3-ubyte(.gz), "
        "t10k-labels-idx1-ubyte(.gz) in a folder and pass it with --data-root (or set REPARAM_DATA "
        "to its parent folder)"
    )


@functools.lru_cache(maxsize=4)
def _read_folder(folder: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # Parsing the gzipped files takes seconds; every load_dataset call in a process reuses the result.
    d = Path(folder)
    arrays = {key: read_idx(_find(d, stem)) for key, stem in FILES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ReparamError(f"{d / FILES[split + '_images']}: expected uint8 images [N, H, W], "
                               f"got {images.dtype} {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise ReparamError(f"{d}: {split} has {len(images)} images but labels of shape {labels.shape}")
        arrays[f"{split}_labels"] = check_labels(labels, len(CLASS_NAMES), str(d / FILES[split + "_labels"]))
        images.flags.writeable = False  # cached and shared between calls: nobody may modify it
    return arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"]


def load_fashion_mnist_raw(root: str | os.PathLike | None = None) -> RawDataset:
    """Fashion-MNIST: the official 60,000/10,000 train/test split, 28x28 greyscale, 10 classes."""
    folder = find_fashion_mnist(root)
    x_train, y_train, x_test, y_test = _read_folder(str(folder.resolve()))
    return RawDataset(
        x=x_train[:, None],
        y=y_train,
        x_test=x_test[:, None],
        y_test=y_test,
        class_names=list(CLASS_NAMES),
        info={"folder": str(folder)},
    )
