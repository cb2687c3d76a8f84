"""Saving and loading decomposed models (reparam file format, kind 'model', never pickle)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn

from reparam.core.errors import ReparamError
from reparam.core.fileformat import check_state_matches, load_tensors, save_model
from reparam.trp.decompose import LayerPlan, plans_from_dicts, skeleton


def save_decomposed(path: str | Path, model: nn.Module, model_spec: dict[str, Any], scheme: str,
                    plans: list[LayerPlan], extra: dict[str, Any] | None = None) -> None:
    header = {"model_spec": model_spec, "method": "trp",
              "trp": {"scheme": scheme, "plans": [p.to_dict() for p in plans]}}
    header.update(extra or {})
    save_model(path, model, header)


def load_model_file(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by reparam (plain or TRP-decomposed) from its header's model_spec.

    Relies on the header key 'model_spec' that reparam.cli.common.train_and_report writes, rebuilt with
    reparam.models.build_from_spec.
    """
    from reparam.models import build_from_spec

    tensors, header = load_tensors(path, ("model", "checkpoint"))
    spec = header.get("model_spec")
    if not isinstance(spec, dict) or "name" not in spec:
        raise ReparamError(f"{path}: the header has no model_spec, so the architecture cannot be rebuilt; "
                           "use a model.safetensors written by a reparam training command")
    if header["kind"] == "checkpoint":
        tensors = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    model = build_from_spec(spec)
    trp = header.get("trp")
    if trp:
        model = skeleton(model, trp["scheme"], plans_from_dicts(trp["plans"]))
    check_state_matches(tensors, dict(model.state_dict()), str(path))
    model.load_state_dict(tensors)
    return model.eval(), header
