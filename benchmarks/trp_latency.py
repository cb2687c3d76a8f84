"""CPU latency of trained vs decomposed TRP models, re-measured apart from training (1 thread, median).

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/trp_latency.py runs/trp/trp-nc-s1 runs/trp/trp-vh-s1 \
        --sizes 8,32 --batches 1,128 --repeats 21

Reads OUT/model.safetensors and OUT/decomposed.safetensors of `reparam trp train` runs and prints a
markdown table: conv-FLOPs speed-up (paper's count) at each input size beside the measured speed-up.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from reparam.experiments.trp.report import measure_latency
from reparam.trp.flops import conv_macs
from reparam.trp.io import load_model_file


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--sizes", default="8,32")
    ap.add_argument("--batches", default="1,128")
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--json", default=None, help="also write the rows here")
    a = ap.parse_args()
    torch.set_num_threads(1)
    sizes = [int(s) for s in a.sizes.split(",")]
    batches = tuple(int(b) for b in a.batches.split(","))
    rows = []
    print("| run | input | conv-FLOPs speed-up | " + " | ".join(
        f"b{b} ms before / after | b{b} speed-up" for b in batches) + " |")
    print("|---|---|---|" + "---|---|" * len(batches))
    for run in a.runs:
        original, header = load_model_file(Path(run) / "model.safetensors")
        small, _ = load_model_file(Path(run) / "decomposed.safetensors")
        c = header["model_spec"]["in_channels"]
        for size in sizes:
            shape = (c, size, size)
            fl = conv_macs(original, shape) / conv_macs(small, shape)
            m = measure_latency(original, small, shape, batches, a.repeats)
            rows.append({"run": run, "size": size, "flops_speedup": fl, **m})
            cells = " | ".join(f"{m[f'latency_b{b}_before_ms']:.2f} / {m[f'latency_b{b}_after_ms']:.2f} | "
                               f"{m[f'latency_speedup_b{b}']:.2f}×" for b in batches)
            print(f"| {Path(run).name} | {size}x{size} | {fl:.2f}× | {cells} |", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
