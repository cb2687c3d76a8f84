"""Saving and loading decomposed models (reparam file format, kind 'model', never pickle)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn

from reparam.core.errors import ReparamError
from reparam.core.fileformat import check_state_matches, load_tensors, save_model
from reparam.trp.decompose import LayerPlan, skeleton


def save_decomposed(path: str | Path, model: nn.Module, model_spec: dict[str, Any], scheme: str,
                    plans: list[LayerPlan], extra: dict[str, Any] | None = None) -> None:
    header = {"model_spec": model_spec, "method": "trp",
              "trp": {"scheme": scheme, "plans": [p.to_dict() for p in plans]}}
    header.update(extra or {})
    save_model(path, model, header)


def _positive_ints(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v)


def _checked_plans(path, trp: Any) -> tuple[str, list[LayerPlan]]:
    """The header's decomposition plan, type- and bound-checked (ranks at most the layer's maximum rank)
    before any decomposed layer is allocated."""
    from reparam.trp.reshape import canonical_scheme, max_rank

    def bad() -> ReparamError:
        return ReparamError(f"{path}: the header's 'trp' decomposition plan is malformed")

    if not isinstance(trp, dict) or not isinstance(trp.get("scheme"), str) or not isinstance(trp.get("plans"), list):
        raise bad()
    scheme = canonical_scheme(trp["scheme"])
    fields = set(LayerPlan.__dataclass_fields__)
    plans = []
    for row in trp["plans"]:
        if not isinstance(row, dict) or not set(row) <= fields:
            raise bad()
        try:
            p = LayerPlan(**row)
        except TypeError:
            raise bad() from None
        if not (isinstance(p.name, str) and _positive_ints(p.shape) and len(p.shape) in (2, 4)
                and isinstance(p.decompose, bool)
                and isinstance(p.rank, int) and not isinstance(p.rank, bool)
                and 1 <= p.rank <= max_rank(tuple(p.shape), scheme)):
            raise bad()
        plans.append(p)
    return scheme, plans


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
    try:
        model = build_from_spec(spec)
    except ReparamError as e:
        raise ReparamError(f"{path}: {e}") from None
    trp = header.get("trp")
    if trp:
        scheme, plans = _checked_plans(path, trp)
        model = skeleton(model, scheme, plans)
    check_state_matches(tensors, dict(model.state_dict()), str(path))
    model.load_state_dict(tensors)
    return model.eval(), header
