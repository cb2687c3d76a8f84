"""CIFAR-10/100 from the standard python-pickle batch folders, read with a restricted unpickler.

The batch files are pickles; a plain `pickle.load` would run whatever a crafted file asks for. The
unpickler here resolves only the numpy helpers that rebuild arrays and dtypes, so a file can produce
dicts, lists, numbers, bytes and arrays and nothing else.
"""

from __future__ import annotations

import _codecs
import os
import pickle
from pathlib import Path

import numpy as np

from reparam.core.errors import ReparamError
from reparam.data.base import RawDataset, candidate_dirs, check_labels

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _latin1_encode(obj, encoding="latin1", errors="strict"):
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1"); only that
    # codec is needed, so only that codec is allowed.
    if encoding not in ("latin1", "latin-1") or errors != "strict":
        raise pickle.UnpicklingError(f"codec {encoding!r} not allowed")
    return _codecs.encode(obj, "latin1")


def _allowed_globals() -> dict[tuple[str, str], object]:
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    # numpy 1.x pickles name numpy.core.*, numpy 2.x pickles name numpy._core.*; the original CIFAR
    # files (Python 2, numpy 1.x) use numpy.core.multiarray._reconstruct.
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only resolves numpy's array/dtype reconstruction helpers."""

    _ALLOWED = _allowed_globals()

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise ReparamError(
                f"refusing to unpickle {module}.{name}: CIFAR batch files may only hold numpy arrays, "
                "lists, numbers and strings"
            ) from None

    def persistent_load(self, pid):
        raise ReparamError("refusing to unpickle a persistent id: not a CIFAR batch file")


def _str_keys(obj):
    # Files written from Python 3 with bytes keys (b"data", as the originals show under encoding="bytes")
    # and with bytes class names: normalise to str.
    if isinstance(obj, dict):
        return {(k.decode("latin1") if isinstance(k, bytes) else k): _str_keys(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_str_keys(v) for v in obj]
    if isinstance(obj, bytes):
        return obj.decode("latin1")
    return obj


def load_pickle(path: str | os.PathLike) -> dict:
    """Read one CIFAR batch file with the restricted unpickler; returns a dict with str keys."""
    path = Path(path)
    try:
        # latin1 is what numpy needs to rebuild arrays pickled by Python 2 (the original CIFAR files).
        with open(path, "rb") as f:
            obj = RestrictedUnpickler(f, encoding="latin1").load()
    except ReparamError as e:
        raise ReparamError(f"{path}: {e}") from None
    except OSError as e:
        raise ReparamError(f"cannot read CIFAR batch file {path}: {e}") from None
    except Exception as e:  # any malformed pickle: UnpicklingError, EOFError, ValueError, TypeError...
        reason = f"{type(e).__name__}: {e}"
        raise ReparamError(f"{path}: not a CIFAR python-pickle batch file ({reason})") from None
    if not isinstance(obj, dict):
        raise ReparamError(f"{path}: not a CIFAR batch file (holds a {type(obj).__name__}, not a dict)")
    return _str_keys(obj)


def _images_labels(batch: dict, label_key: str, num_classes: int, path: Path) -> tuple[np.ndarray, ...]:
    if "data" not in batch or label_key not in batch:
        raise ReparamError(f"{path}: CIFAR batch lacks 'data' or {label_key!r} (has {sorted(batch)})")
    data = np.asarray(batch["data"])
    if data.dtype != np.uint8 or data.ndim not in (2, 4) or data.shape[1:] not in ((3072,), (3, 32, 32)):
        raise ReparamError(f"{path}: CIFAR 'data' must be uint8 [N, 3072], got {data.dtype} {data.shape}")
    labels = check_labels(np.asarray(batch[label_key]), num_classes, str(path))
    if len(labels) != len(data):
        raise ReparamError(f"{path}: {len(data)} images but {len(labels)} labels")
    # Rows are 1024 red, then 1024 green, then 1024 blue values, each plane row-major: [N, 3, 32, 32].
    return data.reshape(-1, 3, 32, 32), labels


def _find_dir(root, subdir: str, required: list[str], name: str) -> Path:
    if root is None:
        raise ReparamError(
            f"{name} needs the python-pickle batch folder ({subdir}): pass its path with --data-root "
            "(root=...); nothing is downloaded"
        )
    dirs = candidate_dirs(root, subdir)
    for d in dirs:
        if all((d / f).is_file() for f in required):
            return d
    raise ReparamError(
        f"{name} batch files not found: none of {', '.join(map(str, dirs))} holds {', '.join(required)}"
    )


def _names(meta_path: Path, key: str, n: int, fallback: list[str]) -> list[str]:
    # Class names come from the meta file when present; missing meta is fine (names are cosmetic).
    if not meta_path.is_file():
        return fallback
    names = load_pickle(meta_path).get(key)
    if not isinstance(names, list) or len(names) != n:
        return fallback
    return [str(s) for s in names]


def load_cifar10_raw(root: str | os.PathLike | None = None) -> RawDataset:
    """CIFAR-10 from `cifar-10-batches-py` (data_batch_1..5, test_batch, optional batches.meta)."""
    train_files = [f"data_batch_{i}" for i in range(1, 6)]
    d = _find_dir(root, "cifar-10-batches-py", [*train_files, "test_batch"], "cifar10")
    parts = [_images_labels(load_pickle(d / f), "labels", 10, d / f) for f in train_files]
    x_test, y_test = _images_labels(load_pickle(d / "test_batch"), "labels", 10, d / "test_batch")
    return RawDataset(
        x=np.concatenate([p[0] for p in parts]),
        y=np.concatenate([p[1] for p in parts]),
        x_test=x_test,
        y_test=y_test,
        class_names=_names(d / "batches.meta", "label_names", 10, list(CIFAR10_CLASSES)),
        info={"folder": str(d)},
    )


def load_cifar100_raw(root: str | os.PathLike | None = None, *, coarse: bool = False) -> RawDataset:
    """CIFAR-100 from `cifar-100-python` (train, test, optional meta); `coarse=True`: the 20 superclasses."""
    key, n = ("coarse_labels", 20) if coarse else ("fine_labels", 100)
    d = _find_dir(root, "cifar-100-python", ["train", "test"], "cifar100")
    x, y = _images_labels(load_pickle(d / "train"), key, n, d / "train")
    x_test, y_test = _images_labels(load_pickle(d / "test"), key, n, d / "test")
    names_key = "coarse_label_names" if coarse else "fine_label_names"
    return RawDataset(
        x=x,
        y=y,
        x_test=x_test,
        y_test=y_test,
        class_names=_names(d / "meta", names_key, n, [f"class{i}" for i in range(n)]),
        info={"folder": str(d)},
    )
