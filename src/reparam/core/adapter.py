"""Adapter files: the few numbers that fine-tune a pretrained base, refused on any other base.

An adapter (NOLA's or PRANC's delta-mode coefficients, a baseline's trained tensors) is a reparam file
(`core.fileformat`, kind "adapter", CRC-checked, never unpickled) whose header holds, besides the method's
own fields:
    adapter_version, method, coef_dtype,
    base: {arch_hash, weights_hash, tensors}: sha256 of the base's state names/dtypes/shapes, and of those
          plus every byte of its values (parameters and buffers: BatchNorm statistics, input normalization).
Loading onto a model whose base differs in either hash is refused with one line (`check_base`).

The base of a model carrying a delta method is its state with every parametrized tensor's `original` under
the tensor's own name and the parametrizations' own numbers left out (`base_state`); a method that merges
reversibly keeps the base tensor in `module._reparam_base[tensor]` so the fingerprint stays the base's.

Coefficients are stored as float32, float16, or quantized to b bits (`int8` ... `int2`, NOLA's quantized
variant): per vector (one per layer and factor, or per PRANC block) a symmetric uniform grid of 2^(b-1) - 1
levels each side of zero with one float32 step, the integers bit-packed. `round_coefficients` gives the
values the file decodes to, so a model can evaluate with exactly them before it is saved.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from reparam.core.errors import ReparamError
from reparam.core.fileformat import load_tensors, save_tensors

KIND = "adapter"
ADAPTER_VERSION = 1
COEF_DTYPES = ("float32", "float16", "int8", "int6", "int5", "int4", "int3", "int2")
_BASE_ATTR = "_reparam_base"   # module attribute {tensor: base tensor} while a delta is merged in


# -- the base and its fingerprint ---------------------------------------------------------------------------
def base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The pretrained base's state_dict, whatever delta method is on the model (see the module docstring)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict(keep_vars=False).items():
        if ".parametrizations." in f".{name}":
            head, rest = (name.split(".parametrizations.", 1) if not name.startswith("parametrizations.")
                          else ("", name[len("parametrizations."):]))
            tensor, what = rest.split(".", 1)
            if what == "original":
                out[f"{head}.{tensor}" if head else tensor] = t
            continue
        out[name] = t
    for mname, module in model.named_modules():
        for tensor, base in module.__dict__.get(_BASE_ATTR, {}).items():
            out[f"{mname}.{tensor}" if mname else tensor] = base.detach()
    return out


def keep_base(module: nn.Module, tensor: str, base: torch.Tensor) -> None:
    """Remember the base tensor of `module.<tensor>` while a delta is merged into it."""
    module.__dict__.setdefault(_BASE_ATTR, {})[tensor] = base


def pop_base(module: nn.Module, tensor: str) -> torch.Tensor:
    bases = module.__dict__.get(_BASE_ATTR, {})
    base = bases.pop(tensor)
    if not bases:
        module.__dict__.pop(_BASE_ATTR, None)
    return base


def has_base(module: nn.Module, tensor: str) -> bool:
    return tensor in module.__dict__.get(_BASE_ATTR, {})


def fingerprint(model_or_state: nn.Module | dict[str, torch.Tensor]) -> dict[str, Any]:
    """{arch_hash, weights_hash, tensors} of a base (a plain model, a model carrying a delta, or a state)."""
    state = base_state(model_or_state) if isinstance(model_or_state, nn.Module) else model_or_state
    arch = hashlib.sha256()
    weights = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().contiguous().cpu()
        desc = json.dumps([name, str(t.dtype).replace("torch.", ""), list(t.shape)]).encode()
        arch.update(desc)
        weights.update(desc)
        if t.numel():
            weights.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool
                           else t.reshape(-1).to(torch.uint8).numpy().tobytes())
    return {"arch_hash": arch.hexdigest(), "weights_hash": weights.hexdigest(), "tensors": len(state)}


def check_base(header: dict[str, Any], model: nn.Module, where: str | Path) -> None:
    """One line when `model`'s base is not the one the adapter was trained on."""
    want = header.get("base") or {}
    have = fingerprint(model)
    if want.get("arch_hash") != have["arch_hash"]:
        raise ReparamError(f"{where}: the adapter was trained on another architecture (base arch hash "
                           f"{str(want.get('arch_hash'))[:12]}, this model {have['arch_hash'][:12]}); load it "
                           "onto the base it was trained on")
    if want.get("weights_hash") != have["weights_hash"]:
        raise ReparamError(f"{where}: the adapter was trained on other base weights (fingerprint "
                           f"{str(want.get('weights_hash'))[:12]}, this base {have['weights_hash'][:12]}); load it "
                           "onto the base it was trained on")


# -- the file ---------------------------------------------------------------------------------------------
def save_adapter(path: str | Path, method: str, tensors: dict[str, torch.Tensor], header: dict[str, Any],
                 base: nn.Module | dict[str, Any]) -> dict[str, Any]:
    """Write an adapter file; `base` is the model (its base is fingerprinted) or a ready fingerprint."""
    fp = base if isinstance(base, dict) else fingerprint(base)
    full = {"adapter_version": ADAPTER_VERSION, "method": method, **header, "base": fp}
    return save_tensors(path, tensors, KIND, full)


def read_adapter(path: str | Path, method: str | None = None, model: nn.Module | None = None
                 ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and header of an adapter file: kind, version and method checked, and the base when `model`
    is given."""
    tensors, header = load_tensors(path, KIND)
    if header.get("adapter_version") != ADAPTER_VERSION:
        raise ReparamError(f"{path}: adapter_version {header.get('adapter_version')!r} is not supported; this "
                           f"reparam reads version {ADAPTER_VERSION}")
    if method is not None and header.get("method") != method:
        raise ReparamError(f"{path} is a {header.get('method')!r} adapter, not a {method!r} one")
    if model is not None:
        check_base(header, model, path)
    return tensors, header


def adapter_config(header: dict[str, Any], path: str | Path, version_key: str, version: int, config_cls: type,
                   stream: int | None = None) -> Any:
    """What every adapter reader checks after the base (read_adapter): its own file version, that the
    random matrices come from this reparam's generator (and stream, for NOLA), and that its config builds.
    Returns the config."""
    from reparam.core import generator

    if header.get(version_key) != version:
        raise ReparamError(f"{path}: {version_key} {header.get(version_key)!r} is not supported; this reparam "
                           f"reads version {version}")
    gen = header.get("generator", {})
    if not isinstance(gen, dict):
        gen = {}
    want = (generator.GENERATOR_NAME, generator.GENERATOR_VERSION) + ((stream,) if stream is not None else ())
    got = (gen.get("name"), gen.get("version")) + ((gen.get("stream"),) if stream is not None else ())
    if got != want:
        raise ReparamError(f"{path}: generator {gen} is not this reparam's ({generator.GENERATOR_NAME} version "
                           f"{generator.GENERATOR_VERSION}); the random matrices would differ")
    try:
        return config_cls(**header["config"])
    except TypeError as e:
        raise ReparamError(f"{path}: the adapter's config does not fit this reparam ({e})") from None


def payload_bytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


# -- coefficients: float32, float16 or b-bit --------------------------------------------------------------
def check_coef_dtype(dtype: str) -> str:
    aliases = {"fp32": "float32", "fp16": "float16"}
    dtype = aliases.get(dtype, dtype)
    if dtype not in COEF_DTYPES:
        raise ReparamError(f"unknown coefficient dtype {dtype!r}; allowed: {', '.join(COEF_DTYPES)}")
    return dtype


def bits_of(dtype: str) -> int | None:
    return int(dtype[3:]) if dtype.startswith("int") else None


def _step(v: torch.Tensor, bits: int) -> torch.Tensor:
    """max|v| / levels with the low 8 mantissa bits cleared: levels (< 2^8) times the step is then exact in
    float32, so quantizing values already on the grid gives the same step and integers (idempotent)."""
    levels = 2 ** (bits - 1) - 1
    m = v.detach().to(torch.float32).abs().max() if v.numel() else torch.zeros(())
    step = torch.where(m > 0, m / levels, torch.ones(())).to(torch.float32).reshape(1)
    return (step.view(torch.int32) & ~0xFF).view(torch.float32)[0]


def quantize(v: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(integers in [-(2^(b-1)-1), 2^(b-1)-1], float32 step) of one coefficient vector."""
    step = _step(v, bits)
    levels = 2 ** (bits - 1) - 1
    q = torch.round(v.detach().to(torch.float32) / step).clamp_(-levels, levels).to(torch.int64)
    return q, step


def fake_quantize(v: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantization-aware training: the forward sees the b-bit values, gradients pass straight through."""
    q, step = quantize(v, bits)
    return q.to(v.dtype) * step.to(v.dtype) + (v - v.detach())   # the values of the file, v's gradient


def round_coefficients(v: torch.Tensor, dtype: str, segments: list[tuple[int, int]]) -> torch.Tensor:
    """`v` as the file stores it (float32 values): what a model evaluates with after loading."""
    dtype = check_coef_dtype(dtype)
    if dtype == "float32":
        return v.detach().to(torch.float32).clone()
    if dtype == "float16":
        h = v.detach().to(torch.float16)
        if not torch.isfinite(h).all():
            raise ReparamError("a coefficient overflows float16; use float32 (or a quantized dtype)")
        return h.to(torch.float32)
    out = torch.empty_like(v, dtype=torch.float32)
    for a, n in segments:
        q, step = quantize(v[a:a + n], bits_of(dtype))
        out[a:a + n] = q.to(torch.float32) * step
    return out


def pack_bits(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed b-bit integers -> uint8 bytes, little-endian bit order (offset by 2^(b-1) - 1 to be >= 0)."""
    u = (q.to(torch.int64) + (2 ** (bits - 1) - 1)).numpy().astype(np.uint16)
    bitarr = ((u[:, None] >> np.arange(bits, dtype=np.uint16)) & 1).astype(np.uint8).reshape(-1)
    return torch.from_numpy(np.packbits(bitarr, bitorder="little").copy())


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    bitarr = np.unpackbits(packed.numpy(), bitorder="little")[: n * bits].reshape(n, bits).astype(np.int64)
    u = (bitarr << np.arange(bits, dtype=np.int64)).sum(1)
    return torch.from_numpy(u - (2 ** (bits - 1) - 1))


def encode_coefficients(name: str, v: torch.Tensor, dtype: str, segments: list[tuple[int, int]]
                        ) -> dict[str, torch.Tensor]:
    """The file's tensors for one coefficient vector: `name` (float) or `name.q` + `name.step` (b bits)."""
    dtype = check_coef_dtype(dtype)
    v = v.detach().cpu().to(torch.float32)
    if dtype in ("float32", "float16"):
        return {name: round_coefficients(v, dtype, segments).to(getattr(torch, dtype))}
    bits = bits_of(dtype)
    qs, steps = [], []
    for a, n in segments:
        q, step = quantize(v[a:a + n], bits)
        qs.append(q)
        steps.append(step)
    q = torch.cat(qs) if qs else torch.zeros(0, dtype=torch.int64)
    return {f"{name}.q": pack_bits(q, bits), f"{name}.step": torch.stack(steps) if steps else torch.zeros(0)}


def decode_coefficients(tensors: dict[str, torch.Tensor], name: str, dtype: str, n: int,
                        segments: list[tuple[int, int]], where: str | Path = "adapter") -> torch.Tensor:
    dtype = check_coef_dtype(dtype)
    if dtype in ("float32", "float16"):
        if name not in tensors or tensors[name].numel() != n:
            raise ReparamError(f"{where}: coefficient tensor {name!r} is missing or does not hold {n} numbers")
        return tensors[name].to(torch.float32)
    bits = bits_of(dtype)
    q, step = tensors.get(f"{name}.q"), tensors.get(f"{name}.step")
    if q is None or step is None or q.numel() != math.ceil(n * bits / 8) or step.numel() != len(segments):
        raise ReparamError(f"{where}: quantized coefficients {name!r} do not match the header ({n} numbers of "
                           f"{bits} bits in {len(segments)} vectors)")
    ints = unpack_bits(q, bits, n).to(torch.float32)
    out = torch.empty(n)
    for (a, m), s in zip(segments, step.to(torch.float32)):
        out[a:a + m] = ints[a:a + m] * s
    return out
