"""The `.prnc` signature file: seed + coefficients (+ BatchNorm and other non-basis tensors).

A reparam safetensors file (kind "pranc", CRC32-checked, never unpickled) with tensors
    alpha             the k coefficients (all blocks concatenated), float32 or float16
    state.<name>      every non-basis state_dict entry (BatchNorm affine + running stats, ...)
and a header (JSON) with
    pranc_version, content ("classifier" | "image" | ...), generator {name, version}, seed, distribution,
    sigma, mode, chunk, init, layout ("global" | "per-layer"), blocks [{index, name, k, d, alpha_offset}],
    segments [{module, tensor, shape, block, offset, scale}], canon_rows, coef_dtype,
    architecture (reparam.models.model_spec dict, or null when the caller supplies the model),
    param_hash (sha256 of the dense model's state_dict names and shapes), dense_tensors {name: shape},
    counts {k, d, dense_params, stored_numbers, stored_bn_numbers, ...}, extra (free-form, caller's).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from reparam.core import generator
from reparam.core.errors import ReparamError
from reparam.core.fileformat import check_state_matches, load_tensors, read_header, save_tensors
from reparam.pranc.config import PrancConfig
from reparam.pranc.core import CANON_ROWS, PrancCoefficients, apply_pranc, fold_pranc, pranc_core
from reparam.pranc.layout import Segment

KIND = "pranc"
PRANC_VERSION = 1
COEF_DTYPES = {"float32": torch.float32, "float16": torch.float16, "fp32": torch.float32,
               "fp16": torch.float16}


def _dense_tensors(model: nn.Module, core: PrancCoefficients) -> dict[str, list[int]]:
    """Names and shapes of the equivalent dense model's state_dict."""
    out: dict[str, list[int]] = {}
    basis = {s.state_name: list(s.shape) for s in core.segments}
    for name, t in model.state_dict().items():
        if name.startswith("pranc."):
            continue
        if ".parametrizations." in name:
            mod, rest = name.split(".parametrizations.", 1) if not name.startswith("parametrizations.") \
                else ("", name[len("parametrizations."):])
            tname = rest.split(".")[0]
            key = f"{mod}.{tname}" if mod else tname
            out[key] = basis[key]
        else:
            out[name] = list(t.shape)
    return out


def param_hash(dense: dict[str, list[int]], segments: list[dict]) -> str:
    blob = json.dumps({"dense": dense, "segments": segments}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def stored_state(model: nn.Module, core: PrancCoefficients) -> dict[str, torch.Tensor]:
    excl = tuple(core.config.exclude_state)
    out = {}
    for name, t in model.state_dict().items():
        if name.startswith("pranc.") or ".parametrizations." in name or name.startswith("parametrizations."):
            continue
        if excl and any(name == e or name.startswith(e + ".") or name.startswith(e) for e in excl):
            continue
        out[name] = t
    return out


def _is_bn_name(model: nn.Module, name: str) -> bool:
    mod = name.rsplit(".", 1)[0] if "." in name else ""
    m = dict(model.named_modules()).get(mod)
    return isinstance(m, nn.modules.batchnorm._BatchNorm)


def counts(model: nn.Module, core: PrancCoefficients, coef_dtype: str = "float32") -> dict[str, Any]:
    """Stored numbers and compression ratios (paper convention: dense params / stored numbers)."""
    state = stored_state(model, core)
    floats = {n: t for n, t in state.items() if t.is_floating_point()}
    stored_other = sum(t.numel() for t in floats.values())
    stored_bn = sum(t.numel() for n, t in floats.items() if _is_bn_name(model, n))
    dense_params = core.d + sum(p.numel() for n, p in model.named_parameters()
                                if not n.startswith("pranc.") and ".parametrizations." not in n)
    k = core.k
    a_bytes = k * (2 if COEF_DTYPES[coef_dtype] == torch.float16 else 4)
    other_bytes = sum(t.numel() * t.element_size() for t in state.values())
    return {
        "k": k, "d": core.d, "dense_params": dense_params,
        "stored_numbers": k + stored_other, "stored_other_numbers": stored_other,
        "stored_bn_numbers": stored_bn,
        "ratio_params_per_k": dense_params / k,
        "ratio_params_per_stored": dense_params / (k + stored_other),
        "payload_bytes": a_bytes + other_bytes, "dense_bytes": 4 * dense_params,
    }


def _check_pranc_only(model: nn.Module) -> None:
    """The file holds PRANC's numbers and plain state only: anything else parametrized would be lost."""
    from torch.nn.utils import parametrize

    from reparam.core.protocol import methods_on

    for name, module in model.named_modules():
        if not parametrize.is_parametrized(module) or ".parametrizations." in f".{name}.":
            continue
        for t in module.parametrizations.keys():
            methods = methods_on(module, t)
            if methods != ["pranc"]:
                where = f"{name}.{t}" if name else t
                raise ReparamError(f"{where} has {' then '.join(methods)}; a .prnc file stores PRANC alone: fold "
                                   "the other method first or save the model with reparam.core.fileformat.save_model")


def save_prnc(path: str | Path, model: nn.Module, *, architecture: dict[str, Any] | None = None,
              content: str = "classifier", coef_dtype: str = "float32",
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write `model`'s PRANC signature. With coef_dtype float16, alpha is rounded to fp16 in the file
    (call `round_alpha(model, "float16")` first if the model should evaluate with the same values)."""
    core = pranc_core(model)
    if core.config.delta:
        raise ReparamError("a delta-mode PRANC model is an adapter over its pretrained base, which a .prnc file "
                           "does not hold: save it with reparam.pranc.adapter.save_adapter")
    _check_pranc_only(model)
    if coef_dtype not in COEF_DTYPES:
        raise ReparamError(f"unknown coefficient dtype {coef_dtype!r}; allowed: float32, float16")
    coef_dtype = "float16" if COEF_DTYPES[coef_dtype] == torch.float16 else "float32"
    alpha = core.alpha.detach().cpu()
    if coef_dtype == "float16":
        if not torch.isfinite(alpha.half()).all():
            raise ReparamError("a coefficient overflows float16; save with coef_dtype float32")
        alpha = alpha.half()
    tensors = {"alpha": alpha.contiguous()}
    for name, t in stored_state(model, core).items():
        tensors[f"state.{name}"] = t.detach().cpu().contiguous()
    segs = [s.to_dict() for s in core.segments]
    dense = _dense_tensors(model, core)
    cfg = core.config
    header = {
        "pranc_version": PRANC_VERSION, "content": content,
        "generator": {"name": generator.GENERATOR_NAME, "version": generator.GENERATOR_VERSION},
        "seed": int(cfg.seed), "distribution": cfg.distribution, "sigma": cfg.sigma, "mode": core.mode,
        "chunk": cfg.chunk, "init": cfg.init, "include_bias": cfg.include_bias,
        "other_params": cfg.other_params, "exclude_state": list(cfg.exclude_state),
        "layout": "global" if cfg.budgets is None else "per-layer",
        "blocks": [b.to_dict() for b in core.blocks], "segments": segs, "canon_rows": CANON_ROWS,
        "coef_dtype": coef_dtype, "architecture": architecture,
        "param_hash": param_hash(dense, segs), "dense_tensors": dense,
        "counts": counts(model, core, coef_dtype), "extra": extra or {},
    }
    return save_tensors(path, tensors, KIND, header)


def round_alpha(model: nn.Module, coef_dtype: str) -> None:
    """Round alpha in place to the file's precision so the model evaluates exactly as its file decodes."""
    core = pranc_core(model)
    if COEF_DTYPES.get(coef_dtype) == torch.float16:
        with torch.no_grad():
            core.alpha.copy_(core.alpha.half().float())


def read_prnc_header(path: str | Path) -> dict[str, Any]:
    header = read_header(path)
    _check_header(path, header)
    return header


def _check_header(path, header: dict[str, Any]) -> None:
    if header.get("kind") != KIND:
        raise ReparamError(f"{path}: file kind {header.get('kind')!r} is not a PRANC signature ('pranc')")
    if header.get("pranc_version") != PRANC_VERSION:
        raise ReparamError(f"{path}: PRANC file version {header.get('pranc_version')!r} is not supported "
                           f"(this reparam reads version {PRANC_VERSION})")
    gen = header.get("generator") or {}
    if gen.get("name") != generator.GENERATOR_NAME or gen.get("version") != generator.GENERATOR_VERSION:
        raise ReparamError(f"{path}: basis generator {gen.get('name')!r} version {gen.get('version')!r} is not "
                           f"supported (this reparam has {generator.GENERATOR_NAME!r} version "
                           f"{generator.GENERATOR_VERSION})")
    if header.get("canon_rows") != CANON_ROWS:
        raise ReparamError(f"{path}: canonical row group {header.get('canon_rows')!r} != {CANON_ROWS}")


def config_from_header(header: dict[str, Any]) -> PrancConfig:
    blocks = header["blocks"]
    budgets = None if header["layout"] == "global" else {b["name"]: b["k"] for b in blocks}
    return PrancConfig(k=sum(b["k"] for b in blocks), seed=int(header["seed"]),
                       distribution=header["distribution"], sigma=header["sigma"], budgets=budgets,
                       mode="streamed", chunk=int(header["chunk"]), init=header.get("init", "e0"),
                       include_bias=header.get("include_bias", True),
                       other_params=header.get("other_params", "train"),
                       exclude_state=list(header.get("exclude_state", [])))


def _first_mismatch(expected: dict[str, list[int]], got: dict[str, list[int]]) -> str | None:
    """The first tensor (in the model's order) whose name or shape differs from the file's."""
    for name, shape in got.items():
        if name not in expected:
            return f"the model has tensor {name!r} that the file does not"
        if list(expected[name]) != list(shape):
            return f"tensor {name!r} has shape {list(shape)} in the model but {expected[name]} in the file"
    for name, shape in expected.items():
        if name not in got:
            return f"tensor {name!r} (shape {shape}) is missing from the model"
    return None


def load_prnc(path: str | Path, model: nn.Module | None = None, *, seed: int | None = None,
              mode: str = "streamed", device: str | torch.device | None = None
              ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a PRANC model from its file (architecture from the header unless `model` is given).

    `seed` overrides the stored basis seed (the wrong-seed ablation). The returned model is in eval mode;
    its eval-mode weights are exactly the weights it was trained and evaluated with.
    """
    tensors, header = load_tensors(path, KIND)
    _check_header(path, header)
    if model is None:
        if not header.get("architecture"):
            raise ReparamError(f"{path}: the file has no architecture spec; pass the model to load_prnc")
        from reparam.models import build_from_spec

        try:
            model = build_from_spec(header["architecture"])
        except ReparamError as e:
            raise ReparamError(f"{path}: cannot rebuild the architecture: {e}") from None
    if device is not None:
        model = model.to(device)
    config = config_from_header(header)
    seg_modules = {s["module"] for s in header["segments"]}

    def filter_fn(module: nn.Module, name: str) -> bool:
        return name in seg_modules

    missing = [n for n in sorted(seg_modules) if n not in dict(model.named_modules())]
    if missing:
        raise ReparamError(f"{path}: architecture mismatch: basis layer {missing[0]!r} is not in the model")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            core = apply_pranc(model, config, filter_fn)
        except ReparamError as e:
            raise ReparamError(f"{path}: architecture mismatch: {e}") from None
    segs = [s.to_dict() for s in core.segments]
    dense = _dense_tensors(model, core)
    if param_hash(dense, segs) != header["param_hash"]:
        why = _first_mismatch(header["dense_tensors"], dense)
        if why is None:
            for a, b in zip(header["segments"], segs):
                if a != b:
                    why = (f"basis tensor {Segment(**{**a, 'shape': tuple(a['shape'])}).state_name!r} is laid out "
                           f"differently (file {a}, model {b})")
                    break
        raise ReparamError(f"{path}: architecture mismatch: {why or 'parameter hash differs'}")
    alpha = tensors["alpha"]
    if alpha.numel() != core.k:
        raise ReparamError(f"{path}: alpha has {alpha.numel()} coefficients, the layout needs {core.k}")
    state = {k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")}
    expected = stored_state(model, core)
    check_state_matches(state, expected, f"{path}: architecture mismatch")
    with torch.no_grad():
        core.alpha.copy_(alpha.float())
        sd = model.state_dict()
        for name, t in state.items():
            sd[name].copy_(t)
    if seed is not None:
        core.set_seed(int(seed))
    if mode != "streamed":
        core.set_mode(mode)
    model.eval()
    return model, header


def decode_prnc(path: str | Path, *, seed: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """A plain dense model (no PRANC left) with the exact weights, built in O(d) memory."""
    model, header = load_prnc(path, seed=seed)
    fold_pranc(model)
    model.eval()
    return model, header


def inspect_prnc(path: str | Path) -> dict[str, Any]:
    """Header facts, sizes and compression ratios (without reading the tensor data)."""
    header = read_prnc_header(path)
    size = Path(path).stat().st_size
    c = dict(header.get("counts", {}))
    dense_bytes = c.get("dense_bytes", 0)
    info = {
        "file": str(path), "file_bytes": size, "content": header.get("content"),
        "generator": f"{header['generator']['name']} v{header['generator']['version']}",
        "seed": header["seed"], "distribution": header["distribution"], "sigma": header.get("sigma"),
        "layout": header["layout"], "blocks": len(header["blocks"]), "mode": header["mode"],
        "coef_dtype": header["coef_dtype"],
        "architecture": (header.get("architecture") or {}).get("name"),
        "k": c.get("k"), "d": c.get("d"), "dense_params": c.get("dense_params"),
        "stored_numbers": c.get("stored_numbers"), "stored_bn_numbers": c.get("stored_bn_numbers"),
        "ratio_params_per_k": c.get("ratio_params_per_k"),
        "ratio_params_per_stored": c.get("ratio_params_per_stored"),
        "ratio_dense_bytes_per_file_bytes": dense_bytes / size if size else math.nan,
        "budgets": {b["name"]: b["k"] for b in header["blocks"]},
    }
    return info
