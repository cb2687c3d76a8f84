"""CIFAR-10/100 from the standard python-pickle batch folders, read with an unpickler that builds no objects.

The batch files are pickles; a plain `pickle.load` would run whatever a crafted file asks for, and even
letting the unpickler call numpy's own array constructors is unsafe (a file can build an object array from
raw bytes, i.e. pointers, and crash the process). So the unpickler here resolves the handful of names a
numpy array pickle uses to inert stand-ins that only record their arguments; after loading, the reader
itself rebuilds each array from its raw bytes with `numpy.frombuffer`, for integer dtypes only, checking
that shape, dtype and byte count agree. What a file can produce: dicts, lists, tuples, numbers, strings,
bytes and integer arrays; nothing else.
"""

from __future__ import annotations

import _codecs
import math
import os
import pickle
from pathlib import Path

import numpy as np

from reparam.core.errors import ReparamError
from reparam.data.base import RawDataset, candidate_dirs, check_labels

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# The only array element types a batch file may hold (images are uint8, labels some integer type).
INT_DTYPES = {"u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8"}
MAX_DEPTH = 8   # nesting of containers in a batch file (CIFAR's is 2)


class _Refused(pickle.UnpicklingError):
    pass


def _latin1_encode(obj, encoding="latin1", errors="strict"):
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1"); only that
    # codec is needed, so only that codec is allowed.
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise _Refused(f"codec {encoding!r} not allowed")
    return _codecs.encode(obj, "latin1")


class _Dtype:
    """Stands in for numpy.dtype(code, align, copy) + its __setstate__; records the code and byte order."""

    def __init__(self, code=None, align=False, copy=True):
        if not isinstance(code, str) or code not in INT_DTYPES:
            raise _Refused(f"array element type {code!r} is not allowed (only {', '.join(sorted(INT_DTYPES))})")
        self.code, self.order = code, "|"

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("|", "<", ">", "="):
            raise _Refused("malformed dtype state")
        self.order = state[1]

    def numpy(self) -> np.dtype:
        dt = np.dtype(self.code)
        return dt.newbyteorder(self.order) if self.order in "<>" else dt


class _Array:
    """Stands in for an ndarray being unpickled: keeps (shape, dtype, fortran, raw bytes) and nothing else."""

    def __init__(self):
        self.state = None

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) != 5:
            raise _Refused("malformed array state")
        self.state = state[1:]


_NDARRAY = object()   # what 'numpy.ndarray' resolves to: a marker, never a type that could be called


def _reconstruct(cls, shape, typecode):
    if cls is not _NDARRAY:
        raise _Refused("only numpy arrays may be reconstructed")
    return _Array()


def _frombuffer(buf, dtype, shape, order="C"):
    a = _Array()
    a.__setstate__((1, shape, dtype, order == "F", buf))
    return a


class _Scalar:
    def __init__(self, dtype, data=b""):
        self.dtype, self.data = dtype, data


def _allowed_globals() -> dict[tuple[str, str], object]:
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _Dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    # numpy 1.x pickles name numpy.core.*, numpy 2.x pickles name numpy._core.*; the original CIFAR
    # files (Python 2, numpy 1.x) use numpy.core.multiarray._reconstruct.
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = _reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = _Scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = _frombuffer
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose only resolvable names are the inert stand-ins above."""

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


def _raw_bytes(raw) -> bytes:
    if isinstance(raw, str):   # Python 2 pickles hold the bytes as a str, read back as latin1
        try:
            return raw.encode("latin1")
        except UnicodeEncodeError:
            raise _Refused("array data is not a byte string") from None
    if isinstance(raw, (bytes, bytearray)):
        return bytes(raw)
    raise _Refused("array data is not a byte string")


def _build_array(a: _Array) -> np.ndarray:
    """The array a stand-in describes, rebuilt from its bytes after every field is checked."""
    if a.state is None:
        raise _Refused("an array without data")
    shape, dtype, fortran, raw = a.state
    if not isinstance(dtype, _Dtype) or not isinstance(fortran, bool) or not isinstance(shape, (tuple, list)) \
            or len(shape) > 4 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise _Refused("malformed array header (shape, dtype or order)")
    raw = _raw_bytes(raw)
    dt = dtype.numpy()
    if math.prod(shape) * dt.itemsize != len(raw):
        raise _Refused(f"array of shape {tuple(shape)} needs {math.prod(shape) * dt.itemsize} bytes, has {len(raw)}")
    return np.frombuffer(raw, dtype=dt).reshape(tuple(shape), order="F" if fortran else "C").astype(
        dt.newbyteorder("="))


def _materialize(obj, depth: int = 0):
    """Replace the stand-ins by real values; refuse anything that is not a plain value."""
    if depth > MAX_DEPTH:
        raise _Refused("containers nested too deeply")
    if isinstance(obj, _Array):
        return _build_array(obj)
    if isinstance(obj, _Scalar):
        if not isinstance(obj.dtype, _Dtype):
            raise _Refused("malformed scalar")
        data = _raw_bytes(obj.data)
        dt = obj.dtype.numpy()
        if len(data) != dt.itemsize:
            raise _Refused("malformed scalar")
        return int(np.frombuffer(data, dtype=dt)[0])
    if isinstance(obj, dict):
        return {_materialize(k, depth + 1): _materialize(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        out = [_materialize(v, depth + 1) for v in obj]
        return out if isinstance(obj, list) else tuple(out)
    if obj is None or isinstance(obj, (bool, int, float, str, bytes, bytearray)):
        return obj
    raise _Refused(f"a {type(obj).__name__} is not a plain value")


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
        # latin1 is what the original CIFAR files (Python 2 str) need to come back as bytes.
        with open(path, "rb") as f:
            obj = _materialize(RestrictedUnpickler(f, encoding="latin1").load())
    except ReparamError as e:
        raise ReparamError(f"{path}: {e}") from None
    except _Refused as e:
        raise ReparamError(f"{path}: refusing this CIFAR batch file: {e}") from None
    except OSError as e:
        raise ReparamError(f"cannot read CIFAR batch file {path}: {e}") from None
    except Exception as e:  # any malformed pickle: UnpicklingError, EOFError, ValueError, TypeError...
        reason = f"{type(e).__name__}: {e}"
        raise ReparamError(f"{path}: not a CIFAR python-pickle batch file ({reason})") from None
    if not isinstance(obj, dict):
        raise ReparamError(f"{path}: not a CIFAR batch file (holds a {type(obj).__name__}, not a dict)")
    try:
        return _str_keys(obj)
    except (TypeError, AttributeError):   # e.g. an unhashable key
        raise ReparamError(f"{path}: not a CIFAR batch file (malformed dict)") from None


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
