"""Training-step overhead of the compander (and WN, PP) vs the plain network, and inference after folding.

Timing on a shared CPU is noisy, so variants are measured in interleaved rounds (plain, wc, ..., plain, wc,
...) and the reported overhead is the median over rounds of (variant time / plain time in the same round).

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/compander_overhead.py --out runs/compander/overhead.json
"""

from __future__ import annotations

import argparse
import copy
import json

import torch

from reparam.data import load_dataset
from reparam.experiments.compander.overhead import step_overhead
from reparam.metrics import count_flops, latency
from reparam.models import build_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="cnn")
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--variants", default="plain,wc,wc-fine,wn,pp")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    splits = load_dataset("digits", seed=0)
    torch.manual_seed(0)
    base = build_model(args.model, num_classes=10, in_channels=1, image_size=splits.image_size,
                       mean=splits.mean, std=splits.std, width=args.width)
    res = step_overhead(base, splits, args.variants.split(","), rounds=args.rounds, steps=args.steps,
                        batch_size=args.batch_size)
    models = res.pop("_models")
    ref = args.variants.split(",")[0]
    result = {"setting": f"{args.model} width {args.width}, digits batch {args.batch_size}, 1 thread, "
                         f"{args.rounds} interleaved rounds x {args.steps} steps", "variants": {}}
    for v, r in res.items():
        result["variants"][v] = {"median_step_s": r["median_step_s"], "median_ratio_vs_" + ref: r["median_ratio"],
                                 "ratios": r["ratios"]}
    # inference: folded WC vs plain (same architecture, so the same FLOPs and ~the same latency)
    from reparam.compander import fold

    wc = fold(copy.deepcopy(models["wc"])).eval() if "wc" in models else None
    xb = splits.test.tensors[0][:256]
    plain = copy.deepcopy(base).eval()
    if wc is not None:
        result["inference"] = {
            "flops_plain": count_flops(plain, (1, *xb.shape[1:])), "flops_folded": count_flops(wc, (1, *xb.shape[1:])),
            "latency_plain_s": latency(plain, xb, repeats=20), "latency_folded_s": latency(wc, xb, repeats=20),
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        from reparam.core.fileformat import atomic_write_text

        atomic_write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
