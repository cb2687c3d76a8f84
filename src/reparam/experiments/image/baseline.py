"""The paper's "trained INR" baseline: the same Fourier-feature MLP trained directly (no PRANC), stored as
fp16 weights, with its width reduced until the file is no larger than a byte budget.

File: reparam container of kind "image-inr", one float16 tensor `weights` (every parameter flattened in
state_dict order, LayerNorm affine included) and a small header (image size, INR spec).
"""

from __future__ import annotations

import os
import tempfile
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reparam.core.errors import ReparamError
from reparam.core.fileformat import load_tensors, save_tensors
from reparam.image.fit import FitConfig, FitResult, fit_inr
from reparam.image.inr import InrSpec, build_inr, dense_params
from reparam.image.metrics import to_uint8

KIND = "image-inr"


def _header(spec: InrSpec, c: int, h: int, w: int) -> dict[str, Any]:
    return {"content": "image", "image": [c, h, w], "inr": spec.to_dict(), "coef_dtype": "float16"}


def flat_weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).half()


def load_flat(model: nn.Module, flat: torch.Tensor) -> None:
    off = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            p.copy_(flat[off:off + n].view_as(p).float())
            off += n


def file_bytes_for(spec: InrSpec, c: int, h: int, w: int) -> int:
    n = dense_params(spec, c)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "probe.inr"
        header = {**_header(spec, c, h, w), "decoded_crc32": 4294967295}
        save_tensors(p, {"weights": torch.zeros(n, dtype=torch.float16)}, KIND, header)
        return p.stat().st_size + 9  # the CRC field may be up to 9 digits longer


def width_for_bytes(target_bytes: float, spec: InrSpec, c: int, h: int, w: int) -> int | None:
    """The widest network (same depth and Fourier features) whose file fits in target_bytes; None if even
    width 1 does not fit."""
    lo, hi = 0, max(1, spec.width)
    while file_bytes_for(replace(spec, width=hi), c, h, w) <= target_bytes and hi < 4096:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if file_bytes_for(replace(spec, width=mid), c, h, w) <= target_bytes:
            lo = mid
        else:
            hi = mid
    return lo or None


@dataclass
class TrainedInr:
    model: nn.Module
    spec: InrSpec
    decoded: torch.Tensor    # uint8, from the fp16 weights
    fit: FitResult
    seconds: float


def train(image: torch.Tensor, spec: InrSpec, fit: FitConfig, *, seed: int = 0, progress: bool = True
          ) -> TrainedInr:
    c, h, w = image.shape
    t0 = time.perf_counter()
    torch.manual_seed(seed)  # the plain network's initial weights
    model = build_inr(spec, c, h, w)
    result = fit_inr(model, image, fit, progress=progress, label=f"INR width {spec.width}")
    load_flat(model, flat_weights(model))  # evaluate exactly what the fp16 file holds
    model.eval()
    with torch.no_grad():
        decoded = to_uint8(model.render(h, w))
    return TrainedInr(model, spec, decoded, result, time.perf_counter() - t0)


def save(path: str | os.PathLike, trained: TrainedInr) -> int:
    c, h, w = trained.decoded.shape
    header = _header(trained.spec, c, h, w)
    header["decoded_crc32"] = zlib.crc32(trained.decoded.contiguous().numpy().tobytes())
    save_tensors(path, {"weights": flat_weights(trained.model)}, KIND, header)
    return Path(path).stat().st_size


def decode(path: str | os.PathLike) -> torch.Tensor:
    tensors, header = load_tensors(path, KIND)
    try:
        c, h, w = (int(v) for v in header["image"])
        spec = InrSpec.from_dict(header["inr"])
    except (KeyError, TypeError, ValueError) as e:
        raise ReparamError(f"{path}: malformed INR header ({type(e).__name__}: {e})") from None
    model = build_inr(spec, c, h, w)
    flat = tensors.get("weights")
    if flat is None or flat.numel() != dense_params(spec, c):
        raise ReparamError(f"{path}: weight tensor does not match the INR spec")
    load_flat(model, flat)
    model.eval()
    with torch.no_grad():
        return to_uint8(model.render(h, w))
