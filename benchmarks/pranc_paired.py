"""Materialized PRANC vs the official algorithm, measured in ONE process with alternating steps.

pranc_bench.py runs each configuration in its own process (for per-process peak RSS); on a shared,
noisy machine the step times of two processes run minutes apart differ by more than the effect being
measured. Here both implementations live in the same process and their steps alternate (A B A B ...),
so the machine's load hits both alike; the ratio reported is the median of the per-round ratios
(materialized / reference), with its interquartile range.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/pranc_paired.py --models lenet5,resnet20 \
        --ks 1000,10000 --rounds 30 --out runs/pranc/paired.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def reference_step(model: torch.nn.Module, k: int):
    """UCDvision/PRANC's loop: basis in memory; grad alpha = B g; theta = alpha B copied into the net."""
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    params = [p for m in layers for p in (m.weight, m.bias) if p is not None]
    d = sum(p.numel() for p in params)
    basis = torch.rand(k, d) * 0.1 - 0.05
    alpha = torch.zeros(k, requires_grad=True)
    with torch.no_grad():
        alpha[0] = 1
    others = [p for p in model.parameters() if all(p is not q for q in params)]
    opt = torch.optim.Adam([alpha] + others, 1e-3)

    def load(theta):
        off = 0
        with torch.no_grad():
            for p in params:
                p.copy_(theta[off:off + p.numel()].view_as(p))
                off += p.numel()

    load(alpha.detach() @ basis)

    def step(x, y):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        for p in params:
            p.grad = None
        loss.backward()
        g = torch.cat([p.grad.reshape(-1) for p in params])
        alpha.grad = basis @ g
        opt.step()
        load(alpha.detach() @ basis)
    return step


def pranc_step(model: torch.nn.Module, k: int):
    from reparam.pranc import PrancConfig, apply_pranc

    apply_pranc(model, PrancConfig(k=k, mode="materialized"))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 1e-3)

    def step(x, y):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def paired(model_name: str, k: int, rounds: int, batch: int) -> dict:
    from reparam.models import build_model

    torch.manual_seed(0)
    make = lambda: build_model(model_name, num_classes=10, in_channels=1, image_size=(28, 28))  # noqa: E731
    steps = {"reference": reference_step(make(), k), "materialized": pranc_step(make(), k)}
    x, y = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    for s in steps.values():      # warm-up (allocator, first-call dispatch)
        s(x, y)
    times: dict[str, list[float]] = {n: [] for n in steps}
    for r in range(rounds):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))   # neither always goes first
        for name in order:
            t = time.perf_counter()
            steps[name](x, y)
            times[name].append(time.perf_counter() - t)
    ratios = sorted(m / r for m, r in zip(times["materialized"], times["reference"]))
    q = statistics.quantiles(ratios, n=4)
    return {"model": model_name, "k": k, "rounds": rounds, "batch": batch,
            "reference_median_s": statistics.median(times["reference"]),
            "materialized_median_s": statistics.median(times["materialized"]),
            "ratio_median": statistics.median(ratios), "ratio_q1": q[0], "ratio_q3": q[2],
            "rounds_materialized_faster": sum(x < 1 for x in ratios)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet5,resnet20")
    ap.add_argument("--ks", default="1000,10000")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-basis-gb", type=float, default=4.0, help="skip a (model, k) whose basis is larger")
    ap.add_argument("--out", default="runs/pranc/paired.json")
    a = ap.parse_args()
    torch.set_num_threads(1)
    d_of = {"lenet5": 61706, "resnet20": 269722}
    rows = []
    print(f"{'model':9} {'k':>6} {'ref s':>8} {'mat s':>8} {'mat/ref median [IQR]':>24} {'mat faster':>11}")
    for m in a.models.split(","):
        for k in map(int, a.ks.split(",")):
            if k * d_of.get(m, 1e5) * 4 / 1e9 > a.max_basis_gb:
                print(f"{m:9} {k:>6} skipped: basis above {a.max_basis_gb} GB")
                continue
            r = paired(m, k, a.rounds, a.batch)
            rows.append(r)
            print(f"{m:9} {k:>6} {r['reference_median_s']:>8.3f} {r['materialized_median_s']:>8.3f} "
                  f"{r['ratio_median']:>8.3f} [{r['ratio_q1']:.3f}, {r['ratio_q3']:.3f}] "
                  f"{r['rounds_materialized_faster']:>5}/{r['rounds']}", flush=True)
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
