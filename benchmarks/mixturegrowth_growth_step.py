"""Accuracy right at the growth step (Fig. 3b's first point) for each coefficient init and scale.

Trains network 1 (cached) and network 2 exactly as `reparam grow` does, then grows copies of the same
pre-growth model with every (coef_init, coef_scale) and measures test accuracy before any training.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/mixturegrowth_growth_step.py --seed 0 \
        --cache runs/mg/cache --out runs/mg/growth-step-s0.json
"""

from __future__ import annotations

import argparse
import json

import torch

from reparam.data import load_dataset
from reparam.experiments.mixturegrowth.pipeline import (
    GrowSettings,
    _acc,
    _fit,
    _member_coef_norm,
    _net1_model,
    _train_config,
    ensemble_acc,
    train_net1,
)
from reparam.mixturegrowth import grow, param_groups, set_member


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="wrn-10-1")
    ap.add_argument("--full-epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--scales", default="1.0,0.5,0.25,0.1")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    s = GrowSettings(model=args.model, full_epochs=args.full_epochs, seed=args.seed)
    splits = load_dataset("digits", seed=args.seed)
    net1, _ = train_net1(s, splits, args.cache)
    model = _net1_model(s, splits, net1)
    set_member(model, 1)
    _fit(model, splits, _train_config(s, args.full_epochs, s.lr, phase=12), param_groups(model, s.weight_decay))
    pre = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rows = {"seed": args.seed, "model": args.model, "ensemble_test_acc": ensemble_acc(model, splits.test),
            "coef_norm_members": _member_coef_norm(model), "at_growth": {}}
    scales = [float(x) for x in args.scales.split(",")]
    for init in ("orthogonal", "random", "copy", "zero"):
        for scale in (scales if init in ("orthogonal", "random") else [1.0]):
            m = _net1_model(s, splits, pre)
            grow(m, "vertical", init, coef_scale=scale, seed=args.seed)
            rows["at_growth"][f"{init}@{scale:g}"] = _acc(m, splits.test)
    print(json.dumps(rows))
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
