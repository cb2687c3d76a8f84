"""Where the time of a trained and a decomposed TRP model goes: per-layer time shares, one process.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/trp_layer_times.py runs/trp-spatial --size 32 \
        --batches 1,128 --layouts nchw,channels_last --rounds 7

RUN is a `reparam trp train` folder. The trained model is split with the latency plan for these batches, this
input size and these layouts (per-machine cost table, as `reparam trp train` does), both models get their
BatchNorm folded into the convs (reparam.trp.export.fold_batchnorm, as every runtime does), and each leaf
module is timed with hooks (reparam.trp.export.module_times; thread CPU time, median of `rounds` passes, both
models alternating). Layers are grouped: the targets the plan split, the targets it kept whole, the stem conv,
the strided convs, ReLU, and the rest (residual additions and shortcuts, input normalisation, pooling, the FC
layer). Prints per group: ms before / after and the share of the trained model's time, then the bound this
puts on the model's speed-up: 1 / (rest share + split share / split speed-up).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn as nn

from reparam.data import load_dataset
from reparam.trp.decompose import decompose_model
from reparam.trp.export import fold_batchnorm, module_times
from reparam.trp.flops import conv_macs
from reparam.trp.io import load_model_file
from reparam.trp.latency import CostTable
from reparam.trp.plan import make_plan
from reparam.trp.project import select_targets

GROUPS = ("split targets", "kept targets", "stem conv", "strided convs", "relu", "rest")


def group_of(name: str, module: nn.Module, split: set[str], targets: set[str], stem: str) -> str:
    layer = name.rsplit(".", 1)[0] if name.rsplit(".", 1)[0] in split else name   # a split pair's convs
    if layer in split:
        return "split targets"
    if isinstance(module, nn.Conv2d):
        if name == stem:
            return "stem conv"
        return "kept targets" if name in targets else "strided convs"
    return "relu" if isinstance(module, nn.ReLU) else "rest"


def grouped(times: dict[str, float], model: nn.Module, split, targets, stem) -> dict[str, float]:
    mods = dict(model.named_modules())
    out = dict.fromkeys(GROUPS, 0.0)
    for n, t in times.items():
        if n:
            out[group_of(n, mods[n], split, targets, stem)] += t
    out["rest"] += times[""] - sum(t for n, t in times.items() if n)    # time outside the leaves
    out["total"] = times[""]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batches", default="1,128")
    ap.add_argument("--layouts", default="nchw,channels_last")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--cost-table", default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    batches = tuple(int(b) for b in a.batches.split(","))
    layouts = tuple(a.layouts.split(","))
    run = Path(a.run)
    model, _ = load_model_file(run / "model.safetensors")
    model.eval()
    meta = json.loads((run / "metrics.json").read_text())
    splits = load_dataset(meta["dataset"], seed=int(meta["seed"]))
    shape = (int(splits.in_channels), a.size, a.size)
    targets = select_targets(model)
    ranks, rows = make_plan(model, targets, meta["scheme"], meta["decompose_rule"], input_shape=shape,
                            plan="latency", batches=batches, layouts=layouts, table=CostTable(a.cost_table))
    small, plans = decompose_model(model, meta["scheme"], ranks)
    small.eval()
    split = {p.name for p in plans if p.decompose}
    tnames = {r.layer for r in rows if r.reason != "stride != 1"}
    stem = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    fl = conv_macs(model, shape) / conv_macs(small, shape)
    layout = rows[0].layout or layouts[0]
    print(f"{run.name}: plan for {a.size}x{a.size}, batches {batches}, layout {layout}: {len(split)}/{len(rows)} "
          f"targets split, conv-FLOPs speed-up {fl:.2f}x")
    f_model, f_small = fold_batchnorm(model)[0], fold_batchnorm(small)[0]
    out = []
    for lay in layouts:
        fm = f_model.to(memory_format=torch.channels_last) if lay == "channels_last" else f_model
        fs = f_small.to(memory_format=torch.channels_last) if lay == "channels_last" else f_small
        for b in batches:
            x = torch.rand((b, *shape))
            if lay == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            acc = {"before": [], "after": []}
            for _ in range(a.rounds):       # alternate the two models, one pass each per round
                acc["before"].append(module_times(fm, x, rounds=1))
                acc["after"].append(module_times(fs, x, rounds=1))
            med = {w: {n: sorted(r[n] for r in v)[len(v) // 2] for n in v[0]} for w, v in acc.items()}
            g_b = grouped(med["before"], fm, split, tnames, stem)
            g_a = grouped(med["after"], fs, split, tnames, stem)
            tot = g_b["total"]
            print(f"\n{lay} batch {b}: model {1e3 * tot:.2f} -> {1e3 * g_a['total']:.2f} ms "
                  f"({tot / g_a['total']:.2f}x, hooks on)")
            print("| group | ms before | ms after | share of before | speed-up |")
            print("|---|---|---|---|---|")
            for g in GROUPS:
                sp = g_b[g] / g_a[g] if g_a[g] > 0 else float("nan")
                print(f"| {g} | {1e3 * g_b[g]:.2f} | {1e3 * g_a[g]:.2f} | {g_b[g] / tot:.1%} | {sp:.2f}x |")
            p = g_b["split targets"] / tot
            s = g_b["split targets"] / max(1e-12, g_a["split targets"])
            print(f"bound if only the split targets changed: 1 / ({1 - p:.2f} + {p:.2f} / {s:.2f}) = "
                  f"{1 / ((1 - p) + p / s):.2f}x; if the rest took no time and splits kept their speed-up: "
                  f"{s:.2f}x")
            out.append({"layout": lay, "batch": b, "before": g_b, "after": g_a, "flops_speedup": fl,
                        "split": len(split)})
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
