"""Adapting a pretrained base to a new task, every method in one harness, each run reporting accuracy and the
bytes it stores.

Methods (the base is frozen except where a method trains it; its BatchNorm statistics stay the base's):
    nola     NOLA, `k` coefficients in all (split evenly over the adapted tensors and the two factors)
    pranc    PRANC in delta mode, `k` coefficients (one global alpha)
    lora     LoRA of rank `rank` (A and B trained)
    bitfit   every bias (Linear, Conv and the BatchNorm shifts) trained
    linear   linear probe: the head trained
    full     full fine-tuning (every parameter, BatchNorm statistics included)
    peft-lora, peft-vera   HF PEFT's LoRA / VeRA (optional extra `reparam[peft]`; peft_baselines.py)
Every method but the PEFT ones writes `adapter.safetensors` (reparam.core.adapter: the base's fingerprint
in the header), which `load_adapter` puts back on the same base and refuses on any other.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from reparam.core import adapter as ad
from reparam.core.errors import ReparamError
from reparam.core.fileformat import load_model_state, read_header

METHODS = ("nola", "pranc", "lora", "bitfit", "linear", "full")
PEFT_METHODS = ("peft-lora", "peft-vera")
ALL_METHODS = METHODS + PEFT_METHODS
SIZED = {"nola": "k", "pranc": "k", "lora": "rank", "peft-lora": "rank", "peft-vera": "rank"}
# Adam learning rates, picked on the validation split of digits -> digits-rotated (cnn base, 10 epochs,
# k = 200 / rank 4; docs/results/adapters.md); PEFT's LoRA takes the tiny LoRA's, VeRA's was not tuned.
DEFAULT_LR = {"nola": 0.05, "pranc": 0.05, "lora": 0.03, "bitfit": 0.3, "linear": 0.3, "full": 0.001,
              "peft-lora": 0.03, "peft-vera": 0.03}
# The harness's NOLA: one alpha and one beta shared by all tensors, rank 8 (chosen with the learning rates)
NOLA_RANK, NOLA_SHARING, LORA_RANK, BATCH_SIZE = 8, "shared", 4, 32
PRANC_MATERIALIZE_BYTES = 1 << 30   # PRANC keeps its k x d basis in memory below this, else streams it


@dataclass
class Prepared:
    """A method set up on a model: what to train, its hooks, what it stores and how to save it."""

    method: str
    model: nn.Module                 # the module to train and evaluate (PEFT wraps the base)
    params: list[nn.Parameter]
    hooks: list[Any]
    stored_numbers: int
    describe: str
    save: Callable[[Path, dict[str, Any]], dict[str, Any]] | None = None
    config: dict[str, Any] = field(default_factory=dict)


# -- the base -------------------------------------------------------------------------------------------
def base_path(run: str | Path) -> Path:
    p = Path(run)
    path = p / "model.safetensors" if p.is_dir() else p
    if not path.is_file():
        raise ReparamError(f"base {str(run)!r} has no model.safetensors: give a `reparam train` output folder")
    return path


def load_base(run: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The pretrained model of a `reparam train` output folder (architecture from its header), in eval mode."""
    from reparam.models import build_from_spec

    path = base_path(run)
    header = read_header(path)
    spec = header.get("model_spec")
    if not isinstance(spec, dict):
        raise ReparamError(f"{path} has no model_spec in its header: it was not written by `reparam train`")
    model = build_from_spec(spec)
    load_model_state(path, model)
    return model.eval(), header


def check_target(model: nn.Module, splits, data: str) -> None:
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear) and head.out_features != splits.num_classes:
        raise ReparamError(f"the base has {head.out_features} classes, {data!r} has {splits.num_classes}; adapt to a "
                           "target with as many classes (e.g. another split of the same size, --data-options "
                           "'{\"classes\": [...]}')")
    channels = getattr(model, "in_channels", None)
    if channels is not None and channels != splits.in_channels:
        raise ReparamError(f"the base takes {channels}-channel images, {data!r} has {splits.in_channels}")


# -- methods ---------------------------------------------------------------------------------------------
def _freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def _state_saver(method: str, names: list[str], model: nn.Module, base_fp: dict[str, Any], config: dict[str, Any]):
    def save(path: Path, extra: dict[str, Any]) -> dict[str, Any]:
        state = model.state_dict()
        tensors = {f"state.{n}": state[n].detach().cpu().contiguous() for n in names}
        header = {"config": config, "tensors_changed": names, "coef_dtype": "float32",
                  "counts": {"stored_numbers": sum(t.numel() for t in tensors.values()),
                             "payload_bytes": ad.payload_bytes(tensors)}, "extra": extra}
        return ad.save_adapter(path, method, tensors, header, base_fp)

    return save


def layer_filter(layers: str | None):
    """filter_fn keeping the layers whose name matches the regular expression `layers` (None: every layer)."""
    if layers is None:
        return None
    try:
        pattern = re.compile(layers)
    except re.error as e:
        raise ReparamError(f"--layers {layers!r} is not a regular expression ({e})") from None
    return lambda module, name: bool(pattern.search(name))


def nola_config(model: nn.Module, k: int, rank: int, seed: int, sharing: str = "per-layer",
                quant_bits: int | None = None, filter_fn=None):
    """NOLA with `k` coefficients in all: per layer k // (2 layers) for each factor (or k // 2 each, shared)."""
    from reparam import nola
    from reparam.nola.core import plan_layers

    n = len(plan_layers(model, nola.Config(k=1), filter_fn)[0])
    per = k // 2 if sharing == "shared" else k // (2 * n)
    if per < 1:
        least = 2 if sharing == "shared" else 2 * n
        raise ReparamError(f"--k {k} is too small for NOLA on {n} tensors: at least {least} (one alpha and one "
                           "beta per tensor)")
    return nola.Config(k=per, rank=rank, seed=seed, sharing=sharing, quant_bits=quant_bits)


def prepare(method: str, model: nn.Module, *, k: int = 200, rank: int | None = None, seed: int = 0,
            sharing: str | None = None, quant_bits: int | None = None, layers: str | None = None) -> Prepared:
    """Put `method` on `model` (in place; PEFT wraps it). `layers`: a regular expression on layer names
    restricting nola, pranc and lora (e.g. "self_attn" for a transformer's attention projections)."""
    from reparam.train.hooks import KeepNormStatistics

    if layers is not None and method not in ("nola", "pranc", "lora"):
        raise ReparamError(f"--layers restricts nola, pranc and lora; {method} trains fixed tensors")
    filter_fn = layer_filter(layers)
    rank = rank or (NOLA_RANK if method == "nola" else LORA_RANK)
    sharing = sharing or NOLA_SHARING
    base_fp = ad.fingerprint(model)
    if method in PEFT_METHODS:
        from reparam.experiments.adapters.peft_baselines import prepare_peft

        return prepare_peft(method, model, rank=rank, seed=seed)
    if method == "nola":
        from reparam import nola

        cfg = nola_config(model, k, rank, seed, sharing, quant_bits, filter_fn)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            h = nola.apply(model, cfg, filter_fn)
        return Prepared("nola", model, [h.extra["core"].alpha, h.extra["core"].beta], h.hooks, h.stored,
                        h.stored_what, lambda path, extra: nola.save_adapter(path, model, extra=extra),
                        cfg.to_dict())
    if method == "pranc":
        from reparam import pranc
        from reparam.pranc import adapter as pranc_adapter
        from reparam.pranc.layout import build_layout

        probe = pranc.Config(k=k, seed=seed, delta=True)
        d = sum(b.d for b in build_layout(model, probe, filter_fn)[0])
        mode = "materialized" if 4 * k * d <= PRANC_MATERIALIZE_BYTES else "streamed"
        cfg = pranc.Config(k=k, seed=seed, delta=True, mode=mode)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            h = pranc.apply(model, cfg, filter_fn)
        return Prepared("pranc", model, [h.extra["core"].alpha], h.hooks, h.stored, h.stored_what,
                        lambda path, extra: pranc_adapter.save_adapter(path, model, extra=extra), cfg.to_dict())
    if method == "lora":
        from reparam.experiments.adapters.lora import apply_lora

        taken = apply_lora(model, rank, seed=seed, filter_fn=filter_fn)
        params = [p for _, _, d in taken for p in (d.A, d.B)]
        stored = sum(d.stored for _, _, d in taken)

        def save(path: Path, extra: dict[str, Any]) -> dict[str, Any]:
            tensors = {}
            for name, t, d in taken:
                tensors[f"lora.{name}.{t}.A"] = d.A.detach().cpu().contiguous()
                tensors[f"lora.{name}.{t}.B"] = d.B.detach().cpu().contiguous()
            header = {"config": {"rank": rank, "lora_alpha": None, "seed": seed},
                      "layers": [[name, t] for name, t, _ in taken], "coef_dtype": "float32",
                      "counts": {"stored_numbers": stored, "payload_bytes": ad.payload_bytes(tensors)}, "extra": extra}
            return ad.save_adapter(path, "lora", tensors, header, base_fp)

        return Prepared("lora", model, params, [KeepNormStatistics(model)], stored,
                        f"rank {rank} on {len(taken)} tensors", save, {"rank": rank})
    if method in ("bitfit", "linear", "full"):
        if method == "linear":
            head = getattr(model, "head", None)
            if not isinstance(head, nn.Linear):
                raise ReparamError("the linear probe trains model.head, and this model has no nn.Linear head")
            names = [f"head.{n}" for n, _ in head.named_parameters()]
        elif method == "bitfit":
            names = [n for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1] == "bias"]
            if not names:
                raise ReparamError("bitfit found no bias in the model")
        else:
            names = [n for n, _ in model.named_parameters()]
        _freeze(model)
        params = dict(model.named_parameters())
        for n in names:
            params[n].requires_grad_(True)
        # full fine-tuning also re-estimates the BatchNorm statistics, so it stores every buffer too
        stored_names = list(model.state_dict()) if method == "full" else names
        stored = sum(model.state_dict()[n].numel() for n in stored_names)
        hooks = [] if method == "full" else [KeepNormStatistics(model)]
        what = {"linear": "the head", "bitfit": f"{len(names)} bias vectors", "full": "every tensor"}[method]
        return Prepared(method, model, [params[n] for n in names], hooks, stored, what,
                        _state_saver(method, stored_names, model, base_fp, {}), {})
    raise ReparamError(f"unknown adapter method {method!r}; allowed: {', '.join(ALL_METHODS)}")


# -- one run --------------------------------------------------------------------------------------------
def adapt(model: nn.Module, splits, method: str, *, k: int = 200, rank: int | None = None, epochs: int = 10,
          lr: float | None = None, seed: int = 0, batch_size: int = BATCH_SIZE, sharing: str | None = None,
          quant_bits: int | None = None, coef_dtype: str = "float32", progress: bool = False,
          out_dir: Path | None = None, layers: str | None = None) -> tuple[dict[str, Any], Prepared]:
    """Adapt `model` (in place) to `splits` with `method`; returns (metrics, prepared). With out_dir, the
    adapter (or PEFT's folder) is written there and its size reported."""
    from reparam.core.runtime import seed_everything

    check_method(method, coef_dtype)
    seed_everything(seed)
    prep = prepare(method, model, k=k, rank=rank, seed=seed, sharing=sharing, quant_bits=quant_bits, layers=layers)
    metrics = train_prepared(prep, splits, epochs=epochs, lr=lr, seed=seed, batch_size=batch_size,
                             coef_dtype=coef_dtype, progress=progress, out_dir=out_dir)
    if SIZED.get(method):
        metrics[SIZED[method]] = k if SIZED[method] == "k" else (rank or LORA_RANK)
    return metrics, prep


def check_method(method: str, coef_dtype: str = "float32") -> str:
    if method not in ALL_METHODS:
        raise ReparamError(f"unknown adapter method {method!r}; allowed: {', '.join(ALL_METHODS)}")
    coef_dtype = ad.check_coef_dtype(coef_dtype)
    if coef_dtype != "float32" and method not in ("nola", "pranc"):
        raise ReparamError(f"--coef-dtype {coef_dtype} is for nola and pranc coefficients; {method} stores float32")
    return coef_dtype


def train_prepared(prep: Prepared, splits, *, epochs: int = 10, lr: float | None = None, seed: int = 0,
                   batch_size: int = BATCH_SIZE, coef_dtype: str = "float32", progress: bool = False,
                   out_dir: Path | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train a prepared method (Adam, cosine schedule, no weight decay, model selection on val); with out_dir,
    write the adapter file (and the trainer's log.jsonl) there."""
    from reparam.metrics.evaluation import accuracy
    from reparam.train import TrainConfig, Trainer

    method = prep.method
    lr = DEFAULT_LR[method] if lr is None else lr
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, optimizer="adam", lr=lr, weight_decay=0.0,
                      schedule="cosine", seed=seed, progress=progress, checkpoint=False)
    t0 = time.perf_counter()
    trainer = Trainer(prep.model, splits, cfg, callbacks=prep.hooks, out_dir=out_dir,
                      param_groups=[{"params": prep.params, "weight_decay": 0.0}])
    res = trainer.fit(resume=False)
    metrics: dict[str, Any] = {"method": method, "test_acc": res.test_acc, "val_acc": res.val_acc,
                               "best_epoch": res.best_epoch, "epochs": res.epochs, "lr": lr,
                               "train_seconds": res.train_seconds, "params_stored": prep.stored_numbers,
                               "bytes_stored": 4 * prep.stored_numbers, "stored_what": prep.describe,
                               "config": prep.config, "coef_dtype": coef_dtype, "history": res.history}
    if coef_dtype != "float32":      # post-training rounding; the model then evaluates as the file decodes
        metrics["test_acc_float32"] = res.test_acc
        _round(method, prep.model, coef_dtype)
        metrics["test_acc"] = accuracy(prep.model, splits.test)
    if out_dir is not None:
        out_dir = Path(out_dir)
        if method in PEFT_METHODS:
            metrics.update(prep.save(out_dir, {}))
        else:
            path = out_dir / "adapter.safetensors"
            header = (prep.save(path, extra or {}) if coef_dtype == "float32"
                      else _save_rounded(method, prep.model, path, coef_dtype, extra or {}))
            metrics["bytes_stored"] = header["counts"]["payload_bytes"]
            metrics["file_bytes"] = path.stat().st_size
    elif method not in PEFT_METHODS:    # the size of the file it would write
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "adapter.safetensors"
            header = (prep.save(path, extra or {}) if coef_dtype == "float32"
                      else _save_rounded(method, prep.model, path, coef_dtype, extra or {}))
            metrics["bytes_stored"] = header["counts"]["payload_bytes"]
            metrics["file_bytes"] = path.stat().st_size
    elif method in PEFT_METHODS:
        from reparam.experiments.adapters.peft_baselines import peft_sizes

        metrics.update(peft_sizes(prep))
    metrics["wall_seconds"] = time.perf_counter() - t0
    return metrics


def _round(method: str, model: nn.Module, coef_dtype: str) -> None:
    if method == "nola":
        from reparam import nola

        nola.round_coefficients(model, coef_dtype)
    else:
        from reparam.pranc import adapter as pranc_adapter

        pranc_adapter.round_coefficients(model, coef_dtype)


def _save_rounded(method: str, model: nn.Module, path: Path, coef_dtype: str, extra: dict[str, Any]
                  ) -> dict[str, Any]:
    if method == "nola":
        from reparam import nola

        return nola.save_adapter(path, model, coef_dtype=coef_dtype, extra=extra)
    from reparam.pranc import adapter as pranc_adapter

    return pranc_adapter.save_adapter(path, model, coef_dtype=coef_dtype, extra=extra)


# -- loading any adapter file ---------------------------------------------------------------------------
def adapter_method(path: str | Path) -> str:
    header = read_header(path)
    if header.get("kind") != ad.KIND:
        raise ReparamError(f"{path}: file kind {header.get('kind')!r} is not an adapter")
    method = header.get("method")
    if method not in METHODS:
        raise ReparamError(f"{path}: adapter method {method!r} is not one of {', '.join(METHODS)}")
    return method


def load_adapter(path: str | Path, model: nn.Module) -> dict[str, Any]:
    """Put any adapter file written here on `model` (its base); returns the file's header."""
    method = adapter_method(path)
    if method == "nola":
        from reparam import nola

        nola.load_adapter(path, model)
        return nola.read_adapter(path)[2]
    if method == "pranc":
        from reparam.pranc import adapter as pranc_adapter

        pranc_adapter.load_adapter(path, model)
        return pranc_adapter.read_adapter(path)[2]
    tensors, header = ad.read_adapter(path, method, model)
    if method == "lora":
        from reparam.experiments.adapters.lora import apply_lora

        names = {name for name, _ in header["layers"]}
        cfg = header["config"]
        layers = apply_lora(model, int(cfg["rank"]), seed=int(cfg["seed"]), lora_alpha=cfg.get("lora_alpha"),
                            filter_fn=lambda m, n: n in names)
        if [[n, t] for n, t, _ in layers] != header["layers"]:
            raise ReparamError(f"{path}: the model's layers do not match the adapter's layer list")
        with torch.no_grad():
            for name, t, d in layers:
                d.A.copy_(tensors[f"lora.{name}.{t}.A"])
                d.B.copy_(tensors[f"lora.{name}.{t}.B"])
        return header
    state = {k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")}
    own = model.state_dict()
    bad = [n for n in state if n not in own or own[n].shape != state[n].shape]
    if bad:
        raise ReparamError(f"{path}: tensor {bad[0]!r} does not fit the base")
    with torch.no_grad():
        for n, v in state.items():
            own[n].copy_(v)
    return header


def evaluate_adapter(path: str | Path, run: str | Path, splits) -> float:
    """Test accuracy of base `run` + adapter `path` on `splits` (rebuilt from the two files alone)."""
    from reparam.metrics.evaluation import accuracy

    model, _ = load_base(run)
    check_target(model, splits, splits.name)
    load_adapter(path, model)
    return accuracy(model, splits.test)
