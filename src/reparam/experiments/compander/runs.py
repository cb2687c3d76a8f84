"""Multi-run experiments: one run per (variant, seed), paired statistics, the (a, b) grid.

Runs use the shared Trainer in-process (no per-run output folder); each finished run is cached as JSON in
the experiment's work folder so an interrupted `compare`/`grid` continues with --resume.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reparam.compander import learned_scales
from reparam.core.fileformat import atomic_write_text
from reparam.experiments.compander.variants import Variant, parse_variant, setup_variant
from reparam.metrics.stats import mean_std, paired
from reparam.train import TrainConfig, Trainer


@dataclass
class DataSpec:
    data: str = "digits"
    model: str = "cnn"
    data_root: str | None = None
    train_subset: int | float | None = None
    val_fraction: float = 0.1
    resize: int | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    test_limit: int = 0                   # > 0: a seeded random subset of the test split (smoke tests)

    def describe(self) -> str:
        sub = f", train_subset={self.train_subset}" if self.train_subset else ""
        size = f", resized to {self.resize}x{self.resize}" if self.resize else ""
        opts = "".join(f", {k}={v}" for k, v in self.model_options.items())
        lim = f", test_limit={self.test_limit}" if self.test_limit else ""
        return f"{self.model}{opts} on {self.data}{sub}{size}{lim}"


def load(spec: DataSpec, seed: int):
    from reparam.data import limit_test, load_dataset
    from reparam.models import build_for

    extra = {"resize": spec.resize} if spec.resize else {}
    splits = load_dataset(spec.data, seed=seed, root=spec.data_root, val_fraction=spec.val_fraction,
                          train_subset=spec.train_subset, **extra)
    if spec.test_limit:
        splits = limit_test(splits, spec.test_limit, seed)
    model = build_for(spec.model, splits, seed, **spec.model_options)
    return splits, model


def run_one(variant: Variant | str, spec: DataSpec, config: TrainConfig, seed: int, a: float = 0.8,
            b: float = 0.5) -> dict[str, Any]:
    """Train one variant on one seed; return accuracies, timing and weight-distribution summaries."""
    variant = parse_variant(variant) if isinstance(variant, str) else variant
    splits, model = load(spec, seed)
    base = TrainConfig(**{**config.to_dict(), "seed": seed, "progress": False, "checkpoint": False})
    setup = setup_variant(model, variant, base, a=a, b=b)
    trainer = Trainer(model, splits, setup.config, callbacks=setup.callbacks, param_groups=setup.param_groups,
                      optimizer=setup.optimizer)
    result = trainer.fit(resume=False)
    hist = setup.stats.history(result.history)
    first = next(iter(hist[-1]["wstats"]["layers"]))
    final = hist[-1]["wstats"]
    secs = [r["seconds"] for r in result.history]
    out = {
        "variant": variant.label, "seed": seed, "setting": spec.describe(),
        "test_acc": result.test_acc, "val_acc": result.val_acc, "best_epoch": result.best_epoch,
        "epochs": result.epochs, "train_seconds": result.train_seconds,
        "sec_per_epoch": float(np.mean(secs)), "sec_per_epoch_median": float(np.median(secs)),
        "first_layer": first,
        "first_layer_pct": [[r["epoch"], r["wstats"]["layers"][first]["pct"]] for r in hist],
        "first_layer_bound": final["layers"][first].get("bound"),
        "first_layer_max_abs_epoch1": hist[1]["wstats"]["layers"][first]["max_abs"] if len(hist) > 1 else None,
        "max_abs_final": final["max_abs"], "near0_final": final["near0"],
        "max_abs_over_epochs": max(r["wstats"]["max_abs"] for r in hist),
        "layers_final": {k: {kk: v[kk] for kk in ("max_abs", "near0", "bound", "a", "b") if kk in v}
                         for k, v in final["layers"].items()},
        "info": {k: v for k, v in setup.info.items() if k != "layers"},
        "n_train": len(splits.train), "n_val": len(splits.val), "n_test": len(splits.test),
    }
    if variant.kind == "wc":
        out["scales_final"] = learned_scales(model)
    bounds = [v.get("bound", math.inf) for v in final["layers"].values()]
    out["bound_ok"] = all(v["max_abs"] < bd for v, bd in zip(final["layers"].values(), bounds))
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text)


def run_many(jobs: Sequence[tuple[str, int]], spec: DataSpec, config: TrainConfig, cache_dir: Path,
             progress: bool = True, a: float = 0.8, b: float = 0.5,
             on_result: Callable[[dict], None] | None = None) -> list[dict]:
    """Run (variant, seed) jobs in order, reusing results cached in cache_dir/<variant>-s<seed>.json."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    cache_dir.mkdir(parents=True, exist_ok=True)
    results = []
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), disable=not progress) as bar:
        task = bar.add_task("runs", total=len(jobs))
        for variant, seed in jobs:
            path = cache_dir / f"{_slug(variant)}-s{seed}.json"
            if path.exists():
                res = json.loads(path.read_text())
            else:
                bar.update(task, description=f"{variant} seed {seed}")
                torch.manual_seed(seed)
                res = run_one(variant, spec, config, seed, a=a, b=b)
                atomic_write_text(path, json.dumps(res))
            results.append(res)
            if on_result:
                on_result(res)
            bar.advance(task)
    return results


# -- statistics ----------------------------------------------------------------------------------------

def by_variant(results: list[dict]) -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict]] = {}
    for r in results:
        out.setdefault(r["variant"], {})[r["seed"]] = r
    return out


REFERENCE_KINDS = ("plain", "wn", "pp")


def summarize(results: list[dict], variants: Sequence[str]) -> dict[str, Any]:
    """Per-variant mean/std and paired differences against every baseline variant present."""
    groups = by_variant(results)
    rows = {}
    for v in variants:
        runs = groups.get(v, {})
        seeds = sorted(runs)
        accs = [runs[s]["test_acc"] for s in seeds]
        m, s = mean_std(accs)
        rows[v] = {
            "seeds": seeds, "test_acc": accs, "mean": m, "std": s,
            "val_mean": mean_std([runs[x]["val_acc"] for x in seeds])[0],
            "sec_per_epoch": mean_std([runs[x]["sec_per_epoch_median"] for x in seeds])[0],
            "max_abs_final": mean_std([runs[x]["max_abs_final"] for x in seeds])[0],
            "near0_final": mean_std([runs[x]["near0_final"] for x in seeds])[0],
            "first_max_epoch1": mean_std([runs[x]["first_layer_max_abs_epoch1"] for x in seeds])[0],
            "first_pct_final": np.mean([runs[x]["first_layer_pct"][-1][1] for x in seeds], axis=0).tolist(),
            "bound": runs[seeds[0]]["first_layer_bound"] if seeds else None,
            "bound_ok_all": all(runs[x]["bound_ok"] for x in seeds),
        }
    refs = [v for v in variants if parse_variant(v).kind in REFERENCE_KINDS]
    diffs = {}
    for v in variants:
        is_ref = v in refs
        for ref in refs:
            # compander variants against every baseline; baselines only against plain
            if ref == v or (is_ref and (parse_variant(ref).kind != "plain"
                                        or variants.index(ref) > variants.index(v))):
                continue
            common = sorted(set(groups.get(v, {})) & set(groups.get(ref, {})))
            if not common:
                continue
            diffs[f"{v} - {ref}"] = paired([groups[v][s]["test_acc"] for s in common],
                                           [groups[ref][s]["test_acc"] for s in common])
    base = next((v for v in variants if parse_variant(v).kind == "plain"), None)
    if base:
        t0 = rows[base]["sec_per_epoch"]
        for v in variants:
            rows[v]["overhead_vs_plain"] = rows[v]["sec_per_epoch"] / t0 - 1 if t0 else None
    return {"rows": rows, "paired": diffs}


def _pp(x: float) -> str:
    return f"{100 * x:.2f}"


def markdown_tables(summary: dict[str, Any], title: str = "") -> str:
    lines = [f"### {title}", ""] if title else []
    lines += ["| variant | seeds | test acc % mean | std (n-1) | max\\|w\\| final | near-0 frac | "
              "s/epoch | overhead vs plain |", "|---|---|---|---|---|---|---|---|"]
    for v, r in summary["rows"].items():
        ov = r.get("overhead_vs_plain")
        lines.append(f"| {v} | {len(r['seeds'])} | {_pp(r['mean'])} | {_pp(r['std'])} | "
                     f"{r['max_abs_final']:.3f} | {r['near0_final']:.3f} | {r['sec_per_epoch']:.3f} | "
                     f"{'' if ov is None else f'{100 * ov:+.1f}%'} |")
    if summary["paired"]:
        lines += ["", "| paired difference | mean pp | std pp | wins/ties/losses | t | p (two-sided) |",
                  "|---|---|---|---|---|---|"]
        for k, d in summary["paired"].items():
            t = "" if d["t"] is None else f"{d['t']:.2f}"
            p = "" if d["p"] is None else f"{d['p']:.3f}"
            lines.append(f"| {k} | {100 * d['mean']:+.2f} | {100 * d['std']:.2f} | "
                         f"{d['wins']}/{d['ties']}/{d['losses']} | {t} | {p} |")
    lines += ["", "Per-seed test accuracy (%):", "", "| variant | " + " | ".join(
        f"seed {s}" for s in next(iter(summary["rows"].values()))["seeds"]) + " |",
        "|---|" + "---|" * len(next(iter(summary["rows"].values()))["seeds"])]
    for v, r in summary["rows"].items():
        lines.append(f"| {v} | " + " | ".join(_pp(x) for x in r["test_acc"]) + " |")
    lines += ["", "First conv layer, final weight percentiles (mean over seeds; max / 93 / 84 / 69 / 50 / 31 / "
              "16 / 7 / min), and max |w| of the first layer after epoch 1:", "",
              "| variant | percentiles | 7-93% width | 16-84% width | first-layer max after epoch 1 | bound |",
              "|---|---|---|---|---|---|"]
    for v, r in summary["rows"].items():
        p = r["first_pct_final"]
        bound = r["bound"]
        lines.append(f"| {v} | {' / '.join(f'{x:.3f}' for x in p)} | {p[1] - p[7]:.3f} | {p[2] - p[6]:.3f} | "
                     f"{r['first_max_epoch1']:.3f} | {'' if bound is None else f'{bound:.3f}'} |")
    return "\n".join(lines) + "\n"


def grid_values(text: str) -> list[float]:
    """'0.5:1.0:0.1' (inclusive range) or '0.5,0.8,1.0' -> list of floats."""
    from reparam.core.errors import ReparamError

    try:
        if ":" in text:
            lo, hi, step = (float(t) for t in text.split(":"))
            if step <= 0 or hi < lo:
                raise ValueError
            n = int(math.floor((hi - lo) / step + 1e-9)) + 1
            values = [round(lo + i * step, 10) for i in range(n)]
        else:
            values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ReparamError(f"grid values {text!r} not understood; use start:stop:step (inclusive, step > 0) "
                           "or a comma-separated list") from None
    if not values or any(not v > 0 for v in values):
        raise ReparamError(f"grid values {text!r} must be positive numbers")
    return values


def grid_select(results: list[dict], a_values: Sequence[float], b_values: Sequence[float]) -> dict[str, Any]:
    """Mean val accuracy per (a, b); the best pair by val accuracy (ties: smaller a/b, i.e. first found)."""
    table = {}
    for a in a_values:
        for b in b_values:
            label = f"wc:a={a:g}:b={b:g}"
            runs = [r for r in results if r["variant"] == label]
            if runs:
                table[(a, b)] = {"val": mean_std([r["val_acc"] for r in runs])[0],
                                 "test": mean_std([r["test_acc"] for r in runs])[0], "n": len(runs)}
    best = max(table, key=lambda k: table[k]["val"]) if table else None
    ties = [k for k in table if best is not None and table[k]["val"] == table[best]["val"]]
    return {"table": {f"{a:g},{b:g}": v for (a, b), v in table.items()}, "best": best, "ties": ties}
