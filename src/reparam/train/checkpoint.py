"""Resumable checkpoints: tensors in safetensors (model, best model, optimizer state), the rest in the header."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from reparam.core.errors import ReparamError
from reparam.core.fileformat import load_tensors, save_tensors

CHECKPOINT = "checkpoint.safetensors"


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = {}, {}
    for idx, entry in state["state"].items():
        m = {}
        for key, val in entry.items():
            if torch.is_tensor(val):
                tensors[f"optim.{idx}.{key}"] = val
            else:
                m[key] = val
        meta[str(idx)] = m
    return tensors, {"state": meta, "param_groups": state["param_groups"]}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {int(i): dict(m) for i, m in meta["state"].items()}
    for name, t in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = t
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(path: Path, model: torch.nn.Module, best_state: dict[str, torch.Tensor] | None,
                    optimizer: torch.optim.Optimizer, scheduler: Any, info: dict[str, Any]) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if best_state is not None:
        tensors.update({f"best.{k}": v for k, v in best_state.items()})
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    tensors.update(opt_tensors)
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    header = dict(info, optimizer=opt_meta, scheduler=sched)
    # Parametrized models share storage between names; safetensors refuses shared tensors.
    save_tensors(path, {k: v.clone() for k, v in tensors.items()}, "checkpoint", header)


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, check=None) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any]]:
    """Restore model, optimizer and scheduler; `check(header)` may refuse the checkpoint before anything
    is changed. A damaged or foreign header is one ReparamError, never a KeyError."""
    tensors, header = load_tensors(path, "checkpoint")
    from reparam.core.fileformat import check_state_matches

    _check_header(path, header)
    if check is not None:
        check(header)

    model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    check_state_matches(model_state, dict(model.state_dict()), f"checkpoint {path}")
    model.load_state_dict(model_state)
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
    optimizer.load_state_dict(_unflatten_optimizer(
        {k: v for k, v in tensors.items() if k.startswith("optim.")}, header["optimizer"]))
    sched = dict(header["scheduler"])
    sched["lr_lambdas"] = [None] * len(optimizer.param_groups)
    scheduler.load_state_dict(sched)
    return best, header


def _check_header(path: Path, header: dict[str, Any]) -> None:
    ints = ("epoch", "global_step", "best_epoch")
    ok = (all(isinstance(header.get(k), int) and not isinstance(header.get(k), bool) and header[k] >= 0
              for k in ints)
          and isinstance(header.get("best_val"), (int, float)) and isinstance(header.get("history"), list)
          and isinstance(header.get("train_seconds"), (int, float)) and isinstance(header.get("callbacks", []), list)
          and isinstance(header.get("optimizer"), dict) and isinstance(header["optimizer"].get("state"), dict)
          and isinstance(header["optimizer"].get("param_groups"), list) and isinstance(header.get("scheduler"), dict))
    if not ok:
        raise ReparamError(f"checkpoint {path}: the header lacks or mistypes a training field "
                           "(epoch, global_step, best_val, history, optimizer, scheduler); start a new run")
