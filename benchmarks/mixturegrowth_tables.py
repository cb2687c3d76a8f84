"""MixtureGrowth's per-seed tables (paper Table 1 and Table 4 at this scale) from a reproduce report's
results.json, as Markdown: every number comes from the run that wrote the file, nothing is recomputed but the
paired statistics (scipy's paired t-test, as the report's verdicts).

    python benchmarks/mixturegrowth_tables.py docs/results/reproduce-full/results.json
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
        out += ["", "| template init | MixtureGrowth test accuracy (%) | verdicts (vs w/o fusion; vs best of Random/"
                "Net2Net; vs Large-Match) |", "|---|---|---|",
                f"| per-template (reparam default) | {_pct(d['per_template'])} | "
                f"{'; '.join(v[0] for v in d['verdicts'].values())} |",
                f"| stacked (official code) | {_pct(d['stacked'])} | "
                f"{'; '.join(v[1] for v in d['verdicts'].values())} |",
                "", f"stacked - per-template: {_diff(d['stacked'], d['per_template'])}"]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="a reproduce report's results.json")
    args = ap.parse_args(argv)
    try:
        print(tables(json.loads(args.results.read_text())))
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"error: cannot make the tables from {args.results}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
