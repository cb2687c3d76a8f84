"""The one file format: safetensors payload + a JSON header, checked on load. Nothing is ever unpickled.

The header lives in the safetensors metadata under the key "reparam" and always holds:
  format: "reparam", format_version, kind (e.g. "model", "checkpoint", "pranc", "mask"),
  tensors: {name: [dtype, shape]}, crc32 (of the tensors' bytes in sorted-name order, then of the
  header's own JSON without the crc32 field, so an edited header is caught as well as edited tensors),
plus whatever the caller adds. Writes are atomic (temporary file + rename).
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from reparam.core.errors import ReparamError

FORMAT = "reparam"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 16 << 20   # a reparam header is kilobytes; a larger one is refused before it is parsed


def _crc32(tensors: dict[str, torch.Tensor]) -> int:
    crc = 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        crc = zlib.crc32(name.encode(), crc)
        if t.numel():
            flat = t.reshape(-1)  # 0-d tensors cannot be viewed as bytes
            crc = zlib.crc32(flat.view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool
                             else flat.to(torch.uint8).numpy().tobytes(), crc)
    return crc


def _header_crc(header: dict[str, Any], crc: int) -> int:
    rest = {k: v for k, v in header.items() if k != "crc32"}
    return zlib.crc32(json.dumps(rest, sort_keys=True).encode(), crc)


def _describe(tensors: dict[str, torch.Tensor]) -> dict[str, list]:
    return {k: [str(v.dtype).replace("torch.", ""), list(v.shape)] for k, v in sorted(tensors.items())}


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _dedupe(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Keep one name per identical tensor (same storage, offset, shape, strides and dtype); copy tensors
    that only overlap another's storage, which safetensors cannot write."""
    kept: dict[tuple, str] = {}
    out, aliases = {}, {}
    for name in sorted(tensors):
        t = tensors[name]
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype,
               t.device) if t.numel() else None
        if key is not None and key in kept:
            aliases[name] = kept[key]
            continue
        if key is not None:
            kept[key] = name
        out[name] = t
    ptrs = [t.untyped_storage().data_ptr() for t in out.values() if t.numel()]
    shared = {p for p in ptrs if ptrs.count(p) > 1}
    return {k: (v.clone() if v.numel() and v.untyped_storage().data_ptr() in shared else v)
            for k, v in out.items()}, aliases


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], kind: str,
                 header: dict[str, Any] | None = None) -> dict[str, Any]:
    """Save tensors with a checked header. Returns the full header written.

    One tensor under several names (a compander's shared a and b, tied weights) is stored once; the
    header's "aliases" maps the other names to it and loading gives every name back.
    """
    tensors, aliases = _dedupe({k: v.detach() for k, v in tensors.items()})
    tensors = {k: v.contiguous().cpu() for k, v in tensors.items()}
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind}
    full.update(header or {})
    if aliases:
        full["aliases"] = aliases
    full["tensors"] = _describe(tensors)
    full["crc32"] = _header_crc(full, _crc32(tensors))
    data = st_save(tensors, metadata={"reparam": json.dumps(full, sort_keys=True)})
    atomic_write_bytes(path, data)
    return full


def read_header(path: str | Path) -> dict[str, Any]:
    """Read and check only the container's header (cheap: no tensor data is read).

    Checked: a JSON object of bounded size with format, format_version, kind, tensors and crc32 of the
    right types. Readers that use header values must call `load_tensors` (which verifies the CRC32) first.
    """
    path = Path(path)
    if not path.is_file():
        raise ReparamError(f"file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises several types for garbage
        raise ReparamError(f"{path} is not a reparam safetensors file ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else 'unreadable'})") from None
    if "reparam" not in meta:
        raise ReparamError(f"{path} is a safetensors file without a reparam header")
    text = meta["reparam"]
    if len(text) > MAX_HEADER_BYTES:
        raise ReparamError(f"{path}: reparam header of {len(text)} bytes is larger than {MAX_HEADER_BYTES}")
    try:
        header = json.loads(text)
    except (ValueError, RecursionError):   # JSONDecodeError, an over-long integer, nesting too deep
        raise ReparamError(f"{path}: reparam header is not valid JSON") from None
    if not isinstance(header, dict):
        raise ReparamError(f"{path}: reparam header is a JSON {type(header).__name__}, not an object")
    if header.get("format") != FORMAT:
        raise ReparamError(f"{path}: format {_short(header.get('format'))} is not {FORMAT!r}")
    if header.get("format_version") != FORMAT_VERSION or isinstance(header.get("format_version"), bool):
        raise ReparamError(f"{path}: format_version {_short(header.get('format_version'))} is not supported; "
                           f"this reparam reads version {FORMAT_VERSION}")
    if not isinstance(header.get("kind"), str):
        raise ReparamError(f"{path}: header field 'kind' is missing or not a string")
    if not isinstance(header.get("tensors"), dict) or not isinstance(header.get("crc32"), int):
        raise ReparamError(f"{path}: header fields 'tensors'/'crc32' are missing or have the wrong type")
    return header


def _short(value: Any) -> str:
    """A header value for an error message: repr, cut to one short line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def load_tensors(path: str | Path, kind: str | tuple[str, ...] | None = None
                 ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load tensors and header; check kind, declared shapes/dtypes and the CRC32."""
    path = Path(path)
    header = read_header(path)
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds is not None and header.get("kind") not in kinds:
        raise ReparamError(f"{path}: file kind {_short(header.get('kind'))} is not one of {', '.join(kinds)}")
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise ReparamError(f"{path}: truncated or corrupted tensor data ({type(e).__name__})") from None
    if _describe(tensors) != header.get("tensors"):
        raise ReparamError(f"{path}: tensors do not match the header's names/shapes/dtypes")
    if _header_crc(header, _crc32(tensors)) != header.get("crc32"):
        raise ReparamError(f"{path}: CRC32 mismatch, the file is corrupted")
    aliases = header.get("aliases", {})
    if not isinstance(aliases, dict) or any(not isinstance(t, str) or a in tensors or t not in tensors
                                            for a, t in aliases.items()):
        raise ReparamError(f"{path}: the header's aliases do not name stored tensors")
    for alias, target in aliases.items():
        tensors[alias] = tensors[target]
    return tensors, header


def check_state_matches(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    """Name the first tensor whose name or shape differs between a loaded state and a model's state."""
    for name, t in expected.items():
        if name not in state:
            raise ReparamError(f"{what}: missing tensor {name!r} (shape {list(t.shape)})")
        if tuple(state[name].shape) != tuple(t.shape):
            raise ReparamError(f"{what}: tensor {name!r} has shape {list(state[name].shape)}, "
                               f"the model expects {list(t.shape)}")
    extra = [k for k in state if k not in expected]
    if extra:
        raise ReparamError(f"{what}: unexpected tensor {extra[0]!r} (the architecture does not match)")


def save_model(path: str | Path, model: torch.nn.Module, header: dict[str, Any] | None = None) -> dict[str, Any]:
    """Save a plain model's state_dict (parameters and buffers) as kind 'model'."""
    return save_tensors(path, dict(model.state_dict()), "model", header)


def load_model_state(path: str | Path, model: torch.nn.Module) -> dict[str, Any]:
    """Load a 'model' or 'checkpoint' file into `model`, naming the first mismatching tensor."""
    tensors, header = load_tensors(path, ("model", "checkpoint"))
    if header["kind"] == "checkpoint":
        tensors = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    check_state_matches(tensors, dict(model.state_dict()), str(path))
    model.load_state_dict(tensors)
    return header
