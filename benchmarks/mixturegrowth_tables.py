"""MixtureGrowth's per-seed tables (paper Table 1 and Table 4 at this scale) from a reproduce report's
results.json, as Markdown: every number comes from the run that wrote the file, nothing is recomputed but the
paired statistics (scipy's paired t-test, as the report's verdicts).

    python benchmarks/mixturegrowth_tables.py docs/results/reproduce-full/results.json

A full run still under way: `--partial OUT` lists the jobs of each seed its cache already holds (test
accuracy, FLOPs spent, accuracy right at growth), read from `OUT.partial/cache/mixturegrowth-cache`:

    PYTHONPATH=src python benchmarks/mixturegrowth_tables.py --partial runs/reproduce-full --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from reparam.metrics.stats import paired

ORDER = ("mixturegrowth", "wo-fusion", "random", "net2net", "large-match", "small-match", "small", "large")


def _pct(v: list[float]) -> str:
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    return f"{100 * statistics.mean(v):.2f} ± {100 * sd:.2f}"


def _diff(a: list[float], b: list[float]) -> str:
    if len(a) != len(b) or len(a) < 2:
        return "n/a"
    d = paired(a, b)
    p = "n/a" if d["p"] is None else f"{d['p']:.3f}"
    return f"{100 * d['mean']:+.2f} pts ({d['wins']}/{d['n']} seeds, p = {p})"


def tables(results: dict) -> str:
    claims = {c["claim_id"]: c for c in results["claims"] if c["method"] == "mixturegrowth"}
    if "mg-beats-growth-baselines" not in claims:
        raise ValueError("it has no MixtureGrowth accuracy claims (a report run with --methods mixturegrowth has)")
    base = claims["mg-beats-growth-baselines"]["details"]
    acc, flops = base["test_acc"], base["flops_norm"]
    mg = acc["mixturegrowth"]
    out = ["| method | test accuracy per seed (%) | mean ± std (%) | FLOPs spent (X) | MixtureGrowth - method |",
           "|---|---|---|---|---|"]
    for m in [m for m in ORDER if m in acc] + sorted(set(acc) - set(ORDER)):
        per_seed = ", ".join(f"{100 * a:.2f}" for a in acc[m])
        out.append(f"| {m} | {per_seed} | {_pct(acc[m])} | {flops[m]:.3f} | "
                   f"{'-' if m == 'mixturegrowth' else _diff(mg, acc[m])} |")
    if "mg-orthogonal-beats-copy-trained" in claims:
        d = claims["mg-orthogonal-beats-copy-trained"]["details"]
        at = claims["mg-copy-collapses-at-growth"]["details"]
        out += ["", "| new-block coefficients | right after growth (%) | trained to the end (%) | orthogonal - this |",
                "|---|---|---|---|"]
        for name, final in (("orthogonal", d["orthogonal"]), ("random", d["random"]), ("copy", d["copy"])):
            out.append(f"| {name} | {_pct(at[name])} | {_pct(final)} | "
                       f"{'-' if name == 'orthogonal' else _diff(d['orthogonal'], final)} |")
    if "mg-official-template-init-same-verdicts" in claims:
        d = claims["mg-official-template-init-same-verdicts"]["details"]
        # by name: results.json stores the dict with sorted keys, not in the column order
        order = [d["verdicts"][k] for k in ("wo-fusion", "growth baselines", "large-match")]
        out += ["", "| template init | MixtureGrowth test accuracy (%) | verdicts (vs w/o fusion; vs best of Random/"
                "Net2Net; vs Large-Match) |", "|---|---|---|",
                f"| per-template (reparam default) | {_pct(d['per_template'])} | {'; '.join(v[0] for v in order)} |",
                f"| stacked (official code) | {_pct(d['stacked'])} | {'; '.join(v[1] for v in order)} |",
                "", f"stacked - per-template: {_diff(d['stacked'], d['per_template'])}"]
    return "\n".join(out)


def partial(out: Path, seeds: list[int]) -> str:
    """One row per cached job of a --full run (no statistics: seeds may be missing)."""
    from reparam.reproduce.claims import ReproduceContext
    from reparam.reproduce.mixturegrowth import job_cache_path, seed_jobs

    work = next((p / "cache" for p in (Path(f"{out}.partial"), out) if (p / "cache").is_dir()), None)
    if work is None:
        raise ValueError(f"no cache folder in {out}.partial or {out}")
    ctx = ReproduceContext(out_dir=out, quick=False, seed=0, threads=1, work_dir=work)
    rows = ["| seed | job | test accuracy (%) | FLOPs spent (X) | test accuracy right after growth (%) |",
            "|---|---|---|---|---|"]
    for seed in seeds:
        splits = ctx.load_data("mixturegrowth", seed)
        for job in seed_jobs(ctx, seed):
            path = job_cache_path(job, splits, work / "mixturegrowth-cache")
            if not path.exists():
                rows.append(f"| {seed} | {job.label} | not run yet | | |")
                continue
            r = json.loads(path.read_text())
            grown = {k: v for k, v in r["extra"].items() if "test_acc_at_growth" in k}
            at = ", ".join(f"{k.replace('grown_test_acc_at_growth', 'this init').replace('test_acc_at_growth_', '')}"
                           f" {100 * v:.2f}" for k, v in grown.items())
            rows.append(f"| {seed} | {job.label} | {100 * r['test_acc']:.2f} | {r['flops_norm']:.3f} | {at} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, nargs="?", help="a reproduce report's results.json")
    ap.add_argument("--partial", type=Path, help="a --full run's report folder (OUT), finished or not")
    ap.add_argument("--seeds", default="0,1,2", help="with --partial: comma-separated seeds (default 0,1,2)")
    args = ap.parse_args(argv)
    if (args.results is None) == (args.partial is None):
        print("error: give either a results.json or --partial OUT", file=sys.stderr)
        return 2
    try:
        if args.partial is not None:
            print(partial(args.partial, [int(x) for x in args.seeds.split(",")]))
            return 0
        print(tables(json.loads(args.results.read_text())))
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"error: cannot make the tables from {args.results}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
