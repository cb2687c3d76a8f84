"""Paired comparisons of a `reparam adapt sweep` (same target, same seed): test-accuracy differences in
percentage points, wins/ties/losses, paired t-test p (reparam.metrics.stats.paired), as a markdown table.

    python benchmarks/adapters_paired.py SWEEP_DIR [SWEEP_DIR ...]

Each SWEEP_DIR holds the sweep's results.json. A pair is listed when both of its labels were run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from reparam.metrics.stats import paired

PAIRS = [("nola:200", "linear"), ("nola:200", "bitfit"), ("nola:200", "lora:1"), ("nola:800", "lora:1"),
         ("nola:800", "lora:4"), ("pranc:200", "nola:200"), ("pranc:800", "nola:800"), ("nola:800", "full")]


def rows_of(folder: Path) -> list[dict]:
    return json.loads((folder / "results.json").read_text())["rows"]


def table(rows: list[dict]) -> str:
    by = {(r["dataset"], r["label"], r["seed"]): r for r in rows}
    out = ["| target | a | b | numbers a / b | a − b per seed (pp) | mean ± std (pp) | W/T/L | p (paired t) |",
           "|---|---|---|---:|---|---:|---:|---:|"]
    for data in dict.fromkeys(r["dataset"] for r in rows):
        for a, b in PAIRS:
            seeds = sorted(s for (d, lab, s) in by if d == data and lab == a and (d, b, s) in by)
            if not seeds:
                continue
            xa = [100 * by[(data, a, s)]["test_acc"] for s in seeds]
            xb = [100 * by[(data, b, s)]["test_acc"] for s in seeds]
            p = paired(xa, xb)
            na, nb = by[(data, a, seeds[0])]["params_stored"], by[(data, b, seeds[0])]["params_stored"]
            pv = "n/a" if p["p"] is None else f"{p['p']:.3f}"
            out.append(f"| {data} | {a} | {b} | {na:,} / {nb:,} | {', '.join(f'{d:+.1f}' for d in p['diffs'])} | "
                       f"{p['mean']:+.1f} ± {p['std']:.1f} | {p['wins']}/{p['ties']}/{p['losses']} | {pv} |")
    return "\n".join(out)


if __name__ == "__main__":
    rows = [r for arg in sys.argv[1:] for r in rows_of(Path(arg))]
    print(table(rows))
