"""FLOPs accounting: per-forward MACs, the training-cost ledger, and the budget solver (paper §4, Table 2).

MACs are those of the Conv2d/Linear ops of one forward pass, from `reparam.metrics.count_macs` (BN, ReLU,
pooling and the template-mixing weight generation are not counted; the paper's fvcore count also ignores
BN and calls weight generation negligible). Building the model on the meta device makes this free even
for WRN-28-10. FLOPs = 2 x MACs.

Ledger convention (paper): the cost of a phase is epochs x N_train x (forward + backward) FLOPs, with
backward = 2 x forward for every phase, normalized by the target network trained for the full schedule
E; network 1 is assumed available and is not charged unless asked. Because the same factor applies to
every phase, the normalized cost is sum_p epochs_p * macs_p / (E * macs_target).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from reparam.core.errors import ReparamError
from reparam.metrics.counting import count_macs


def forward_macs(model: nn.Module, input_shape: tuple[int, ...], device: str | torch.device | None = None,
                 **forward_kwargs) -> int:
    """Multiply-accumulates of one forward pass for ONE input of shape [C, H, W] (batch size 1).

    Conv and Linear only, counted by reparam's one counter (`reparam.metrics.count_macs`), which leaves
    the template-mixing weight generation out and works on the meta device.
    """
    return count_macs(model, (1, *input_shape), ops="conv+linear", device=device, **forward_kwargs)


@dataclass
class Phase:
    name: str
    epochs: float
    macs: int                 # forward MACs per image of the network trained in this phase
    charged: bool = True


@dataclass
class Ledger:
    phases: list[Phase]
    target_macs: int
    full_epochs: int
    n_train: int = 1
    normalized: float = 0.0                  # FLOPs spent / target's full-schedule FLOPs
    per_phase: dict[str, float] = field(default_factory=dict)
    train_flops: float = 0.0                 # absolute: 3 x 2 x MACs x images, charged phases only

    def to_dict(self) -> dict:
        d = asdict(self)
        d["phases"] = [asdict(p) for p in self.phases]
        return d


def ledger(phases: list[Phase], target_macs: int, full_epochs: int, n_train: int = 1,
           charge_net1: bool = False) -> Ledger:
    """Normalized training FLOPs of a run (phase named 'net1' is free unless charge_net1)."""
    if target_macs <= 0 or full_epochs <= 0:
        raise ReparamError("ledger needs a positive target MAC count and a positive full schedule")
    ref = full_epochs * target_macs
    led = Ledger(phases=phases, target_macs=target_macs, full_epochs=full_epochs, n_train=n_train)
    for p in phases:
        charged = p.charged and (p.name != "net1" or charge_net1)
        share = p.epochs * p.macs / ref if charged else 0.0
        led.per_phase[p.name] = share
        led.normalized += share
        if charged:
            led.train_flops += 3 * 2 * p.macs * p.epochs * n_train
    return led


def epochs_of_steps(steps: int, n_train: int, batch_size: int) -> float:
    """Epochs' worth of images that `steps` optimizer steps see (the last batch of an epoch is smaller)."""
    per_epoch = math.ceil(n_train / batch_size)
    full, rest = divmod(int(steps), per_epoch)
    return full + min(rest * batch_size, n_train) / n_train


def steps_for(epochs: float, n_train: int, batch_size: int) -> int:
    """The step count whose images come nearest to `epochs` epochs (at least one step)."""
    per_epoch = math.ceil(n_train / batch_size)
    best = max(1, int(epochs * per_epoch))
    return min((c for c in (best - 1, best, best + 1) if c >= 1),
               key=lambda c: abs(epochs_of_steps(c, n_train, batch_size) - epochs))


@dataclass
class BudgetPlan:
    budget: float
    fraction: float
    ratio: float              # small / target forward MACs
    full_epochs: int
    net2_epochs: float        # epochs' worth of images (whole epochs unless planned in steps)
    grown_epochs: float
    spent: float              # normalized FLOPs of the plan after rounding (to epochs or to steps)
    net2_steps: int | None = None    # set when planned in optimizer steps
    grown_steps: int | None = None


def solve_budget(budget: float, fraction: float, ratio: float, full_epochs: int,
                 n_train: int | None = None, batch_size: int | None = None) -> BudgetPlan:
    """Epochs of network 2 (x * E) and of the grown network ((budget - x * r) * E).

    Without n_train/batch_size the plan is in whole epochs (the paper's, where E = 200 makes rounding
    negligible). With them it is in optimizer steps, so the spend matches the budget to within half a step
    of the grown network: at E = 10 epochs, whole epochs can miss a 0.45X budget by 0.05X.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ReparamError(f"fraction of the schedule spent on network 2 must be in [0, 1], got {fraction}")
    if not 0.0 < ratio <= 1.0:
        raise ReparamError(f"small/target FLOPs ratio must be in (0, 1], got {ratio}")
    if full_epochs < 1:
        raise ReparamError(f"full schedule must be >= 1 epoch, got {full_epochs}")
    net2_cost = fraction * ratio
    if budget <= net2_cost + 1e-12:
        raise ReparamError(
            f"budget {budget}X is not more than what network 2 already spends ({fraction} x {ratio:.4f} = "
            f"{net2_cost:.4f}X); raise --budget above {net2_cost:.4f} or lower --fraction")
    if n_train is None or batch_size is None:
        net2 = int(round(fraction * full_epochs))
        grown = int(round((budget - net2_cost) * full_epochs))
        if grown < 1:
            left = (budget - net2_cost) * full_epochs
            raise ReparamError(f"budget {budget}X leaves {left:.2f} epochs for the grown network at "
                               f"{full_epochs} epochs per full schedule; raise --budget or --full-epochs")
        return BudgetPlan(budget, fraction, ratio, full_epochs, net2, grown, (net2 * ratio + grown) / full_epochs)
    net2_steps = steps_for(fraction * full_epochs, n_train, batch_size) if fraction > 0 else 0
    net2 = epochs_of_steps(net2_steps, n_train, batch_size)
    left = budget * full_epochs - net2 * ratio
    if left <= 0:
        raise ReparamError(f"budget {budget}X leaves nothing for the grown network after network 2; raise "
                           "--budget or lower --fraction")
    grown_steps = steps_for(left, n_train, batch_size)
    grown = epochs_of_steps(grown_steps, n_train, batch_size)
    return BudgetPlan(budget, fraction, ratio, full_epochs, net2, grown, (net2 * ratio + grown) / full_epochs,
                      net2_steps, grown_steps)


def match_epochs(budget: float, ratio: float, full_epochs: int) -> int:
    """Epochs a network with FLOPs ratio `ratio` may train within `budget` (Large/Small Match)."""
    return max(1, int(round(budget / ratio * full_epochs)))


def match_steps(budget: float, ratio: float, full_epochs: int, n_train: int, batch_size: int) -> int:
    """Optimizer steps a network with FLOPs ratio `ratio` may take within `budget` (equal FLOPs to a step)."""
    return steps_for(budget / ratio * full_epochs, n_train, batch_size)
