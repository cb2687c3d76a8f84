"""Decompose a trained model and measure what the paper reports: accuracy before/after (no fine-tuning),
conv-FLOPs speed-up (paper's way), whole-model FLOPs, parameters, per-layer ranks, CPU latency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from reparam.core import distributed as rd
from reparam.core.errors import ReparamError
from reparam.core.parametrize import FilterFn
from reparam.metrics import accuracy, count_flops, count_params, latency
from reparam.trp.apply import layers as trp_layers
from reparam.trp.decompose import LayerPlan, RankSpec, decompose, decompose_model
from reparam.trp.flops import conv_macs, conv_shapes, layer_macs
from reparam.trp.project import select_targets
from reparam.trp.rank import energy_rank
from reparam.trp.reshape import canonical_scheme, to_matrix


def input_shape_of(splits) -> tuple[int, int, int]:
    return (int(splits.in_channels), *(int(s) for s in splits.image_size))


def measure_latency(original: nn.Module, decomposed: nn.Module, input_shape: tuple[int, ...],
                    batches: tuple[int, ...] = (1, 128), repeats: int = 20) -> dict[str, float]:
    """Median seconds per forward pass (current torch thread count) of both models at each batch size."""
    out: dict[str, float] = {}
    g = torch.Generator().manual_seed(0)
    for b in batches:
        x = torch.rand((b, *input_shape), generator=g)
        # alternate the two models so machine-load drift hits both alike
        t_o, t_d = [], []
        for _ in range(3):
            t_o.append(latency(original, x, repeats=max(1, repeats // 3), warmup=2))
            t_d.append(latency(decomposed, x, repeats=max(1, repeats // 3), warmup=2))
        out[f"latency_b{b}_before_ms"] = 1e3 * sorted(t_o)[1]
        out[f"latency_b{b}_after_ms"] = 1e3 * sorted(t_d)[1]
        out[f"latency_speedup_b{b}"] = sorted(t_o)[1] / sorted(t_d)[1]
    return out


def decompose_and_measure(model: nn.Module, splits, scheme: str, rank: RankSpec, *,
                          only_stride1: bool = True, skip_stem: bool = True, filter_fn: FilterFn | None = None,
                          latency_batches: tuple[int, ...] = (1, 128), latency_repeats: int = 20,
                          latency_size: int | None = None, splits_to_eval: tuple[str, ...] = ("val", "test")
                          ) -> tuple[nn.Module, list[LayerPlan], dict[str, Any]]:
    """Decompose `model` and return (decomposed model, plans, metrics).

    A model `trp.apply` was applied to is split on its TRP layers (filter_fn and skip_stem were given to
    apply); any other model (a plain baseline, a loaded file) on the convs filter_fn and skip_stem pick.
    """
    scheme = canonical_scheme(scheme)
    model.eval()
    if trp_layers(model):
        small, plans = decompose(model, rank, scheme=scheme, only_stride1=only_stride1)
    else:
        small, plans = decompose_model(model, scheme, rank, filter_fn=filter_fn, skip_stem=skip_stem,
                                       only_stride1=only_stride1)
    small.eval()
    shape = input_shape_of(splits)
    m: dict[str, Any] = {"scheme": scheme, "decompose_rank": rank if isinstance(rank, (str, int)) else
                         ("per-layer" if isinstance(rank, dict) else str(rank))}
    for split in splits_to_eval:
        data = getattr(splits, split)
        m[f"{split}_acc_before"] = accuracy(model, data)
        m[f"{split}_acc_decomposed"] = accuracy(small, data)
    with torch.no_grad():
        x = splits.test.tensors[0][:256]
        m["max_logit_diff"] = float((small(x) - model(x)).abs().max())
    before, after = conv_macs(model, shape), conv_macs(small, shape)
    m.update(conv_macs_before=before, conv_macs_after=after, flops_speedup=before / max(1, after))
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
    if latency_batches and rd.is_main():
        lat_shape = shape if latency_size is None else (shape[0], int(latency_size), int(latency_size))
        m.update(measure_latency(model, small, lat_shape, tuple(latency_batches), latency_repeats))
        m["latency_input"] = list(lat_shape)
        m["latency_speedup"] = m[f"latency_speedup_b{max(latency_batches)}"]
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
