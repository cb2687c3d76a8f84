"""Which layers to split, and at what rank: by FLOPs (the paper) or by measured time (the default).

FLOPs plan: every target layer (stride 1 unless told otherwise) at the rank the rule keeps, as the paper and
the official code do; a split can be slower than the layer it replaces (thin convs run at lower throughput
and each split adds a kernel call).

Latency plan: for each target layer, time the original conv and its decomposition at the rule's rank and at
that rank rounded up to fast sizes (multiples of 4, 8, 16: vector widths and blocked memory formats), at each
deployment batch size and the deployment input size, in every memory layout the model may run in, from a
per-machine cost table (`reparam.trp.latency.CostTable`). The model runs in one layout, so the plan is made
for one: the layout whose planned model is fastest (the target layers' planned times added up). The layer is
split at the fastest of these ranks when that takes at most (1 - margin) of the layer's time at every batch in
that layout, else kept whole. Rounding
a rank up keeps more singular values, so a TRP-trained layer (exactly low-rank after its last projection)
computes the same function.

`tighten` (the latency budget) then lowers ranks further, one fast size at a time, only while a caller's
check (validation accuracy unchanged) accepts the model: the fastest plan whose accuracy is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn

from reparam.core.errors import ReparamError
from reparam.trp.decompose import _as_rule, _split, empty_decomposed
from reparam.trp.flops import conv_shapes
from reparam.trp.latency import CostTable, check_layout, option_of
from reparam.trp.project import _ranks, _svd
from reparam.trp.reshape import canonical_scheme, max_rank

PLANS = ("flops", "latency")
FAST_MULTIPLES = (4, 8, 16)
# A split must save at least this fraction of the layer's time at every deployment batch: timing noise on a
# shared CPU is a few percent, and a split that saves less gives up FLOPs for nothing measurable.
MARGIN = 0.1


def check_plan(plan: str) -> str:
    if plan not in PLANS:
        raise ReparamError(f"unknown plan {plan!r}; allowed: {', '.join(PLANS)}")
    return plan


def fast_ranks(r: int, top: int, multiples: tuple[int, ...] = FAST_MULTIPLES) -> list[int]:
    """r and r rounded up to each multiple (capped at the largest rank `top`), ascending, no repeats."""
    return sorted({min(top, r)} | {min(top, math.ceil(r / m) * m) for m in multiples})


def lower_fast_rank(r: int) -> int | None:
    """The next smaller fast size below r (multiples of 8, then 4, 2, 1); None at rank 1."""
    if r <= 1:
        return None
    below = [k for k in range(8 * ((r - 1) // 8), 0, -8)] + [4, 2, 1]
    return next(k for k in below if k < r)


@dataclass
class PlanRow:
    """One line of the plan table (metrics.json `plan_table`, the printed summary)."""

    layer: str
    rule_rank: int                 # rank the rule keeps (paths for 'nd')
    rank: int                      # rank used (rounded up to a fast size, or lowered by the budget)
    max_rank: int
    macs_before: int               # this layer's MACs at the deployment input size, one image
    macs_after: int
    ms_before: dict[str, float] = field(default_factory=dict)   # this layer, per "b{batch}/{layout}"
    ms_after: dict[str, float] = field(default_factory=dict)    # what replaces it (itself when kept)
    decision: str = "keep"          # "split" or "keep"
    reason: str = ""
    layout: str = ""                # the deployment layout the latency plan decided for

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _layer_macs(layer: nn.Module, scheme: str, rank: int, in_hw, out_hw) -> int:
    from reparam.trp.decompose import LayerPlan
    from reparam.trp.flops import layer_macs

    if isinstance(layer, nn.Linear):
        return rank * (layer.in_features + layer.out_features)
    plan = LayerPlan("", list(layer.weight.shape), list(_split(layer.stride)), rank, 0, True)
    return layer_macs(plan, scheme, in_hw, out_hw)


def _rule_rank(layer: nn.Module, scheme: str, rule) -> int:
    rule = _as_rule(rule)
    if isinstance(rule, int):
        return max(1, min(rule, max_rank(layer.weight.shape, scheme)))
    if isinstance(rule, list):
        return max(rule)
    if isinstance(layer, nn.Linear):
        return rule(torch.linalg.svdvals(layer.weight.detach()))
    _, s, _ = _svd(layer.weight, scheme)
    return max(_ranks(s, rule))


def make_plan(model: nn.Module, targets: list[tuple[str, nn.Module]], scheme: str, rule, *,
              input_shape: tuple[int, ...], plan: str = "latency", batches: tuple[int, ...] = (1,),
              layouts: tuple[str, ...] = ("nchw",), table: CostTable | None = None, only_stride1: bool = True,
              margin: float = MARGIN) -> tuple[dict[str, int | None], list[PlanRow]]:
    """Ranks per target layer (None = keep the layer whole) and the plan table.

    input_shape: (C, H, W) at deployment; batches: deployment batch sizes; layouts: the memory layouts the
    model may run in; table: the cost table (needed for plan='latency'; with plan='flops' it only fills the
    time columns). A latency split must take at most (1 - margin) of the layer's time at every batch in the
    deployment layout (the one of `layouts` the planned model is fastest in; PlanRow.layout).
    rule: a rank rule, an int or {layer: rank}."""
    scheme = canonical_scheme(scheme)
    check_plan(plan)
    if plan == "latency" and (table is None or not batches):
        raise ReparamError("the latency plan needs a deployment batch size and a cost table; use plan='flops' "
                           "to decompose by FLOPs alone")
    if not 0 <= margin < 1:
        raise ReparamError(f"margin must be in [0, 1), got {margin}")
    for lay in layouts:
        check_layout(lay)
    cases = [(b, lay) for b in batches for lay in layouts]
    shapes = conv_shapes(model, input_shape)
    ranks: dict[str, int | None] = {}
    rows = []
    pending = []           # timed layers of the latency plan, decided once the deployment layout is chosen
    for name, layer in targets:
        spec = rule[name] if isinstance(rule, dict) else rule
        mr = max_rank(layer.weight.shape, scheme)
        stride = list(_split(layer.stride)) if isinstance(layer, nn.Conv2d) else [1, 1]
        io = shapes.get(name, {"in_hw": (1, 1), "out_hw": (1, 1), "macs": layer.weight.numel()})
        before = io["macs"]
        if spec is None or (only_stride1 and stride != [1, 1]):
            ranks[name] = None
            rows.append(PlanRow(name, mr, mr, mr, before, before, reason="no rank given" if spec is None
                                else "stride != 1"))
            continue
        r0 = _rule_rank(layer, scheme, spec)
        row = PlanRow(name, r0, r0, mr, before, _layer_macs(layer, scheme, r0, io["in_hw"], io["out_hw"]))
        rows.append(row)
        timed = table is not None and bool(batches) and isinstance(layer, nn.Conv2d)
        if plan == "flops" or not timed:
            ranks[name], row.decision = r0, "split"
            row.reason = "rule rank (FLOPs plan)" if plan == "flops" else "Linear layer: split by FLOPs"
            if plan == "latency" and row.macs_after >= before:
                ranks[name], row.decision, row.reason = None, "keep", "no FLOPs gain (Linear, not timed)"
                row.rank, row.macs_after = mr, before
            if timed:
                _fill(row, _times(layer, scheme, [r0], cases, table, io["in_hw"]), 1)
            continue
        cands = fast_ranks(r0, mr)
        ranks[name] = None                   # decided below; inserted now to keep the targets' order
        pending.append((name, layer, row, cands, _times(layer, scheme, cands, cases, table, io["in_hw"]), io))
    if pending:
        layout = _deployment_layout(pending, batches, layouts, margin)
        for name, layer, row, cands, times, io in pending:
            _decide(name, layer, row, cands, times, io, scheme, batches, layout, margin, ranks)
            row.layout = layout
    return ranks, rows


def _choose(cands: list[int], times, batches, layout: str, margin: float
            ) -> tuple[int | None, dict[int, list[float]]]:
    """The fastest candidate rank that takes at most (1 - margin) of the layer's time at every batch in
    `layout` (None: keep whole), and each candidate's time fractions there."""
    frac = {r: [times[(b, layout)][i + 1] / times[(b, layout)][0] for b in batches] for i, r in enumerate(cands)}
    ok = [r for r in cands if max(frac[r]) <= 1 - margin]
    return (min(ok, key=lambda r: (sum(frac[r]) / len(batches), r)) if ok else None), frac


def _deployment_layout(pending, batches, layouts, margin: float) -> str:
    """The layout the planned model runs fastest in. A model runs in one layout, so a split only has to pay
    off there (oneDNN's blocked channels_last kernels and NCHW kernels favour different channel counts: a
    split can be 3x faster in one and slower in the other). Per layout: plan each layer for it, add up the
    planned layers' times per batch, score each batch relative to the best layout, and take the lowest sum."""
    total = {}
    for lay in layouts:
        for b in batches:
            t = 0.0
            for _, _, _, cands, times, _ in pending:
                best, _ = _choose(cands, times, batches, lay, margin)
                t += times[(b, lay)][0 if best is None else cands.index(best) + 1]
            total[(b, lay)] = t
    score = {lay: sum(total[(b, lay)] / min(total[(b, x)] for x in layouts) for b in batches) for lay in layouts}
    return min(layouts, key=lambda lay: (score[lay], layouts.index(lay)))


def _decide(name, layer, row: PlanRow, cands, times, io, scheme, batches, layout, margin, ranks) -> None:
    best, frac = _choose(cands, times, batches, layout, margin)
    mr, r0 = row.max_rank, row.rule_rank
    if best is not None:
        ranks[name], row.rank, row.decision = best, best, "split"
        row.macs_after = _layer_macs(layer, scheme, best, io["in_hw"], io["out_hw"])
        row.reason = (f"{len(batches) / sum(frac[best]):.2f}x faster ({layout})"
                      + (f" (rank {r0} rounded up to {best})" if best != r0 else ""))
        _fill(row, times, cands.index(best) + 1)
    else:
        ranks[name] = None
        row.rank, row.macs_after = mr, row.macs_before
        r_best = min(cands, key=lambda r: max(frac[r]))
        b, worst = max(zip(batches, frac[r_best]), key=lambda bw: bw[1])
        row.reason = (f"not {margin:.0%} faster: the best split (rank {r_best}) takes {worst:.2f}x the "
                      f"layer's time at batch {b} ({layout})")
        _fill(row, times, 0)


def _times(layer: nn.Conv2d, scheme: str, cands: list[int], cases, table: CostTable, in_hw
           ) -> dict[tuple[int, str], list[float]]:
    """Seconds of [the layer, its split at each candidate rank] for each (batch, layout)."""
    options = [option_of(layer)] + [option_of(empty_decomposed(layer, scheme, r)) for r in cands]
    return {(b, lay): table.times(options, b, tuple(in_hw), lay) for b, lay in cases}


def _fill(row: PlanRow, times: dict[tuple[int, str], list[float]], after: int) -> None:
    """Time columns of a row: ms of the layer and of what replaces it (index `after`; 0 = kept whole)."""
    row.ms_before = {f"b{b}/{lay}": 1e3 * t[0] for (b, lay), t in times.items()}
    row.ms_after = {f"b{b}/{lay}": 1e3 * t[after] for (b, lay), t in times.items()}


def tighten(model: nn.Module, targets: list[tuple[str, nn.Module]], scheme: str, ranks: dict[str, int | None],
            rows: list[PlanRow], *, accept: Callable[[dict[str, int | None]], bool], input_shape: tuple[int, ...],
            batch: int, layout: str = "nchw", table: CostTable, budget_ms: float = 0.0,
            model_ms: float | None = None, max_trials: int = 200
            ) -> tuple[dict[str, int | None], list[dict[str, Any]]]:
    """Lower ranks one fast size at a time while `accept(ranks)` holds (e.g. validation accuracy unchanged),
    biggest predicted time saving first, until the predicted model time at `batch` is within budget_ms
    (0: as far as accuracy allows). Predicted time = model_ms (the measured model under the current plan)
    minus the layer-time savings of the accepted steps. Returns (ranks, log of trials)."""
    scheme = canonical_scheme(scheme)
    shapes = conv_shapes(model, input_shape)
    by_row = {r.layer: r for r in rows}
    ranks = dict(ranks)
    layers = {n: m for n, m in targets if isinstance(m, nn.Conv2d) and by_row[n].reason != "stride != 1"
              and by_row[n].reason != "no rank given"}
    frozen: set[str] = set()
    log: list[dict[str, Any]] = []
    saved = 0.0

    def t(name: str, rank: int | None) -> float:
        """Seconds of the layer split at `rank` (None: whole), as a fraction of the layer's time measured in
        the same rounds, times one reference time of the layer, so two ranks compare within one measurement."""
        layer = layers[name]
        whole = option_of(layer)
        ref = table.times([whole], batch, tuple(shapes[name]["in_hw"]), layout)[0]
        if rank is None:
            return ref
        both = table.times([whole, option_of(empty_decomposed(layer, scheme, rank))], batch,
                           tuple(shapes[name]["in_hw"]), layout)
        return ref * both[1] / both[0]

    for _ in range(max_trials):
        if budget_ms > 0 and model_ms is not None and model_ms - 1e3 * saved <= budget_ms:
            break
        steps = []
        for name in layers:
            if name in frozen:
                continue
            cur = ranks[name]
            nxt = lower_fast_rank(cur if cur is not None else by_row[name].rule_rank)
            if nxt is None:
                continue
            gain = t(name, cur) - t(name, nxt)
            if gain > 0:
                steps.append((gain, name, nxt))
        if not steps:
            break
        gain, name, nxt = max(steps)
        trial = dict(ranks)
        trial[name] = nxt
        ok = bool(accept(trial))
        log.append({"layer": name, "rank": nxt, "from": ranks[name], "predicted_ms_saved": 1e3 * gain,
                    "accepted": ok})
        if ok:
            ranks = trial
            saved += gain
            row = by_row[name]
            io = shapes[name]
            row.rank, row.decision = nxt, "split"
            row.macs_after = _layer_macs(layers[name], scheme, nxt, io["in_hw"], io["out_hw"])
            row.reason = f"rank lowered to {nxt} by the latency budget (validation accuracy unchanged)"
            row.ms_after[f"b{batch}/{layout}"] = 1e3 * t(name, nxt)
        else:
            frozen.add(name)
    return ranks, log


def apply_reasons(plans: list, rows: list[PlanRow]) -> None:
    """Copy the planner's reasons onto the LayerPlans of layers it kept whole."""
    why = {r.layer: r.reason for r in rows if r.decision == "keep"}
    for p in plans:
        if not p.decompose and p.name in why:
            p.reason = why[p.name]
