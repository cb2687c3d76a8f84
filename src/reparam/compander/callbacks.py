"""Training-time behaviour of the compander, plugged into the shared Trainer.

`PsiDecay`: weight decay on w = Psi(v) for fixed WC (the decay of v itself is switched off through the
param groups). `WeightStatsCallback`: the Fig. 3/4 instrumentation, added to each epoch's log record.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from reparam.compander.parametrization import add_psi_decay_grad, compander_layers, psi_decay_penalty
from reparam.compander.stats import weight_stats
from reparam.core.errors import ReparamError
from reparam.train import Callback


class PsiDecay(Callback):
    """Decay on Psi(v): v.grad += wd * Psi(v) * Psi'(v) (mode "grad") or a loss (wd/2) sum Psi(v)^2 ("loss").

    Both are the same gradient; "grad" skips building an extra graph. wd defaults to the trainer's
    weight_decay, so the baseline and fixed WC use the same lambda with the same (lambda/2) convention.
    """

    def __init__(self, weight_decay: float | None = None, mode: str = "grad"):
        if mode not in ("grad", "loss"):
            raise ReparamError(f"PsiDecay mode {mode!r} not allowed; allowed: grad, loss")
        self.weight_decay = weight_decay
        self.mode = mode

    def _wd(self, trainer) -> float:
        return trainer.config.weight_decay if self.weight_decay is None else self.weight_decay

    def extra_loss(self, trainer, logits, x, y):
        if self.mode == "loss" and self._wd(trainer):
            return psi_decay_penalty(trainer.model, self._wd(trainer))
        return None

    def after_backward(self, trainer) -> None:
        if self.mode == "grad":
            add_psi_decay_grad(trainer.model, self._wd(trainer))


class WeightStatsCallback(Callback):
    """Adds per-layer weight percentiles, max |w| vs bound, near-zero fraction and (a, b) to each epoch.

    `check_every_step` also verifies max |w| <= bound after every optimizer step (costs one weight
    evaluation per step) and records the worst ratio max|w| / bound seen during the epoch.
    """

    def __init__(self, near_zero: float = 0.01, check_every_step: bool = False):
        self.near_zero = near_zero
        self.check_every_step = check_every_step
        self.initial: dict | None = None
        self._worst_ratio = 0.0

    def on_train_start(self, trainer) -> None:
        if self.initial is None:
            self.initial = weight_stats(trainer.model, self.near_zero)

    @torch.no_grad()
    def after_step(self, trainer) -> None:
        if not self.check_every_step:
            return
        for _, module, comp in compander_layers(trainer.model):
            bound = comp.bound()
            if math.isfinite(bound):
                self._worst_ratio = max(self._worst_ratio, float(module.weight.abs().max()) / bound)

    def on_epoch_end(self, trainer, epoch: int, record: dict[str, Any]) -> None:
        st = weight_stats(trainer.model, self.near_zero)
        record["wstats"] = st
        record["w_max_abs"] = st["max_abs"]
        record["w_near0"] = st["near0"]
        if self.check_every_step:
            record["w_worst_bound_ratio"] = self._worst_ratio
            self._worst_ratio = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"initial": self.initial}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.initial = state.get("initial")

    def history(self, records: list[dict]) -> list[dict]:
        """Epoch records with an epoch-0 record (the initial weights) in front, for percentile_plot."""
        head = [{"epoch": 0, "wstats": self.initial}] if self.initial else []
        return head + [r for r in records if "wstats" in r]
