"""Aggregate grid rows: paired robust - natural deltas (same seed), summaries, plots and a markdown table."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from scipy.stats import spearmanr


def _key(r: dict[str, Any]) -> tuple:
    return (r["scheme"], r["pattern"], r["protocol"], r["target"], r["sparsity_target"], r["seed"])


def paired_deltas(rows: list[dict[str, Any]], metric: str = "test_acc", base_eps: float = 0.0,
                  base_scheme: str | None = None) -> list[dict[str, Any]]:
    """One record per (row with eps != base) whose natural partner (eps = base, same everything) exists.

    `base_scheme` pairs against another scheme's natural row (e.g. A-IMP(robust) - IMP(natural)).
    """
    base = {}
    for r in rows:
        if r["eps"] == base_eps and r.get(metric) is not None:
            base[_key(r)] = r[metric]
    out = []
    for r in rows:
        if r.get(metric) is None:
            continue
        if base_scheme is None and r["eps"] == base_eps:
            continue
        k = list(_key(r))
        if base_scheme is not None:
            k[0] = base_scheme
        b = base.get(tuple(k))
        if b is None or (base_scheme is not None and tuple(k) == _key(r) and r["eps"] == base_eps):
            continue
        out.append({**{f: r[f] for f in ("scheme", "pattern", "protocol", "target", "sparsity_target", "seed",
                                         "eps")}, "delta": 100.0 * (r[metric] - b)})
    return out


def summarize(deltas: list[dict[str, Any]]) -> dict[str, float]:
    """mean, std (over cells), share > 0, n; deltas in percentage points."""
    v = [d["delta"] for d in deltas]
    if not v:
        return {"mean": float("nan"), "std": float("nan"), "share_pos": float("nan"), "n": 0}
    return {"mean": statistics.fmean(v), "std": statistics.pstdev(v) if len(v) > 1 else 0.0,
            "share_pos": sum(x > 0 for x in v) / len(v), "n": len(v)}


def select(deltas, **where) -> list[dict[str, Any]]:
    out = []
    for d in deltas:
        ok = True
        for k, v in where.items():
            if callable(v):
                ok = ok and bool(v(d[k]))
            else:
                ok = ok and d[k] == v
        if ok:
            out.append(d)
    return out


def mean_table(rows: list[dict[str, Any]], metric: str = "test_acc") -> dict[tuple, dict[str, float]]:
    """(scheme, protocol, target, sparsity_target, eps) -> mean/std over seeds (in %)."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        if r.get(metric) is not None:
            groups[(r["scheme"], r["protocol"], r["target"], r["sparsity_target"], r["eps"])].append(
                100.0 * r[metric])
    return {k: {"mean": statistics.fmean(v), "std": statistics.pstdev(v) if len(v) > 1 else 0.0, "n": len(v)}
            for k, v in groups.items()}


def spearman(xs: list[float], ys: list[float]) -> float:
    if len(xs) < 3:
        return float("nan")
    return float(spearmanr(xs, ys).statistic)


def domain_gain_correlation(rows: list[dict[str, Any]], eps: float, protocol: str = "linear",
                            scheme: str = "omp", gaps: dict[str, dict[str, float]] | None = None
                            ) -> dict[str, Any]:
    """Spearman rho between per-target gap proxies and the mean paired delta of that target."""
    d = select(paired_deltas(rows), eps=eps, protocol=protocol, scheme=scheme)
    targets = sorted({x["target"] for x in d})
    gain = {t: statistics.fmean([x["delta"] for x in d if x["target"] == t]) for t in targets}
    nat = {t: statistics.fmean([100 * r["test_acc"] for r in rows if r["target"] == t and r["eps"] == 0
                                and r["protocol"] == protocol and r["scheme"] == scheme
                                and r["sparsity_target"] == 0]) for t in targets
           if any(r["target"] == t and r["eps"] == 0 and r["sparsity_target"] == 0 for r in rows)}
    out: dict[str, Any] = {"targets": targets, "gain": gain, "natural_dense_acc": nat}
    if len(nat) == len(targets):
        out["rho_natural_acc"] = spearman([nat[t] for t in targets], [gain[t] for t in targets])
    if gaps:
        for name in ("mmd", "a_distance"):
            vals = [gaps[t][name] for t in targets if t in gaps]
            if len(vals) == len(targets):
                out[f"rho_{name}"] = spearman(vals, [gain[t] for t in targets])
                out[name] = {t: gaps[t][name] for t in targets}
    return out


def plot_accuracy(rows: list[dict[str, Any]], out_dir: Path, scheme: str = "omp") -> list[str]:
    """Accuracy vs sparsity (mean over seeds), one line per eps, one figure per (protocol, target)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tab = mean_table([r for r in rows if r["scheme"] == scheme])
    protos = sorted({k[1] for k in tab})
    targets = sorted({k[2] for k in tab})
    files = []
    for proto in protos:
        fig, axes = plt.subplots(1, len(targets), figsize=(3.2 * len(targets), 3), squeeze=False)
        for ax, t in zip(axes[0], targets):
            for eps in sorted({k[4] for k in tab}):
                pts = sorted((k[3], v["mean"]) for k, v in tab.items() if k[1] == proto and k[2] == t
                             and k[4] == eps)
                if pts:
                    xs = [-_log_density(s) for s, _ in pts]
                    ax.plot(xs, [m for _, m in pts], marker="o", label=f"eps={eps:g}")
            ax.set_title(t, fontsize=9)
            ax.set_xlabel("-log10(1 - sparsity)")
        axes[0][0].set_ylabel(f"{proto} test acc (%)")
        axes[0][-1].legend(fontsize=7)
        fig.suptitle(f"{scheme} tickets, {proto} transfer")
        fig.tight_layout()
        name = f"acc_vs_sparsity_{scheme}_{proto}.png"
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        files.append(name)
    return files


def _log_density(s: float) -> float:
    import math

    return math.log10(max(1 - s, 1e-6))


def delta_markdown(rows: list[dict[str, Any]]) -> str:
    """Table of paired deltas by scheme, protocol, eps, sparsity (mean +- std over targets x seeds)."""
    d = paired_deltas(rows)
    lines = ["| scheme | protocol | eps | sparsity | mean delta (pp) | std | share > 0 | n |",
             "|---|---|---|---|---|---|---|---|"]
    keys = sorted({(x["scheme"], x["protocol"], x["eps"], x["sparsity_target"]) for x in d})
    for sch, proto, eps, sp in keys:
        s = summarize(select(d, scheme=sch, protocol=proto, eps=eps, sparsity_target=sp))
        lines.append(f"| {sch} | {proto} | {eps:g} | {sp:g} | {s['mean']:+.2f} | {s['std']:.2f} | "
                     f"{100 * s['share_pos']:.0f}% | {s['n']} |")
    return "\n".join(lines) + "\n"


def headline(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The spec's T1-T8 statistics computed from rows (whatever subset of the grid is present)."""
    d = paired_deltas(rows)
    eps_vals = sorted({x["eps"] for x in d})
    out: dict[str, Any] = {"by_eps": {}}
    for eps in eps_vals:
        e: dict[str, Any] = {}
        for proto in sorted({x["protocol"] for x in d}):
            for sch in sorted({x["scheme"] for x in d}):
                base = select(d, eps=eps, protocol=proto, scheme=sch)
                if not base:
                    continue
                hi = summarize(select(base, sparsity_target=lambda s: s >= 0.9))
                lo = summarize(select(base, sparsity_target=lambda s: s <= 0.8))
                e[f"{sch}/{proto}"] = {"all": summarize(base), "sp>=0.9": hi, "sp<=0.8": lo,
                                       "growth": hi["mean"] - lo["mean"] if lo["n"] and hi["n"] else None}
        out["by_eps"][f"{eps:g}"] = e
    for metric in ("robust_acc", "ood_auroc"):
        dm = paired_deltas(rows, metric=metric)
        out[f"{metric}_delta"] = {f"{eps:g}/{proto}": summarize(select(dm, eps=eps, protocol=proto))
                                  for eps in eps_vals for proto in sorted({x["protocol"] for x in dm})}
    return out


def select_eps_per_task(rows: list[dict[str, Any]], protocol: str = "linear", scheme: str = "omp",
                        by_sparsity: float = 0.0) -> dict[tuple[str, int], float]:
    """Per (target, seed): the eps > 0 whose ticket at `by_sparsity` has the best validation accuracy
    ("follow [19]": eps chosen per task on validation data; the natural model is the baseline)."""
    best: dict[tuple[str, int], tuple[float, float]] = {}
    for r in rows:
        if (r["protocol"] != protocol or r["scheme"] != scheme or r["eps"] == 0
                or r["sparsity_target"] != by_sparsity or r.get("val_acc") is None):
            continue
        k = (r["target"], r["seed"])
        if k not in best or r["val_acc"] > best[k][1]:
            best[k] = (r["eps"], r["val_acc"])
    return {k: v[0] for k, v in best.items()}


def selected_eps_deltas(rows: list[dict[str, Any]], protocol: str = "linear", scheme: str = "omp"
                        ) -> list[dict[str, Any]]:
    """Paired deltas of the per-task selected eps against natural, at every sparsity."""
    chosen = select_eps_per_task(rows, protocol, scheme)
    d = select(paired_deltas(rows), protocol=protocol, scheme=scheme)
    return [x for x in d if chosen.get((x["target"], x["seed"])) == x["eps"]]
