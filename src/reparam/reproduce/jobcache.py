"""Finished jobs of a `reproduce --full` run, kept in its work folder so a run that is killed (or ends with its
session) continues job by job instead of from the start of a method.

A job is named by a readable prefix and a key (every setting that changes its result); the file name carries a
digest of the key, so a rerun with other settings never reads a stale result. Results are JSON; trained models
are state dicts in the checked tensor format (core.fileformat), never pickles.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

CACHE_FORMAT = 1


def job_path(work_dir: Path | str | None, namespace: str, name: str, key: dict[str, Any],
             suffix: str = ".json") -> Path | None:
    """Where the job's result lives, or None when the run keeps no cache (quick runs without --resume)."""
    if work_dir is None:
        return None
    blob = json.dumps({"key": key, "format": CACHE_FORMAT}, sort_keys=True, default=str).encode()
    return Path(work_dir) / namespace / f"{name}-{hashlib.sha256(blob).hexdigest()[:16]}{suffix}"


def cached_json(work_dir, namespace: str, name: str, key: dict[str, Any], fn: Callable[[], dict]) -> dict:
    """fn()'s JSON-able result, computed once per key. A hit returns what a fresh run returns after a JSON
    round trip (so cached and uncached runs format the same numbers)."""
    from reparam.core.outdir import write_json

    path = job_path(work_dir, namespace, name, key)
    if path is not None and path.exists():
        return json.loads(path.read_text())
    record = json.loads(json.dumps(fn(), default=float))
    if path is not None:
        write_json(path, record)
    return record


def cached_model(work_dir, namespace: str, name: str, key: dict[str, Any], build: Callable[[], torch.nn.Module],
                 train: Callable[[torch.nn.Module], dict]) -> tuple[torch.nn.Module, dict]:
    """(model, info): `train(build())` once per key; a hit rebuilds the model and loads its trained state."""
    from reparam.core.fileformat import load_tensors, save_tensors

    path = job_path(work_dir, namespace, name, key, suffix=".safetensors")
    model = build()
    if path is not None and path.exists():
        tensors, header = load_tensors(path, kind="reproduce-job")
        model.load_state_dict(tensors)
        return model, header["info"]
    info = json.loads(json.dumps(train(model), default=float))
    if path is not None:   # written atomically (core.fileformat), so a killed run leaves no half file
        save_tensors(path, model.state_dict(), kind="reproduce-job", header={"info": info, "key": key})
    return model, info


def data_key(splits) -> list:
    """What names a job's data in its key: the dataset and the split sizes."""
    return [getattr(splits, "name", "?"), len(splits.train), len(splits.val), len(splits.test), splits.num_classes]
