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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from reparam.core import generator
from reparam.core.errors import ReparamError
from reparam.core.fileformat import check_state_matches, load_tensors, save_tensors
from reparam.pranc.config import PrancConfig
from reparam.pranc.core import CANON_ROWS, PrancCoefficients, apply_pranc, fold_pranc, pranc_core

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
    """The header of any .prnc file (classifier or image), after the CRC32 of the whole file is verified and
    the fields every PRANC file shares are checked. Content-specific fields are checked by their readers."""
    header = load_tensors(path, KIND)[1]   # CRC first: nothing of a damaged header is used
    _check_header(path, header)
    return header


def _check_header(path, header: dict[str, Any]) -> None:
    if header.get("kind") != KIND:
        raise ReparamError(f"{path}: file kind {_short(header.get('kind'))} is not a PRANC signature ('pranc')")
    if header.get("pranc_version") != PRANC_VERSION or isinstance(header.get("pranc_version"), bool):
        raise ReparamError(f"{path}: PRANC file version {_short(header.get('pranc_version'))} is not supported "
                           f"(this reparam reads version {PRANC_VERSION})")
    gen = header.get("generator")
    if not isinstance(gen, dict) or gen.get("name") != generator.GENERATOR_NAME or \
            gen.get("version") != generator.GENERATOR_VERSION or isinstance(gen.get("version"), bool):
        got = (gen.get("name"), gen.get("version")) if isinstance(gen, dict) else (gen, None)
        raise ReparamError(f"{path}: basis generator {_short(got[0])} version {_short(got[1])} is not "
                           f"supported (this reparam has {generator.GENERATOR_NAME!r} version "
                           f"{generator.GENERATOR_VERSION})")
    if header.get("canon_rows") != CANON_ROWS or isinstance(header.get("canon_rows"), bool):
        raise ReparamError(f"{path}: canonical row group {_short(header.get('canon_rows'))} != {CANON_ROWS}")
    if not isinstance(header.get("content"), str):
        raise ReparamError(f"{path}: header field 'content' is missing or not a string")


# ---------------------------------------------------------------- header validation (classifier files)
# Every field a classifier .prnc reader uses, with its check. A new field is one more entry here (and, if
# it may be absent in older files, a name in OPTIONAL_FIELDS). Bounds keep a crafted header (CRC32 is an
# integrity check, not a signature) from driving an allocation: k must equal the stored alpha's length,
# and the dense model a file describes is at most MAX_DENSE numbers.
MAX_DENSE = 1 << 30          # basis parameters d (4 GiB as float32)
MAX_BLOCKS = 1 << 16         # coefficient blocks / basis tensors
MAX_CHUNK = 1 << 20

Check = Callable[[Any], bool]


def _is_int(lo: int, hi: int) -> Check:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _one_of(*allowed: str) -> Check:
    return lambda v: isinstance(v, str) and v in allowed


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and len(v) <= MAX_BLOCKS and all(isinstance(x, str) for x in v)


def _shape(v: Any) -> bool:
    return isinstance(v, list) and len(v) <= 8 and all(_is_int(0, MAX_DENSE)(x) for x in v)


def _block(v: Any) -> bool:
    return isinstance(v, dict) and isinstance(v.get("name"), str) and all(
        _is_int(lo, MAX_DENSE)(v.get(key)) for key, lo in (("index", 0), ("k", 1), ("d", 1), ("alpha_offset", 0)))


def _segment(v: Any) -> bool:
    return (isinstance(v, dict) and isinstance(v.get("module"), str) and isinstance(v.get("tensor"), str)
            and _shape(v.get("shape")) and _is_int(0, MAX_BLOCKS)(v.get("block"))
            and _is_int(0, MAX_DENSE)(v.get("offset")) and _is_num(v.get("scale")))


def _dict_of(check: Check) -> Check:
    return lambda v: isinstance(v, dict) and len(v) <= 4 * MAX_BLOCKS and all(check(x) for x in v.values())


HEADER_FIELDS: dict[str, Check] = {
    "seed": _is_int(-(2**63), 2**64 - 1),
    "distribution": _one_of("default-init", "gaussian"),
    "sigma": lambda v: v is None or (_is_num(v) and v > 0),
    "mode": _one_of("materialized", "streamed"),
    "chunk": _is_int(1, MAX_CHUNK),
    "init": _one_of("e0", "l1-randn"),
    "include_bias": lambda v: isinstance(v, bool),
    "other_params": _one_of("train", "freeze"),
    "exclude_state": _str_list,
    "layout": _one_of("global", "per-layer"),
    "blocks": lambda v: isinstance(v, list) and 1 <= len(v) <= MAX_BLOCKS and all(_block(b) for b in v),
    "segments": lambda v: isinstance(v, list) and 1 <= len(v) <= MAX_BLOCKS and all(_segment(x) for x in v),
    "coef_dtype": _one_of("float32", "float16"),
    "architecture": lambda v: v is None or (isinstance(v, dict) and isinstance(v.get("name"), str)),
    "param_hash": lambda v: isinstance(v, str),
    "dense_tensors": _dict_of(_shape),
    "counts": _dict_of(lambda x: x is None or _is_num(x)),
    "extra": lambda v: isinstance(v, dict),
}
OPTIONAL_FIELDS = {"init", "include_bias", "other_params", "exclude_state", "architecture", "extra"}


def validate_header(path, header: dict[str, Any], alpha_numel: int | None = None) -> dict[str, Any]:
    """Check a classifier .prnc header field by field (HEADER_FIELDS) and across fields (blocks tile alpha,
    segments lie inside their blocks). Call after the CRC32 check (load_tensors); returns the header."""
    _check_header(path, header)
    for name, check in HEADER_FIELDS.items():
        if name not in header:
            if name in OPTIONAL_FIELDS:
                continue
            raise ReparamError(f"{path}: header field {name!r} is missing; the file is damaged or not a "
                               "classifier .prnc")
        if not check(header[name]):
            raise ReparamError(f"{path}: header field {name!r} has a value that is not allowed "
                               f"({_short(header[name])})")
    blocks, segments = header["blocks"], header["segments"]
    offset = 0
    for i, b in enumerate(blocks):
        if b["index"] != i or b["alpha_offset"] != offset or b["k"] > MAX_DENSE:
            raise ReparamError(f"{path}: coefficient block {i} is out of order or does not follow block {i - 1}")
        offset += b["k"]
    if alpha_numel is not None and offset != alpha_numel:
        raise ReparamError(f"{path}: the blocks need {offset} coefficients, the file stores {alpha_numel}")
    if sum(b["d"] for b in blocks) > MAX_DENSE:
        raise ReparamError(f"{path}: the blocks describe more than {MAX_DENSE:,} basis parameters")
    if len({b["name"] for b in blocks}) != len(blocks):
        raise ReparamError(f"{path}: two coefficient blocks share a name")
    if (header["layout"] == "global") != (len(blocks) == 1 and blocks[0]["name"] == "global"):
        raise ReparamError(f"{path}: layout {header['layout']!r} does not match its {len(blocks)} block(s)")
    for seg in segments:
        numel = math.prod(seg["shape"])
        if seg["block"] >= len(blocks) or seg["offset"] + numel > blocks[seg["block"]]["d"]:
            raise ReparamError(f"{path}: basis tensor {seg['module']}.{seg['tensor']} lies outside its block")
    return header


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
    tensors, header = load_tensors(path, KIND)   # CRC32 verified before any header value is used
    alpha = tensors.get("alpha")
    if alpha is None or alpha.dim() != 1 or not alpha.is_floating_point():
        raise ReparamError(f"{path}: the file has no 1-D floating-point coefficient tensor 'alpha'")
    validate_header(path, header, alpha.numel())
    if model is None:
        if not header.get("architecture"):
            raise ReparamError(f"{path}: the file has no architecture spec; pass the model to load_prnc")
        from reparam.models import build_from_spec

        try:
            model = build_from_spec(header["architecture"], expect=header["dense_tensors"])
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
                    name = f"{a['module']}.{a['tensor']}" if a["module"] else a["tensor"]
                    why = f"basis tensor {name!r} is laid out differently (file {_short(a)}, model {b})"
                    break
        raise ReparamError(f"{path}: architecture mismatch: {why or 'parameter hash differs'}")
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
    """Header facts, sizes and compression ratios, after the CRC32 check (so a damaged file is refused, not
    described)."""
    tensors, header = load_tensors(path, KIND)
    alpha = tensors.get("alpha")
    validate_header(path, header, alpha.numel() if alpha is not None else -1)
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
