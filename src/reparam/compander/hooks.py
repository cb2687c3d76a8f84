"""Training-time behaviour of the compander as `reparam.train.Hook`s: one object for any training loop.

`PsiDecay`: weight decay on w = Psi(v) for fixed WC (the decay of v itself is switched off through
`param_groups`). In your own loop call `decay.before_step(step)` between `loss.backward()` and
`optimizer.step()`; reparam's Trainer takes the same object in `callbacks`.
`WeightStatsCallback`: the Fig. 3/4 instrumentation, added to each epoch's log record (a Hook too; its
`end_epoch` is called by the Trainer, or by your loop once per epoch).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from reparam.compander.parametrization import add_psi_decay_grad, compander_tensors, psi_decay_penalty
from reparam.compander.stats import weight_stats
from reparam.core.errors import ReparamError
from reparam.train.hooks import Hook

DECAY_HOOK_MODES = ("grad", "loss")


class PsiDecay(Hook):
    """Decay on Psi(v): v.grad += wd * Psi(v) * Psi'(v) (mode "grad") or a loss (wd/2) sum Psi(v)^2 ("loss").

    Both are the same gradient; "grad" skips building an extra graph. Give the same weight_decay as the
    optimizer's (the Trainer's `weight_decay`), so the baseline and fixed WC use the same lambda with the
    same (lambda/2) convention. `model` may be left out when the Trainer runs the hook (it binds its model).
    """

    def __init__(self, weight_decay: float, mode: str = "grad", model: torch.nn.Module | None = None):
        if mode not in DECAY_HOOK_MODES:
            raise ReparamError(f"PsiDecay mode {mode!r} not allowed; allowed: {', '.join(DECAY_HOOK_MODES)}")
        if not isinstance(weight_decay, (int, float)) or not math.isfinite(weight_decay) or weight_decay < 0:
            raise ReparamError(f"PsiDecay weight_decay must be a number >= 0, got {weight_decay!r}")
        self.weight_decay = weight_decay
        self.mode = mode
        self.model = model

    def _model(self) -> torch.nn.Module:
        if self.model is None:
            raise ReparamError("PsiDecay has no model: build it with model=... (or let reparam's Trainer bind "
                               "its model)")
        return self.model

    def extra_loss(self, logits, x, y):
        if self.mode == "loss" and self.weight_decay:
            return psi_decay_penalty(self._model(), self.weight_decay)
        return None

    def before_step(self, step: int | None = None) -> None:
        if self.mode == "grad":
            add_psi_decay_grad(self._model(), self.weight_decay)


class WeightStatsCallback(Hook):
    """Adds per-layer weight percentiles, max |w| vs bound, near-zero fraction and (a, b) to each epoch.

    `check_every_step` also verifies max |w| <= bound after every optimizer step (costs one weight
    evaluation per step) and records the worst ratio max|w| / bound seen during the epoch.
    """

    def __init__(self, near_zero: float = 0.01, check_every_step: bool = False,
                 model: torch.nn.Module | None = None):
        self.near_zero = near_zero
        self.check_every_step = check_every_step
        self.model = model
        self.initial: dict | None = None
        self._worst_ratio = 0.0

    def start(self, steps_done: int = 0) -> None:
        super().start(steps_done)
        if self.initial is None and self.model is not None:
            self.initial = weight_stats(self.model, self.near_zero)

    @torch.no_grad()
    def after_step(self, step: int | None = None) -> None:
        super().after_step(step)
        if not self.check_every_step or self.model is None:
            return
        for _, module, t, comp in compander_tensors(self.model):
            bound = comp.bound()
            if math.isfinite(bound):
                self._worst_ratio = max(self._worst_ratio, float(getattr(module, t).abs().max()) / bound)

    def end_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        st = weight_stats(self.model, self.near_zero)
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
