"""Measured latency of trained vs decomposed TRP models (and post-hoc truncated-SVD baselines), one process.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/trp_latency.py runs/trp-channel runs/trp-spatial \
        --sizes 28,32 --batches 1,128 --rounds 21 --runtimes eager,channels_last,compile,compile+channels_last
    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/trp_latency.py runs/base --schemes channel,spatial \
        --rules energy:0.1,energy:0.2,energy:0.3 --sizes 32 --plot docs/results/trp_acc_vs_latency.png \
        --plot-also trp.json

Each RUN is the folder of a `reparam trp train` run (model.safetensors, metrics.json). For every input size and
rank rule the trained model is decomposed with the chosen plan (latency by default: reparam.trp.plan, made for
these batch sizes and this input size from the per-machine cost table), then both models are timed in the
same alternating rounds under each runtime (reparam.trp.export.compare: thread CPU time with one thread,
wall clock alongside, medians, speed-up = median of per-round ratios, each model under its fastest runtime),
their test accuracy is computed on the run's data, and the peak memory of a forward pass is counted. Prints a
markdown table; --json keeps every row, --plot draws test accuracy against FLOPs and measured speed-up.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from reparam.data import load_dataset
from reparam.experiments.trp.report import decompose_and_measure
from reparam.trp.io import load_model_file
from reparam.trp.latency import CostTable


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--sizes", default="32")
    ap.add_argument("--batches", default="1,128")
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--runtimes", default="eager,channels_last")
    ap.add_argument("--plan", default="latency", choices=("latency", "flops"))
    ap.add_argument("--schemes", default=None, help="default: each run's own scheme")
    ap.add_argument("--rules", default=None, help="rank rules, comma list (default: each run's decompose_rule)")
    ap.add_argument("--cost-table", default=None)
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--plot", default=None, help="accuracy vs FLOPs / measured speed-up figure (PNG)")
    ap.add_argument("--plot-also", nargs="*", default=[], help="rows of earlier runs (--json files) to plot too")
    a = ap.parse_args()
    torch.set_num_threads(1)
    sizes = [int(s) for s in _csv(a.sizes)]
    batches = tuple(int(b) for b in _csv(a.batches))
    runtimes = tuple(_csv(a.runtimes))
    table = CostTable(a.cost_table)
    rows = []
    head = ("| run | scheme | rule | input | plan FLOPs speed-up | test acc before / after % | "
            + " | ".join(f"b{b} ms before / after (runtime) | b{b} speed-up (wall) | b{b} / FLOPs" for b in batches)
            + f" | peak MB b{batches[-1]} before / after | s |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for run in a.runs:
        model, _ = load_model_file(Path(run) / "model.safetensors")
        meta = json.loads((Path(run) / "metrics.json").read_text())
        splits = load_dataset(meta["dataset"], seed=int(meta["seed"]))
        for scheme in _csv(a.schemes) if a.schemes else [meta["scheme"]]:
            for rule in _csv(a.rules) if a.rules else [meta["decompose_rule"]]:
                for size in sizes:
                    t0 = time.perf_counter()
                    _, _, m = decompose_and_measure(
                        model, splits, scheme, rule, plan=a.plan, latency_batches=batches, latency_size=size,
                        latency_repeats=a.rounds, runtimes=runtimes, table=table, memory=True,
                        splits_to_eval=("test",))
                    secs = time.perf_counter() - t0
                    fl = m["flops_speedup_latency_input"] if "flops_speedup_latency_input" in m else m["flops_speedup"]
                    row = {"run": run, "scheme": scheme, "rule": rule, "size": size, "flops_speedup": fl,
                           "seconds": secs, **{k: v for k, v in m.items() if k != "budget_trials"}}
                    rows.append(row)
                    cells = " | ".join(
                        f"{m[f'latency_b{b}_before_ms']:.2f} / {m[f'latency_b{b}_after_ms']:.2f} "
                        f"({m[f'latency_b{b}_before_runtime']} / {m[f'latency_b{b}_after_runtime']}) | "
                        f"{m[f'latency_speedup_b{b}']:.2f}× ({m[f'latency_speedup_b{b}_wall']:.2f}×) | "
                        f"{m[f'latency_speedup_b{b}'] / fl:.2f}" for b in batches)
                    b = batches[-1]
                    print(f"| {Path(run).name} | {scheme} | {rule} | {size}x{size} | {fl:.2f}× | "
                          f"{100 * m['test_acc_before']:.2f} / {100 * m['test_acc_decomposed']:.2f} | {cells} | "
                          f"{m[f'peak_mb_b{b}_before']:.1f} / {m[f'peak_mb_b{b}_after']:.1f} | {secs:.0f} |",
                          flush=True)
                    if a.json:
                        Path(a.json).write_text(json.dumps(rows, indent=1))
    if a.plot:
        for f in a.plot_also:
            rows += json.loads(Path(f).read_text())
        plot(rows, batches, Path(a.plot))


def plot(rows: list[dict], batches: tuple[int, ...], path: Path) -> None:
    """Test accuracy against the plan's conv-FLOPs speed-up and against the measured speed-up per batch."""
    import matplotlib.pyplot as plt

    import reparam.metrics.plots  # noqa: F401  (selects the Agg backend)

    xs = [("flops_speedup", "conv-FLOPs speed-up of the plan")] + [
        (f"latency_speedup_b{b}", f"measured speed-up, batch {b}") for b in batches]
    fig, axes = plt.subplots(1, len(xs), figsize=(4.2 * len(xs), 3.6), dpi=120, sharey=True)
    groups: dict[str, list[dict]] = {}
    for r in rows:
        kind = "TRP" if str(r["rule"]).startswith("value") else "post-hoc TSVD"
        groups.setdefault(f"{kind} {r['scheme']} {r['size']}px", []).append(r)
    for ax, (key, label) in zip(axes, xs):
        for name, rs in sorted(groups.items()):
            rs = sorted(rs, key=lambda r: r[key])
            ax.plot([r[key] for r in rs], [100 * r["test_acc_decomposed"] for r in rs],
                    "o-" if "post-hoc" in name else "*", label=name, markersize=7 if "post-hoc" in name else 12)
        ax.axvline(1.0, color="grey", lw=0.6)
        ax.set_xlabel(label)
    axes[0].set_ylabel("test accuracy, decomposed, no fine-tune (%)")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
