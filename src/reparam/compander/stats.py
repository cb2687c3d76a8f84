"""Weight-distribution measurements (paper Fig. 3/4) and the percentile plot.

Works on any model: compandered, weight-normalized, powerprop or plain. The weight of a layer is what the
layer computes with (`module.weight`, i.e. Psi(v) for a compandered layer).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from reparam.compander.parametrization import compander_layers
from reparam.core.parametrize import WEIGHT_LAYERS

# Fig. 3/4 bands: max, 93, 84, 69, 50, 31, 16, 7, min
PERCENTILES = (100, 93, 84, 69, 50, 31, 16, 7, 0)


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)]


@torch.no_grad()
def weight_stats(model: nn.Module, near_zero: float = 0.01) -> dict:
    """Per-layer percentiles, max |w|, bound (a*pi/2 for arctan), near-zero fraction, (a, b); plus totals."""
    comps = {name: c for name, _, c in compander_layers(model)}
    layers = {}
    n_total = n_near = 0
    max_abs = 0.0
    for name, module in weight_layers(model):
        w = module.weight.detach().float().reshape(-1).cpu().numpy()
        pct = np.percentile(w, PERCENTILES).tolist()
        m = float(np.abs(w).max())
        near = int((np.abs(w) < near_zero).sum())
        rec = {"pct": [round(x, 6) for x in pct], "max_abs": m, "near0": near / w.size, "n": int(w.size)}
        comp = comps.get(name)
        if comp is not None:
            a, b = (float(t) for t in comp.scale.values())
            rec.update(a=a, b=b, bound=comp.fn.bound(a))
        layers[name] = rec
        n_total += w.size
        n_near += near
        max_abs = max(max_abs, m)
    return {"layers": layers, "max_abs": max_abs, "near0": n_near / max(n_total, 1)}


def bound_ok(stats: dict) -> bool:
    """True if every compandered layer's max |w| is below its bound."""
    return all(r["max_abs"] < r.get("bound", math.inf) for r in stats["layers"].values())


def percentile_plot(history: list[dict], path: str | Path, layer: str | None = None,
                    title: str | None = None, compare: list[dict] | None = None,
                    labels: tuple[str, str] = ("compander", "baseline")) -> Path:
    """Fig. 3/4-style bands of one layer's weights over epochs from per-epoch `wstats` records.

    `history` is a list of log records holding "epoch" and "wstats" (as written by WeightStatsCallback);
    `compare` is an optional second run drawn in a second panel with the same y-axis.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(labels[0], history)] + ([(labels[1], compare)] if compare else [])
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4), sharey=True, squeeze=False)
    colors = ["#c6dbef", "#6baed6", "#2171b5", "#08306b"]
    for ax, (label, hist) in zip(axes[0], runs):
        recs = [r for r in hist if "wstats" in r]
        if not recs:
            continue
        name = layer or next(iter(recs[0]["wstats"]["layers"]))
        xs = [r["epoch"] for r in recs]
        pct = np.array([r["wstats"]["layers"][name]["pct"] for r in recs])  # [T, 9]: max .. min
        for i, c in enumerate(colors):  # bands (max,min), (93,7), (84,16), (69,31)
            ax.fill_between(xs, pct[:, 8 - i], pct[:, i], color=c, lw=0,
                            label=f"{PERCENTILES[8 - i]}-{PERCENTILES[i]}%")
        ax.plot(xs, pct[:, 4], color="k", lw=1, label="median")
        bound = recs[0]["wstats"]["layers"][name].get("bound")
        if bound is not None and math.isfinite(bound):
            for s in (1, -1):
                ax.axhline(s * bound, color="r", ls="--", lw=1, label="bound a*pi/2" if s == 1 else None)
        ax.set_title(f"{label}: {name}")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("weight value")
    axes[0][0].legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
