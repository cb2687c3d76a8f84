"""`reparam.summary(model)`: every parameter of the plain model, the method that makes it, and what is stored.

Rows are the tensors of the equivalent plain model (what `fold` leaves), with the methods on each (innermost
first) and the numbers stored for it: a plain parameter stores itself; a parametrized one stores its
`original` and its parametrizations' own parameters and persistent buffers (a mask counts one entry per
weight). A stored tensor that serves several parametrized tensors (PRANC's coefficients, a compander's
shared a and b, shared templates) is counted once, in a row of its own. The dense column adds up to the
plain model's parameter count and the stored column to every number a method keeps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from reparam.core.protocol import _inside_parametrization, dense_tensors, methods_on


@dataclass
class SummaryRow:
    tensor: str          # "layer.weight", or a shared item ("shared: ...")
    method: str          # "dense", a method, or "pranc+compander" for a chain (innermost first)
    dense: int           # numbers in the plain model's tensor (0 for a shared row)
    stored: int          # numbers stored for it
    stored_as: str       # what those numbers are


def _stored_tensors(module: nn.Module, tensor: str) -> list[tuple[str, torch.Tensor]]:
    plist = module.parametrizations[tensor]
    out = [("original", plist.original)]
    for i, p in enumerate(plist):
        for n, t in p.named_parameters():
            out.append((f"{i}.{n}", t))
        persistent = {f"{mn}.{bn}".lstrip(".") for mn, m in p.named_modules() for bn in m._buffers
                      if bn not in m._non_persistent_buffers_set}
        for n, t in p.named_buffers():
            if n in persistent:
                out.append((f"{i}.{n}", t))
        extra = getattr(p, "shared_storage", None)
        if callable(extra):
            out += [(f"{i}.{n}", t) for n, t in extra()]
    return out


def summarize(model: nn.Module) -> list[SummaryRow]:
    """The summary as rows (see the module docstring); the last row is the total."""
    shapes = dense_tensors(model)
    per_tensor: dict[str, list[tuple[str, torch.Tensor]]] = {}
    users: dict[int, list[str]] = {}
    methods: dict[str, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, parametrize.ParametrizationList) or _inside_parametrization(name):
            continue
        own = [n for n, _ in module.named_parameters(recurse=False)]
        params = list(module.parametrizations.keys()) if parametrize.is_parametrized(module) else []
        for t in own + params:
            key = f"{name}.{t}" if name else t
            methods[key] = "+".join(methods_on(module, t)) or "dense"
            stored = _stored_tensors(module, t) if t in params else [(t, getattr(module, t))]
            seen: set[int] = set()
            per_tensor[key] = []
            for label, tensor in stored:
                if id(tensor) in seen:
                    continue
                seen.add(id(tensor))
                per_tensor[key].append((label, tensor))
                users.setdefault(id(tensor), []).append(key)
    rows, shared = [], {}
    for key, items in per_tensor.items():
        own = [(label, t) for label, t in items if len(users[id(t)]) == 1 and t.numel()]
        for label, t in items:
            if len(users[id(t)]) > 1:
                shared.setdefault(id(t), (label, t, users[id(t)], methods[key]))
        stored_as = " + ".join(f"{label} {t.numel():,}" for label, t in own) or "nothing"
        dense = int(torch.Size(shapes[key]).numel()) if key in shapes else 0   # 0: unused in this mode
        rows.append(SummaryRow(key, methods[key] + ("" if key in shapes else " (unused now)"), dense,
                               sum(t.numel() for _, t in own), stored_as))
    for label, t, keys, method in shared.values():
        rows.append(SummaryRow(f"shared: {label.split('.', 1)[-1]}", method, 0, t.numel(),
                               f"used by {len(keys)} tensors ({keys[0]}, ...)"))
    rows.append(SummaryRow("total", "", sum(r.dense for r in rows), sum(r.stored for r in rows), ""))
    return rows


def summary(model: nn.Module, print_table: bool = True) -> list[SummaryRow]:
    """Print (with rich) and return the rows: tensor | method | dense numbers | stored numbers | stored as."""
    rows = summarize(model)
    if print_table:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{type(model).__name__}: parameters by method")
        for col, just in (("tensor", "left"), ("method", "left"), ("dense", "right"), ("stored", "right"),
                          ("stored as", "left")):
            table.add_column(col, justify=just)
        for r in rows:
            table.add_row(r.tensor, r.method, f"{r.dense:,}", f"{r.stored:,}", r.stored_as,
                          end_section=r is rows[-2])
        Console().print(table)
    return rows
