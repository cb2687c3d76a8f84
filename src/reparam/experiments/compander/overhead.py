"""Training-step overhead of a variant vs the plain network, robust to a shared, noisy CPU.

Variants are timed in interleaved rounds (plain, wc, ..., plain, wc, ...) so that load changes hit all of
them alike; the overhead is the median over rounds of (variant time / plain time in the same round).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence

import torch
import torch.nn as nn

from reparam.experiments.compander.variants import parse_variant, setup_variant
from reparam.train import TrainConfig, Trainer


def _step_time(trainer: Trainer, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    model, opt = trainer.model, trainer.optimizer
    model.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for cb in trainer.callbacks:
            cb.after_backward(trainer)
        opt.step()
    return (time.perf_counter() - t0) / steps


def step_overhead(base: nn.Module, splits, variants: Sequence[str] = ("plain", "wc"), rounds: int = 7,
                  steps: int = 10, batch_size: int = 64) -> dict:
    """{variant: {median_step_s, median_ratio, ratios}}; the first variant is the reference."""
    x, y = splits.train.tensors[0][:batch_size], splits.train.tensors[1][:batch_size]
    cfg = TrainConfig(epochs=1, batch_size=batch_size, lr=0.01, progress=False, checkpoint=False)
    trainers = {}
    for v in variants:
        model = copy.deepcopy(base)
        s = setup_variant(model, parse_variant(v), cfg)
        trainers[v] = Trainer(model, splits, s.config, callbacks=s.callbacks, param_groups=s.param_groups,
                              optimizer=s.optimizer)
        _step_time(trainers[v], x, y, 2)  # warm-up
    times: dict[str, list[float]] = {v: [] for v in trainers}
    for _ in range(rounds):
        for v, tr in trainers.items():
            times[v].append(_step_time(tr, x, y, steps))
    ref = variants[0]
    out = {}
    for v in trainers:
        ratios = [t / r for t, r in zip(times[v], times[ref])]
        out[v] = {"median_step_s": statistics.median(times[v]), "median_ratio": statistics.median(ratios),
                  "ratios": ratios}
    out["_models"] = {v: tr.model for v, tr in trainers.items()}
    return out
