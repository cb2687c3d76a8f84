"""Decompose a trained model and measure what the paper reports: accuracy before/after (no fine-tuning),
conv-FLOPs speed-up (paper's way), whole-model FLOPs, parameters, per-layer ranks, CPU latency."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from reparam.core import distributed as rd
from reparam.core.errors import ReparamError
from reparam.core.parametrize import FilterFn
from reparam.metrics import accuracy, count_flops, count_params
from reparam.trp.apply import layers as trp_layers
from reparam.trp.decompose import LayerPlan, RankSpec, decompose, decompose_model
from reparam.trp.export import check_runtimes, compare, layout_of, prepare
from reparam.trp.flops import conv_macs, conv_shapes, layer_macs
from reparam.trp.latency import CostTable, check_device, medians, time_interleaved
from reparam.trp.plan import PlanRow, apply_reasons, check_plan, make_plan, tighten
from reparam.trp.project import select_targets
from reparam.trp.rank import energy_rank
from reparam.trp.reshape import canonical_scheme, to_matrix


def input_shape_of(splits) -> tuple[int, int, int]:
    return (int(splits.in_channels), *(int(s) for s in splits.image_size))


def measure_latency(original: nn.Module, decomposed: nn.Module, input_shape: tuple[int, ...],
                    batches: tuple[int, ...] = (1, 128), repeats: int = 20, *, runtimes: tuple[str, ...] = ("eager",),
                    device: str = "cpu", memory: bool = False, min_round_s: float = 0.02) -> dict[str, Any]:
    """Median time per forward pass of both models at each batch size, in `repeats` alternating rounds in one
    process (thread CPU time with one CPU thread, else wall clock; see reparam.trp.export.compare)."""
    return compare(original, decomposed, input_shape, batches, runtimes=runtimes, rounds=max(1, repeats),
                   device=device, memory=memory, min_round_s=min_round_s)


def _accuracy_keeper(model: nn.Module, targets, scheme: str, only_stride1: bool, data) -> tuple[callable, float]:
    """accept(ranks) for the latency budget: the decomposed model's validation accuracy is the trained model's."""
    ref = accuracy(model, data)

    def accept(ranks: dict[str, int | None]) -> bool:
        small = _split_with(model, targets, scheme, ranks, only_stride1)[0]
        return accuracy(small.eval(), data) >= ref

    return accept, ref


def _split_with(model: nn.Module, targets, scheme: str, rank: RankSpec, only_stride1: bool
                ) -> tuple[nn.Module, list[LayerPlan]]:
    if trp_layers(model):
        return decompose(model, rank, scheme=scheme, only_stride1=only_stride1)
    names = {n for n, _ in targets}
    return decompose_model(model, scheme, rank, filter_fn=lambda m, n: n in names, skip_stem=False,
                           only_stride1=only_stride1)


def decompose_and_measure(model: nn.Module, splits, scheme: str, rank: RankSpec, *,
                          only_stride1: bool = True, skip_stem: bool = True, filter_fn: FilterFn | None = None,
                          latency_batches: tuple[int, ...] = (1, 128), latency_repeats: int = 20,
                          latency_size: int | None = None, splits_to_eval: tuple[str, ...] = ("val", "test"),
                          plan: str = "flops", device: str = "cpu", runtimes: tuple[str, ...] = ("eager",),
                          table: CostTable | None = None, latency_budget: float | None = None,
                          time_layers: bool = False, memory: bool = False, latency_min_round_s: float = 0.02
                          ) -> tuple[nn.Module, list[LayerPlan], dict[str, Any]]:
    """Decompose `model` and return (decomposed model, plans, metrics).

    A model `trp.apply` was applied to is split on its TRP layers (filter_fn and skip_stem were given to
    apply); any other model (a plain baseline, a loaded file) on the convs filter_fn and skip_stem pick.
    plan='flops' splits every target at the rule's rank (the paper); plan='latency' splits a layer only when
    the split runs faster at the deployment batches (latency_batches) and input size (latency_size, default
    the data's), ranks rounded up to fast sizes (reparam.trp.plan). latency_budget (ms at the first batch;
    0 = as fast as possible) lowers ranks further while the validation accuracy stays the trained model's.
    time_layers: fill the plan table's per-layer times for the FLOPs plan too. runtimes: how the models may
    run (eager, channels_last, compile, compile+channels_last); each model is timed under its fastest.
    """
    scheme = canonical_scheme(scheme)
    check_plan(plan)
    runtimes = check_runtimes(runtimes)
    check_device(device)
    model.eval()
    targets = trp_layers(model) or select_targets(model, filter_fn, skip_stem)
    shape = input_shape_of(splits)
    dep_shape = shape if latency_size is None else (shape[0], int(latency_size), int(latency_size))
    batches = tuple(int(b) for b in latency_batches)
    m: dict[str, Any] = {"scheme": scheme, "plan": plan, "decompose_rank": rank if isinstance(rank, (str, int)) else
                         ("per-layer" if isinstance(rank, dict) else str(rank))}
    if plan == "latency" and not batches:
        raise ReparamError("the latency plan needs a deployment batch size (latency batches); give one, or use "
                           "the FLOPs plan")
    timed = plan == "latency" or (time_layers and bool(batches))
    layouts = tuple(dict.fromkeys(layout_of(r) for r in runtimes))   # each layout a runtime may use
    if latency_budget is not None and plan != "latency":
        raise ReparamError("a latency budget needs the latency plan")
    if timed:
        table = table or CostTable(device=device)

    def planned() -> str:
        ranks, rows = make_plan(model, targets, scheme, rank, input_shape=dep_shape, plan=plan, batches=batches,
                                layouts=layouts, table=table if timed else None, only_stride1=only_stride1)
        extra: dict[str, Any] = {}
        if latency_budget is not None:
            accept, _ = _accuracy_keeper(model, targets, scheme, only_stride1, splits.val)
            b0 = batches[0]
            layout = next((r.layout for r in rows if r.layout), layouts[0])   # the one the plan was made for
            current = _split_with(model, targets, scheme, ranks, only_stride1)[0]
            fn, _ = prepare(current, "channels_last" if layout == "channels_last" else "eager",
                            torch.rand((b0, *dep_shape)))
            model_ms = 1e3 * medians(time_interleaved([fn], rounds=3, reps=1), table.clock)[0]
            ranks, log = tighten(model, targets, scheme, ranks, rows, accept=accept, input_shape=dep_shape,
                                 batch=b0, layout=layout, table=table, budget_ms=float(latency_budget),
                                 model_ms=model_ms)
            extra = {"latency_budget_ms": float(latency_budget), "budget_model_ms": model_ms, "budget_trials": log}
        return json.dumps({"ranks": ranks, "rows": [r.to_dict() for r in rows], "extra": extra})

    # a timed plan is made once, by process 0, and every process splits the same way (timing in every
    # process at once would also make them compete for the cores)
    if timed and rd.is_distributed():
        got = json.loads(rd.broadcast_text(rd.run_on_main(planned, "making the TRP plan"),
                                           what="receiving the TRP plan"))
    else:
        got = json.loads(planned())
    ranks, rows = got["ranks"], [PlanRow(**r) for r in got["rows"]]
    m.update(got["extra"])
    split_rank: RankSpec = rank if plan == "flops" else ranks
    small, plans = _split_with(model, targets, scheme, split_rank, only_stride1)
    apply_reasons(plans, rows)
    small.eval()
    m["plan_table"] = [r.to_dict() for r in rows]
    m["plan_layouts"] = list(layouts) if timed else []
    m["plan_layout"] = next((r.layout for r in rows if r.layout), None)   # latency plan: the layout it chose
    if timed:
        m["cost_table"] = {"path": str(table.path) if table.path else None, "measured_now": table.measured,
                           "clock": table.clock}
    for split in splits_to_eval:
        data = getattr(splits, split)
        m[f"{split}_acc_before"] = accuracy(model, data)
        m[f"{split}_acc_decomposed"] = accuracy(small, data)
    with torch.no_grad():
        x = splits.test.tensors[0][:256]
        m["max_logit_diff"] = float((small(x) - model(x)).abs().max())
    before, after = conv_macs(model, shape), conv_macs(small, shape)
    m.update(conv_macs_before=before, conv_macs_after=after, flops_speedup=before / max(1, after))
    if dep_shape != shape:
        m["flops_speedup_latency_input"] = conv_macs(model, dep_shape) / max(1, conv_macs(small, dep_shape))
    fb, fa = count_flops(model, (1, *shape)), count_flops(small, (1, *shape))
    m.update(flops_all_before=fb, flops_all_after=fa, flops_speedup_all=fb / max(1, fa))
    m.update(params_before=count_params(model), params_after=count_params(small))
    m["ranks"] = {p.name: p.rank for p in plans}
    m["max_ranks"] = {p.name: p.max_rank for p in plans}
    m["decomposed_layers"] = [p.name for p in plans if p.decompose]
    dec = [p for p in plans if p.decompose]
    m["mean_rank"] = sum(p.rank for p in dec) / max(1, len(dec))
    m["mean_rank_fraction"] = sum(p.rank / p.max_rank for p in dec) / max(1, len(dec))
    # Under torchrun only process 0 (whose metrics are written) times, so the others do not compete for cores.
    if batches and rd.is_main():
        m.update(measure_latency(model, small, dep_shape, batches, latency_repeats, runtimes=runtimes,
                                 device=device, memory=memory, min_round_s=latency_min_round_s))
        m["latency_input"] = list(dep_shape)
        m["latency_speedup"] = m[f"latency_speedup_b{max(batches)}"]
        m["latency_threads"] = torch.get_num_threads()
    return small, plans, m


def singular_values(model: nn.Module, scheme: str, *, skip_stem: bool = True,
                    filter_fn: FilterFn | None = None) -> dict[str, torch.Tensor]:
    """Singular values of every target layer's matrix (scheme 'channel' or 'spatial')."""
    out = {}
    for name, conv in select_targets(model, filter_fn, skip_stem):
        out[name] = torch.linalg.svdvals(to_matrix(conv.weight.detach(), scheme))
    return out


def energy_for_speedup(model: nn.Module, scheme: str, target: float, input_shape: tuple[int, ...], *,
                       only_stride1: bool = True, skip_stem: bool = True, filter_fn: FilterFn | None = None,
                       iters: int = 50) -> tuple[float, float]:
    """Post-hoc baseline at a matched speed-up: the smallest energy e (one value for all layers) whose
    eq.-(3) ranks give a conv-FLOPs speed-up >= target. Returns (e, speed-up reached)."""
    scheme = canonical_scheme(scheme)
    if scheme == "nd":
        raise ReparamError("matched speed-up is implemented for the channel and spatial schemes")
    sv = singular_values(model, scheme, skip_stem=skip_stem, filter_fn=filter_fn)
    shapes = conv_shapes(model, input_shape)
    total = sum(v["macs"] for v in shapes.values())
    targets = dict(select_targets(model, filter_fn, skip_stem))

    def speed(e: float) -> float:
        after = total
        for name, s in sv.items():
            conv = targets[name]
            if only_stride1 and tuple(conv.stride) != (1, 1):
                continue
            plan = LayerPlan(name, list(conv.weight.shape), list(conv.stride), energy_rank(s, e), len(s), True)
            v = shapes[name]
            after += layer_macs(plan, scheme, v["in_hw"], v["out_hw"]) - v["macs"]
        return total / after

    hi = 1.0 - 1e-9
    if speed(hi) < target:
        raise ReparamError(f"speed-up {target} is out of reach for this model and scheme; the most is "
                           f"{speed(hi):.2f}x (rank 1 everywhere)")
    lo = 1e-9
    if speed(lo) >= target:
        return lo, speed(lo)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if speed(mid) >= target:
            hi = mid
        else:
            lo = mid
    return hi, speed(hi)


def rank_history_plot(history: list[dict[str, Any]], max_ranks: dict[str, int], path: Path, title: str) -> Path:
    """Heat map of the rank each layer kept at the end of each epoch (layers down, epochs across)."""
    import matplotlib.pyplot as plt

    import reparam.metrics.plots  # noqa: F401  (selects the Agg backend)

    hist = [h for h in history if h.get("ranks")]
    names = list(hist[-1]["ranks"]) if hist else []
    grid = [[h["ranks"].get(n, float("nan")) for h in hist] for n in names]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(names) + 1.6), dpi=120)
    first, last = (hist[0]["epoch"], hist[-1]["epoch"]) if hist else (0, 0)
    im = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest",
                   extent=(first - 0.5, last + 0.5, len(names) - 0.5, -0.5))
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([f"{n} (max {max_ranks.get(n, '?')})" for n in names], fontsize=7)
    for i, row in enumerate(grid):
        if row:
            ax.text(last + 0.6, i, str(row[-1]), va="center", fontsize=7)
    ax.set_xlabel("epoch (0 = the projection before the first step)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="rank kept", pad=0.08)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
