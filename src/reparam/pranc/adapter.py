"""PRANC delta-mode adapters: seed + k coefficients over a pretrained base, in reparam's adapter file.

A reparam file of kind "adapter" (reparam.core.adapter) with tensor `alpha` (float32 / float16) or
`alpha.q` + `alpha.step` (b-bit, one step per block) and a header: method "pranc", pranc_adapter_version,
generator {name, version}, config (every `pranc.Config` field, so whatever basis generates the delta is
rebuilt), blocks, segments, coef_dtype, counts, the base's arch_hash and weights_hash, `extra`.

`load_adapter(path, model)` refuses another base in one line; on a model already carrying a delta-mode
PRANC adapter of the same layout it only swaps alpha.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from reparam.core import adapter as ad
from reparam.core import generator
from reparam.core.errors import ReparamError
from reparam.core.protocol import Applied
from reparam.pranc.config import PrancConfig
from reparam.pranc.core import PrancCoefficients, apply, pranc_core

ADAPTER_VERSION = 1


def _delta_core(model: nn.Module) -> PrancCoefficients:
    core = pranc_core(model)
    if not core.config.delta:
        raise ReparamError("this PRANC model is not in delta mode: an adapter file stores pranc.Config(delta=True) "
                           "coefficients over a base (a model trained from scratch is saved with save_prnc)")
    return core


def _segments(core: PrancCoefficients) -> list[tuple[int, int]]:
    return [(b.alpha_offset, b.k) for b in core.blocks]


def round_coefficients(model: nn.Module, coef_dtype: str) -> None:
    """Round alpha in place to what a `coef_dtype` file stores (the model then evaluates as the file decodes)."""
    core = _delta_core(model)
    with torch.no_grad():
        core.alpha.copy_(ad.round_coefficients(core.alpha.detach().cpu(), coef_dtype, _segments(core)).to(core.alpha))


def save_adapter(path: str | Path, model: nn.Module, *, coef_dtype: str = "float32",
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the delta-mode PRANC adapter of `model`; returns the header written."""
    core = _delta_core(model)
    coef_dtype = ad.check_coef_dtype(coef_dtype)
    tensors = ad.encode_coefficients("alpha", core.alpha, coef_dtype, _segments(core))
    header = {
        "pranc_adapter_version": ADAPTER_VERSION,
        "generator": {"name": generator.GENERATOR_NAME, "version": generator.GENERATOR_VERSION},
        "config": core.config.to_dict(),
        "blocks": [b.to_dict() for b in core.blocks],
        "segments": [s.to_dict() for s in core.segments],
        "coef_dtype": coef_dtype,
        "counts": {"k": core.k, "d": core.d, "stored_numbers": core.k, "payload_bytes": ad.payload_bytes(tensors)},
        "extra": extra or {},
    }
    return ad.save_adapter(path, "pranc", tensors, header, model)


def read_adapter(path: str | Path, model: nn.Module | None = None
                 ) -> tuple[PrancConfig, torch.Tensor, dict[str, Any]]:
    """(config, alpha as float32, header); checks the base when `model` is given."""
    tensors, header = ad.read_adapter(path, "pranc", model)
    config = ad.adapter_config(header, path, "pranc_adapter_version", ADAPTER_VERSION, PrancConfig)
    segs = [(b["alpha_offset"], b["k"]) for b in header["blocks"]]
    k = sum(n for _, n in segs)
    alpha = ad.decode_coefficients(tensors, "alpha", header.get("coef_dtype", "float32"), k, segs, path)
    return config, alpha, header


def _layout(core: PrancCoefficients) -> tuple[list, list]:
    return [b.to_dict() for b in core.blocks], [s.to_dict() for s in core.segments]


def remove(model: nn.Module) -> nn.Module:
    """Take a delta-mode PRANC adapter off: the pretrained tensors (the same objects) come back, frozen."""
    from torch.nn.utils import parametrize

    core = _delta_core(model)
    for t in list(core._tensors):
        module = model.get_submodule(t.seg.module)
        cls = type(module)   # a class of its own first (see core.protocol.bake)
        module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
        t.release()
        parametrize.remove_parametrizations(module, t.seg.tensor, leave_parametrized=False)
    return model


def load_adapter(path: str | Path, model: nn.Module) -> Applied | None:
    """Put the adapter on `model` (its base must be the adapter's): swaps alpha when the model already carries a
    delta-mode PRANC adapter of the same layout (returns None), else applies it (returns the handle)."""
    config, alpha, header = read_adapter(path, model)
    try:
        core = pranc_core(model)
    except ReparamError:
        core = None
    if core is not None and core.config.to_dict() == config.to_dict() and _layout(core) == (
            header["blocks"], header["segments"]):
        with torch.no_grad():
            core.alpha.copy_(alpha.to(core.alpha))
        return None
    if core is not None:
        if core.config.delta:
            remove(model)
        else:
            raise ReparamError("the model carries a PRANC model trained from scratch; a PRANC adapter goes on its "
                               "pretrained base")
    modules = {s["module"] for s in header["segments"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        handle = apply(model, config, filter_fn=lambda m, name: name in modules)
    core = handle.extra["core"]
    if _layout(core) != (header["blocks"], header["segments"]):
        remove(model)
        raise ReparamError(f"{path}: the model's layers do not match the adapter's layout")
    with torch.no_grad():
        core.alpha.copy_(alpha.to(core.alpha))
    return handle

