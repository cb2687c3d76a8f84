"""NOLA adapter files: seed + coefficients, checked against the base they were trained on.

`save_adapter(path, model, coef_dtype)` writes a reparam file of kind "adapter" (reparam.core.adapter) with
tensors `alpha` and `beta` (float32 or float16), or `alpha.q`/`alpha.step`, `beta.q`/`beta.step` (b-bit
integers, bit-packed, one float32 step per layer and factor), and a header: method "nola", nola_version,
generator {name, version, stream}, config {k, l, rank, seed, lora_alpha, sharing, quant_bits}, layers
[{module, tensor, shape, index, out, inn, alpha_offset, beta_offset}], coef_dtype, counts, the base's
arch_hash and weights_hash, and free-form `extra`. A few hundred coefficients make a file of a few KB.

`load_adapter(path, model)` refuses another base in one line; on a model that already carries a NOLA
adapter of the same layout it only swaps the coefficients (the base is not touched or reloaded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from reparam.core import adapter as ad
from reparam.core import generator
from reparam.core.errors import ReparamError
from reparam.core.protocol import Applied, methods_on
from reparam.nola.config import Config
from reparam.nola.core import NOLA_STREAM, apply, nola_core, remove, set_coefficients

NOLA_VERSION = 1


def _check_nola_only(model: nn.Module) -> None:
    """The adapter holds NOLA's numbers over a plain base: any other method on the model would be lost."""
    for name, module in model.named_modules():
        if ".parametrizations." in f".{name}.":
            continue
        for t, _ in list(module.named_parameters(recurse=False)) + (
                [(k, None) for k in module.parametrizations.keys()] if parametrize.is_parametrized(module) else []):
            methods = methods_on(module, t)
            if methods and methods != ["nola"]:
                where = f"{name}.{t}" if name else t
                raise ReparamError(f"{where} has {' then '.join(methods)}; a NOLA adapter stores NOLA over a plain "
                                   "base: fold the other method into the base first")


def round_coefficients(model: nn.Module, coef_dtype: str) -> None:
    """Round alpha and beta in place to what a `coef_dtype` file stores, so that the model evaluates exactly as
    the file decodes (post-training quantization; quantization-aware training is Config.quant_bits)."""
    core = nola_core(model)
    with torch.no_grad():
        for name in ("alpha", "beta"):
            v = getattr(core, name)
            v.copy_(ad.round_coefficients(v.detach().cpu(), coef_dtype, core.segments(name)).to(v))


def save_adapter(path: str | Path, model: nn.Module, *, coef_dtype: str = "float32",
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the model's NOLA adapter (see the module docstring); returns the header written."""
    core = nola_core(model)
    _check_nola_only(model)
    coef_dtype = ad.check_coef_dtype(coef_dtype)
    tensors = {**ad.encode_coefficients("alpha", core.alpha, coef_dtype, core.segments("alpha")),
               **ad.encode_coefficients("beta", core.beta, coef_dtype, core.segments("beta"))}
    header = {
        "nola_version": NOLA_VERSION,
        "generator": {"name": generator.GENERATOR_NAME, "version": generator.GENERATOR_VERSION,
                      "stream": NOLA_STREAM},
        "config": core.config.to_dict(),
        "layers": [p.to_dict() for p in core.layers],
        "coef_dtype": coef_dtype,
        "counts": {"alpha": core.alpha.numel(), "beta": core.beta.numel(), "stored_numbers": core.stored,
                   "payload_bytes": ad.payload_bytes(tensors)},
        "extra": extra or {},
    }
    return ad.save_adapter(path, "nola", tensors, header, model)


def read_adapter(path: str | Path, model: nn.Module | None = None
                 ) -> tuple[Config, dict[str, torch.Tensor], dict[str, Any]]:
    """(config, {"alpha", "beta"} as float32, header); checks the base when `model` is given."""
    tensors, header = ad.read_adapter(path, "nola", model)
    config = ad.adapter_config(header, path, "nola_version", NOLA_VERSION, Config, stream=NOLA_STREAM)
    n = len(header["layers"])
    shared = config.sharing == "shared"
    na, nb = (config.k, config.n_beta) if shared else (config.k * n, config.n_beta * n)
    segs_a = [(0, config.k)] if shared else [(i * config.k, config.k) for i in range(n)]
    segs_b = [(0, config.n_beta)] if shared else [(i * config.n_beta, config.n_beta) for i in range(n)]
    dtype = header.get("coef_dtype", "float32")
    coefs = {"alpha": ad.decode_coefficients(tensors, "alpha", dtype, na, segs_a, path),
             "beta": ad.decode_coefficients(tensors, "beta", dtype, nb, segs_b, path)}
    return config, coefs, header


def _same_layout(model: nn.Module, config: Config, layers: list[dict]) -> bool:
    try:
        core = nola_core(model)
    except ReparamError:
        return False
    return core.config.to_dict() == config.to_dict() and [p.to_dict() for p in core.layers] == layers


def load_adapter(path: str | Path, model: nn.Module) -> Applied | None:
    """Put the adapter in `path` on `model` (its base must be the adapter's). A model carrying a NOLA adapter of
    the same layout keeps its parametrizations and only swaps the coefficients (returns None); otherwise any
    NOLA adapter on it is removed and this one applied (returns the handle)."""
    config, coefs, header = read_adapter(path, model)
    if _same_layout(model, config, header["layers"]):
        set_coefficients(model, coefs)
        return None
    try:
        nola_core(model)
        remove(model)
    except ReparamError:
        pass
    names = {(d["module"], d["tensor"]) for d in header["layers"]}
    modules = {d["module"] for d in header["layers"]}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        handle = apply(model, config, filter_fn=lambda m, name: name in modules)
    core = handle.extra["core"]
    if [p.to_dict() for p in core.layers] != header["layers"] or {(p.module, p.tensor) for p in core.layers} != names:
        remove(model)
        raise ReparamError(f"{path}: the model's layers do not match the adapter's layer list")
    set_coefficients(model, coefs)
    return handle
