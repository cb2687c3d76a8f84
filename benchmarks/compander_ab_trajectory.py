"""Print the last layer's learnable (a, b) every few optimizer steps (the diagnostic behind results §6).

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/compander_ab_trajectory.py wc-fine:positivity=abs --epochs 6
"""

from __future__ import annotations

import argparse

import torch

from reparam.compander import learned_scales
from reparam.experiments.compander.runs import DataSpec, load
from reparam.experiments.compander.variants import parse_variant, setup_variant
from reparam.train import Callback, TrainConfig, Trainer


class PrintScales(Callback):
    def __init__(self, layer: str, every: int):
        self.layer, self.every = layer, every

    def after_step(self, trainer) -> None:
        if trainer.global_step % self.every == 0 or trainer.global_step < 6:
            a, b = learned_scales(trainer.model)[self.layer]
            print(f"step {trainer.global_step:4d}  {self.layer}: a={a:.3f} b={b:.3f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("variant", nargs="?", default="wc-fine")
    p.add_argument("--train-subset", type=int, default=300)
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layer", default="head")
    p.add_argument("--every", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    splits, model = load(DataSpec(train_subset=args.train_subset, model_options={"width": args.width}), args.seed)
    # the compare protocol's first 6 epochs (milestones of a 30-epoch run)
    cfg = TrainConfig(epochs=args.epochs, batch_size=64, lr=0.1, schedule="multistep", milestones=(9, 18, 24),
                      gamma=0.2, weight_decay=5e-4, augment="shift1", seed=args.seed, progress=False,
                      checkpoint=False)
    s = setup_variant(model, parse_variant(args.variant), cfg)
    res = Trainer(model, splits, s.config, callbacks=[*s.callbacks, PrintScales(args.layer, args.every)],
                  param_groups=s.param_groups, optimizer=s.optimizer).fit()
    print("val acc per epoch:", [round(h["val_acc"], 3) for h in res.history])


if __name__ == "__main__":
    main()
