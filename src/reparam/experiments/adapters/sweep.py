"""`reparam adapt sweep`: every method and size on one base, several targets and seeds; accuracy against the
bytes each adapter stores (results.json, table.md, acc_vs_bytes_<target>.png). Each finished run is cached
in OUT.partial/runs/, so `--resume` continues a killed sweep."""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path
from typing import Any

from reparam.core.errors import ReparamError
from reparam.experiments.adapters import runs

DEFAULT_SPECS = ("linear,bitfit,lora:1,lora:2,lora:4,lora:8,nola:50,nola:200,nola:800,pranc:50,pranc:200,"
                 "pranc:800,full")
PEFT_SPECS = "peft-lora:1,peft-vera:4"


def peft_available() -> bool:
    return importlib.util.find_spec("peft") is not None


def parse_specs(text: str | None) -> list[tuple[str, int | None]]:
    """"nola:200,lora:4,linear" -> [("nola", 200), ("lora", 4), ("linear", None)]; None = the default set."""
    if text is None:
        text = DEFAULT_SPECS + ("," + PEFT_SPECS if peft_available() else "")
    out = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            raise ReparamError(f"--methods {text!r} has an empty item; give comma-separated METHOD[:SIZE]")
        method, _, size = item.partition(":")
        runs.check_method(method)
        if runs.SIZED.get(method):
            try:
                n = int(size) if size else (200 if runs.SIZED[method] == "k" else 4)
            except ValueError:
                raise ReparamError(f"--methods item {item!r}: the size after ':' must be an integer") from None
            if n < 1:
                raise ReparamError(f"--methods item {item!r}: the size must be positive")
            out.append((method, n))
        else:
            if size:
                raise ReparamError(f"--methods item {item!r}: {method} takes no size")
            out.append((method, None))
    dup = next((label(*o) for i, o in enumerate(out) if o in out[:i]), None)
    if dup is not None:
        raise ReparamError(f"--methods {text!r} lists {dup} twice; each may appear once")
    if any(m in runs.PEFT_METHODS for m, _ in out) and not peft_available():
        raise ReparamError("peft is not installed: pip install 'reparam[peft]' for peft-lora / peft-vera, or leave "
                           "them out of --methods")
    return out


def label(method: str, size: int | None) -> str:
    return method if size is None else f"{method}:{size}"


def run_sweep(base: str, datasets: list[str], specs: list[tuple[str, int | None]], *, seeds: int = 3,
              first_seed: int = 0, epochs: int = 10, batch_size: int = runs.BATCH_SIZE, nola_rank: int | None = None,
              out: str | Path,
              data_root: str | None = None, train_subset: float | None = None, val_fraction: float = 0.1,
              data_seed: int | None = None, overwrite: bool = False, resume: bool = False,
              progress: bool = False, layers: str | None = None) -> list[dict[str, Any]]:
    from reparam.core.outdir import local_output_dir, write_json
    from reparam.data import load_dataset
    from reparam.experiments.adapters.targets import register_adapter_targets
    from reparam.metrics.evaluation import accuracy

    register_adapter_targets()
    out = Path(out)
    if out.exists() and not overwrite:
        raise ReparamError(f"output folder {out} already exists; choose another --out or pass --overwrite")
    model, header = runs.load_base(base)
    dseed = int(header.get("seed", 0)) if data_seed is None else data_seed
    subset = None if train_subset is None else (int(train_subset) if train_subset > 1 else train_subset)
    splits_of = {}
    for data in datasets:     # every target loads and fits the base before anything is written
        splits_of[data] = load_dataset(data, seed=dseed, root=data_root, val_fraction=val_fraction,
                                       train_subset=subset)
        runs.check_target(model, splits_of[data], data)
    rows: list[dict[str, Any]] = []
    with local_output_dir(out, overwrite=overwrite, resume=resume) as work:
        (work / "runs").mkdir(exist_ok=True)
        base_acc = {d: accuracy(model, s.test) for d, s in splits_of.items()}
        for data, splits in splits_of.items():
            for method, size in specs:
                for seed in range(first_seed, first_seed + seeds):
                    cache = work / "runs" / f"{data}__{label(method, size).replace(':', '-')}__s{seed}.json"
                    if cache.exists():
                        rows.append(json.loads(cache.read_text()))
                        continue
                    m_model, _ = runs.load_base(base)
                    kw = {"k": size} if runs.SIZED.get(method) == "k" else {"rank": size} if size else {}
                    if method == "nola" and nola_rank is not None:
                        kw["rank"] = nola_rank
                    if layers is not None and method in ("nola", "pranc", "lora"):
                        kw["layers"] = layers
                    metrics, _ = runs.adapt(m_model, splits, method, epochs=epochs, seed=seed,
                                            batch_size=batch_size, progress=progress, **kw)
                    metrics.pop("history", None)
                    row = {"dataset": data, "method": method, "size": size, "label": label(method, size),
                           "seed": seed, "data_seed": dseed, "base_test_acc": base_acc[data], **metrics}
                    write_json(cache, row)
                    rows.append(row)
                    print(f"{data:>20} {label(method, size):>14} seed {seed}: test {row['test_acc']:.4f}, "
                          f"{row['params_stored']:,} numbers, {row['bytes_stored']:,} bytes", flush=True)
        meta = {"base": str(base), "base_model": header.get("model_spec"), "datasets": datasets, "seeds": seeds,
                "first_seed": first_seed, "epochs": epochs, "batch_size": batch_size, "nola_rank": nola_rank,
                "train_subset": train_subset, "val_fraction": val_fraction, "data_seed": dseed,
                "base_test_acc": base_acc, "layers": layers}
        write_json(work / "results.json", {"meta": meta, "rows": rows})
        table = summarize(rows)
        (work / "table.md").write_text(markdown(table, base_acc))
        for data in datasets:
            plot(table, data, work / f"acc_vs_bytes_{data}.png", base_acc[data])
    return rows


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds per (dataset, method, size), in the order first seen."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["method"], r["size"]), []).append(r)
    out = []
    for (data, method, size), rs in groups.items():
        accs = [100 * r["test_acc"] for r in rs]
        out.append({"dataset": data, "method": method, "size": size, "label": label(method, size),
                    "numbers": rs[0]["params_stored"], "bytes": rs[0]["bytes_stored"],
                    "file_bytes": rs[0].get("file_bytes"), "acc_mean": statistics.mean(accs),
                    "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "n": len(accs),
                    "seconds": statistics.mean(r["train_seconds"] for r in rs)})
    return out


def markdown(table: list[dict[str, Any]], base_acc: dict[str, float]) -> str:
    lines = []
    for data in dict.fromkeys(r["dataset"] for r in table):
        lines += [f"### {data} (base, not adapted: {100 * base_acc[data]:.1f}%)", "",
                  "| method | stored numbers | stored bytes | file bytes | test accuracy % (mean ± std) | seeds | "
                  "train s |", "|---|---:|---:|---:|---:|---:|---:|"]
        for r in sorted((r for r in table if r["dataset"] == data), key=lambda r: r["bytes"]):
            lines.append(f"| {r['label']} | {r['numbers']:,} | {r['bytes']:,} | {r['file_bytes'] or 0:,} | "
                         f"{r['acc_mean']:.1f} ± {r['acc_std']:.1f} | {r['n']} | {r['seconds']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def plot(table: list[dict[str, Any]], data: str, path: Path, base_acc: float) -> Path:
    from reparam.metrics.plots import line_plot

    series: dict[str, tuple[list[float], list[float]]] = {}
    errors: dict[str, list[float]] = {}
    for r in sorted((r for r in table if r["dataset"] == data), key=lambda r: r["bytes"]):
        xs, ys = series.setdefault(r["method"], ([], []))
        xs.append(r["bytes"])
        ys.append(r["acc_mean"])
        errors.setdefault(r["method"], []).append(r["acc_std"])
    return line_plot(series, path, "stored bytes: the adapter's tensors (log scale)", "test accuracy %",
                     title=f"{data}: accuracy vs stored bytes\n(base before adapting: {100 * base_acc:.1f}%)",
                     logx=True, errors=errors)
