"""MixtureGrowth cost benchmark: MACs, stored parameters, growth time, and the latency of generating
weights from templates (template model) vs the folded plain model.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/mixturegrowth_cost.py --out runs/bench-mg.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from reparam.metrics import count_params, latency
from reparam.mixturegrowth import apply, build_wrn, fold, grow, set_member
from reparam.mixturegrowth.flops import forward_macs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name, classes, ch, size in (("wrn-28-10", 100, 3, 32), ("wrn-16-4", 10, 1, 8), ("wrn-10-2", 10, 1, 8)):
        with torch.device("meta"):
            big = build_wrn(name, num_classes=classes, in_channels=ch)
            small = build_wrn(name, num_classes=classes, in_channels=ch, half=True)
            tm = build_wrn(name, num_classes=classes, in_channels=ch)
            apply(tm)
        row = {"model": name, "input": [ch, size, size],
               "macs_target": forward_macs(big, (ch, size, size)),
               "macs_small": forward_macs(small, (ch, size, size)),
               "params_target": count_params(big), "params_small": count_params(small),
               "params_template_model": count_params(tm)}
        row["ratio"] = row["macs_small"] / row["macs_target"]
        if size <= 8:
            torch.manual_seed(0)
            m = build_wrn(name, num_classes=classes, in_channels=ch)
            apply(m)
            x = torch.randn(args.batch, ch, size, size)
            m.eval()
            set_member(m, 0)
            row["latency_member_s"] = latency(m, x)
            t0 = time.perf_counter()
            grow(m)
            row["grow_seconds"] = time.perf_counter() - t0
            m.eval()
            row["latency_grown_template_s"] = latency(m, x)
            fold(m)
            m.eval()
            row["latency_grown_folded_s"] = latency(m, x)
        rows.append(row)
        print(json.dumps(row))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
