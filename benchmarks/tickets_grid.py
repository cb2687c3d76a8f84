"""Run one seed of the robust-vs-natural ticket grid (resumable cache) and write its rows as JSON lines.

Usage: python benchmarks/tickets_grid.py WORK SEED [key=value ...]   (values parsed as JSON, e.g.
eps=[0,0.1] schemes='["omp"]'). `reparam tickets compare` runs the same code for several seeds.
"""

from __future__ import annotations

import json
import sys
from dataclasses import fields
from pathlib import Path

import torch

from reparam.experiments.tickets.grid import GridConfig, run_seed


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    work, seed = Path(argv[0]), int(argv[1])
    known = {f.name for f in fields(GridConfig)}
    overrides = {}
    for item in argv[2:]:
        k, v = item.split("=", 1)
        if k not in known:
            raise SystemExit(f"unknown grid option {k!r}; allowed: {', '.join(sorted(known))}")
        overrides[k] = json.loads(v)
    cfg = GridConfig(**overrides).check()
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(cfg.__dict__, indent=1))
    rows = run_seed(cfg, seed, work, progress=lambda m: print(m, flush=True))
    with open(work / f"rows_seed{seed}.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
