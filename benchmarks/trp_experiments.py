"""TRP experiment matrix on digits (ResNet-20): TRP channel/spatial, +nuclear, nuclear-only, period m,
the plain baseline, and post-hoc truncated SVD of the baseline at matched speed-up. Every run is a
`reparam trp ...` command (printed and stored in each run's metrics), so every number can be re-made alone.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/trp_experiments.py --root runs/trp --seeds 1,2,3
    python benchmarks/trp_experiments.py --root runs/trp --report-only

Finished runs (OUT/metrics.json exists) are skipped, so the script can be stopped and restarted.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CONFIGS = {
    "base": ["--mode", "none"],
    "trp-nc": ["--scheme", "channel"],
    "trp-vh": ["--scheme", "spatial"],
    "trp-nc-nu": ["--scheme", "channel", "--nuclear", "3e-4"],
    "trp-vh-nu": ["--scheme", "spatial", "--nuclear", "3e-4"],
    "nuc-only": ["--mode", "nuclear", "--scheme", "channel", "--nuclear", "3e-4"],
    "trp-nc-m20": ["--scheme", "channel", "--period", "20"],
}
SWEEP = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


def cli(args: list[str]) -> list[str]:
    # the matrix decomposes by FLOPs and times eager models (the paper's plan, as recorded in
    # docs/results/trp.md); latency-aware plans and other runtimes are measured by benchmarks/trp_latency.py
    return ["nice", "-n", "10", sys.executable, "-m", "reparam", *args, "--plan", "flops", "--runtimes", "eager"]


def run(cmd: list[str], out: Path, log: Path) -> None:
    if (out / "metrics.json").exists():
        return
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH="src")
    print("$", " ".join(cmd[3:]), flush=True)
    with open(log, "a") as f:
        rc = subprocess.call(cmd + ["--overwrite"], env=env, stdout=f, stderr=subprocess.STDOUT)
    print(f"  -> rc {rc}  {out}", flush=True)


def train_cmd(root: Path, name: str, seed: int, common: list[str]) -> tuple[list[str], Path]:
    out = root / f"{name}-s{seed}"
    return cli(["trp", "train", *CONFIGS[name], *common, "--seed", str(seed), "--out", str(out),
                "--no-progress"]), out


def _data_args(args: list[str]) -> list[str]:
    """The data-selecting arguments among `args` (a decomposition reads the dataset name from the run)."""
    keep, out = {"--data-root", "--train-subset", "--val-fraction"}, []
    for i, x in enumerate(args):
        if x in keep and i + 1 < len(args):
            out += [x, args[i + 1]]
    return out


def load(path: Path) -> dict | None:
    f = path / "metrics.json"
    return json.loads(f.read_text()) if f.exists() else None


def mean_sd(xs: list[float]) -> str:
    xs = [x for x in xs if x == x]   # drop NaN (a measurement that was not taken)
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.2f}"
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}"


def report(root: Path, seeds: list[int], plots: Path, title: str = "ResNet-20 on digits",
           prefix: str = "trp") -> None:
    from reparam.metrics.plots import line_plot

    lines = ["| config | seeds | acc before decomposition % | acc decomposed % (no FT) | Δ | conv-FLOPs "
             "speed-up | latency speed-up b1 | latency speed-up b128 | mean rank | params after |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    summary = {}
    for name in CONFIGS:
        runs = [m for s in seeds if (m := load(root / f"{name}-s{s}"))]
        if not runs:
            continue
        row = {k: [r[k] for r in runs] for k in ("test_acc_before", "test_acc", "flops_speedup",
                                                 "latency_speedup_b1", "latency_speedup_b128", "mean_rank",
                                                 "params_after", "train_seconds") if k in runs[0]}
        summary[name] = row | {"seeds": [r["seed"] for r in runs]}
        delta = [100 * (a - b) for a, b in zip(row["test_acc"], row["test_acc_before"])]
        lines.append(f"| {name} | {len(runs)} | {mean_sd([100 * x for x in row['test_acc_before']])} | "
                     f"{mean_sd([100 * x for x in row['test_acc']])} | {mean_sd(delta)} | "
                     f"{mean_sd(row['flops_speedup'])}× | {mean_sd(row.get('latency_speedup_b1', []))}× | "
                     f"{mean_sd(row.get('latency_speedup_b128', []))}× | {mean_sd(row['mean_rank'])} | "
                     f"{int(statistics.mean(row['params_after']))} |")
    lines += ["", "Post-hoc truncated SVD of the baseline (no fine-tune unless stated):", "",
              "| baseline decomposition | seeds | acc % | conv-FLOPs speed-up | latency speed-up b128 |",
              "|---|---|---|---|---|"]
    for tag in ("match-channel", "match-spatial", "match-channel-ft4", "match-spatial-ft4"):
        runs = [m for s in seeds if (m := load(root / f"posthoc-{tag}-s{s}"))]
        if runs:
            summary[f"posthoc-{tag}"] = {"test_acc": [r["test_acc"] for r in runs],
                                         "flops_speedup": [r["flops_speedup"] for r in runs]}
            lines.append(f"| {tag} | {len(runs)} | {mean_sd([100 * r['test_acc'] for r in runs])} | "
                         f"{mean_sd([r['flops_speedup'] for r in runs])}× | "
                         f"{mean_sd([r.get('latency_speedup_b128', float('nan')) for r in runs])}× |")
    series = {}
    for scheme in ("channel", "spatial"):
        xs, ys = [], []
        for e in SWEEP:
            runs = [m for s in seeds if (m := load(root / f"sweep-{scheme}-e{e}-s{s}"))]
            if runs:
                xs.append(statistics.mean(r["flops_speedup"] for r in runs))
                ys.append(100 * statistics.mean(r["test_acc"] for r in runs))
        if xs:
            series[f"post-hoc TSVD {scheme} (energy sweep)"] = (xs, ys)
            summary[f"sweep-{scheme}"] = {"speedup": xs, "acc": ys, "energy": list(SWEEP[:len(xs)])}
    errors = {}
    for name in ("trp-nc", "trp-vh", "trp-nc-nu", "trp-vh-nu", "trp-nc-m20", "nuc-only"):
        if name in summary:
            accs = [100 * a for a in summary[name]["test_acc"]]
            label = f"{name} (mean of {len(accs)} seed{'s' if len(accs) > 1 else ''})"
            series[label] = ([statistics.mean(summary[name]["flops_speedup"])], [statistics.mean(accs)])
            errors[label] = [statistics.stdev(accs) if len(accs) > 1 else 0.0]
    if series:
        plots.mkdir(parents=True, exist_ok=True)
        line_plot(series, plots / f"{prefix}_acc_vs_speedup.png", "conv-FLOPs speed-up (paper's count)",
                  "test accuracy after decomposition, no fine-tune (%)", errors=errors,
                  title=f"{title}: TRP vs post-hoc TSVD")
    ranks = {}
    for name in ("trp-nc", "trp-vh", "trp-nc-nu", "trp-vh-nu", "trp-nc-m20", "nuc-only"):
        f = root / f"{name}-s{seeds[0]}" / "ranks.json"
        if f.exists():
            r = json.loads(f.read_text())
            hist = [h for h in r["history"] if h["ranks"]]
            ranks[name] = ([h["epoch"] for h in hist],
                           [statistics.mean(v / r["max_ranks"][k] for k, v in h["ranks"].items()) for h in hist])
    if ranks:
        line_plot(ranks, plots / f"{prefix}_rank_over_training.png", "epoch",
                  "mean over target convs of rank / max rank", markers=False,
                  title=f"Ranks kept by the projection (seed {seeds[0]})")
    (root / "summary.md").write_text("\n".join(lines) + "\n")
    (root / "summary.json").write_text(json.dumps(summary, indent=1))
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="runs/trp")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--plots", default="docs/results")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--sweep-seeds", default=None,
                    help="seeds for the post-hoc energy sweep (default: the first; 'none': no sweep)")
    ap.add_argument("--no-finetune", action="store_true", help="skip the post-hoc decompositions with a fine-tune")
    ap.add_argument("--no-posthoc", action="store_true", help="train only; skip the post-hoc decompositions")
    ap.add_argument("--extra", default="", help="more `trp train` arguments, e.g. '--data fashion-mnist "
                    "--train-subset 4000' (the data arguments are also given to the fine-tuning decompositions)")
    ap.add_argument("--title", default="ResNet-20 on digits", help="plot title prefix")
    ap.add_argument("--plot-prefix", default="trp", help="file-name prefix of the plots")
    a = ap.parse_args()
    root = Path(a.root)
    root.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in a.seeds.split(",")]
    log = root / "runs.log"
    if not a.report_only:
        common = ["--epochs", str(a.epochs), *shlex.split(a.extra)]
        data_args = _data_args(shlex.split(a.extra))
        jobs = [train_cmd(root, name, s, common) for name in a.configs.split(",") for s in seeds]
        with ThreadPoolExecutor(a.jobs) as pool:
            list(pool.map(lambda j: run(j[0], j[1], log), jobs))
        sweep_seeds = ([] if a.sweep_seeds == "none" else [int(x) for x in a.sweep_seeds.split(",")]
                       if a.sweep_seeds else seeds[:1])
        post = []
        for s in ([] if a.no_posthoc else seeds):
            base = root / f"base-s{s}" / "model.safetensors"
            if not base.exists():
                continue
            for scheme, trp in (("channel", "trp-nc"), ("spatial", "trp-vh")):
                m = load(root / f"{trp}-s{s}")
                if m:
                    out = root / f"posthoc-match-{scheme}-s{s}"
                    post.append((cli(["trp", "decompose", str(base), "--scheme", scheme, "--speedup",
                                      f"{m['flops_speedup']:.4f}", "--out", str(out)]), out))
                    out = root / f"posthoc-match-{scheme}-ft4-s{s}"
                    if not a.no_finetune:
                        post.append((cli(["trp", "decompose", str(base), "--scheme", scheme, "--speedup",
                                          f"{m['flops_speedup']:.4f}", "--finetune-epochs", "4", *data_args,
                                          "--latency-batches", "", "--no-progress", "--out", str(out)]), out))
                for e in SWEEP if s in sweep_seeds else ():
                    out = root / f"sweep-{scheme}-e{e}-s{s}"
                    post.append((cli(["trp", "decompose", str(base), "--scheme", scheme, "--energy", str(e),
                                      "--latency-batches", "", "--out", str(out)]), out))
        with ThreadPoolExecutor(a.jobs) as pool:
            list(pool.map(lambda j: run(j[0], j[1], log), post))
    report(root, seeds, Path(a.plots), a.title, a.plot_prefix)


if __name__ == "__main__":
    main()
