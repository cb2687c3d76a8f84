"""Output folders that are never half-written: work in OUT.partial/, rename to OUT at the end."""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from reparam.core.errors import ReparamError
from reparam.core.fileformat import atomic_write_text


def partial_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial")


def output_dir(out: str | Path, overwrite: bool = False, resume: bool = False):
    """Yield the working folder OUT.partial; on success move it to OUT.

    Under torchrun, process 0 owns the folder and the others write into private scratch folders
    (reparam.core.distributed.distributed_output_dir), so method code never needs rank checks.
    """
    from reparam.core import distributed

    if distributed.is_distributed():
        return distributed.distributed_output_dir(out, overwrite=overwrite, resume=resume)
    return local_output_dir(out, overwrite=overwrite, resume=resume)


@contextmanager
def local_output_dir(out: str | Path, overwrite: bool = False, resume: bool = False):
    """Single-process form of output_dir: work in OUT.partial, rename it to OUT on success.

    A failed run leaves OUT untouched; its OUT.partial keeps checkpoints so `resume=True` continues it.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise ReparamError(f"output folder {out} already exists; choose another --out or pass --overwrite")
    work = partial_path(out)
    if work.exists() and not resume:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    yield work
    if out.exists():
        shutil.rmtree(out)
    work.rename(out)


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, (set, tuple)):
        return list(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
