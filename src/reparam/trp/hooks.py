"""TRP's training-time behaviour as one Hook (paper eq. 1 and eq. 5), for reparam's Trainer or any loop.

Projection: with the global counter, step t (0-based) must see T_z = D(W_t) when t % m == 0. `trp.apply`
projects once (step 0 starts from a low-rank model) and the hook projects right after every optimizer step
whose count t + 1 is a multiple of m (`after_step`), which gives the same trajectory as projecting just
before step t + 1's forward pass, and means that a model evaluated between steps with m = 1 is exactly
low-rank. With counter='epoch' (official code's per-epoch batch_idx) the projection runs in
`before_forward` when the batch index within the epoch is a multiple of m (`end_epoch` resets it). SGD
momentum buffers are left untouched.

Nuclear sub-gradient: lambda * reshape^-1(U_r V_r^T) is added to the weight's .grad in `before_step`, on
every step (paper) or only after a projection with r = the energy rank (official cifar-TRP.py).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from reparam.core.errors import ReparamError
from reparam.train.hooks import Hook
from reparam.trp.config import Config
from reparam.trp.project import low_rank, nuclear_subgradient


class TRPHook(Hook):
    """Projection every m steps and the nuclear sub-gradient on `targets` [(name, Conv2d or Linear)]."""

    def __init__(self, targets: list[tuple[str, nn.Module]], config: Config):
        self.targets = list(targets)
        self.config = config
        self.rule = config.rule
        self.batch_in_epoch = 0
        self.projections = 0
        self.last_ranks: dict[str, int] = {}
        self.history: list[dict[str, Any]] = []    # one row per epoch: epoch, step, ranks (row 0: the start)
        self._pending: dict[str, torch.Tensor] = {}
        self.projected_at_start = False            # trp.apply already made step 0's projection

    # -- the operator ---------------------------------------------------------------------------
    @torch.no_grad()
    def project(self) -> dict[str, int]:
        """One TRP iteration's D(.) on every target (or, without projection, just the ranks and sub)."""
        cfg = self.config
        code_nuclear = cfg.nuclear > 0 and cfg.nuclear_when == "projection"
        ranks = {}
        for name, layer in self.targets:
            # TRP shares its tensors with no other method (apply claims them), so the weight is the
            # parameter itself; a parametrization registered since would make copy_ write a computed value
            if parametrize.is_parametrized(layer, "weight") or not isinstance(layer.weight, nn.Parameter):
                raise ReparamError(f"TRP cannot project {name}.weight: it is no longer a plain parameter "
                                   "(something was put on it after trp.apply)")
            new, rk = low_rank(layer.weight, cfg.scheme, self.rule)
            if code_nuclear:
                # from the same SVD as the projection (the code's `sub`), so r = k exactly
                rank = "full" if cfg.nuclear_rank == "full" else rk
                self._pending[name] = nuclear_subgradient(layer.weight, cfg.scheme, rank)
            if cfg.project:
                layer.weight.copy_(new)
            ranks[name] = max(rk)
        self.projections += 1
        self.last_ranks = ranks
        return ranks

    def project_at_start(self) -> None:
        """Step 0's projection (global counter), recorded as history row 0; `trp.apply` calls it."""
        self.project()
        self.history.append({"epoch": 0, "step": 0, "ranks": dict(self.last_ranks)})
        self.projected_at_start = True

    def _due(self, t: int) -> bool:
        return t % self.config.period == 0

    # -- the Hook interface ---------------------------------------------------------------------
    def start(self, steps_done: int = 0) -> None:
        super().start(steps_done)
        if self.config.counter == "global" and steps_done == 0 and not self.projected_at_start:
            self.project_at_start()

    def before_forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.counter == "epoch" and self._due(self.batch_in_epoch):
            self.project()
        return x, y

    def before_step(self, step: int | None = None) -> None:
        cfg = self.config
        if cfg.nuclear <= 0:
            return
        if cfg.nuclear_when == "every":
            rank = "full" if cfg.nuclear_rank == "full" else self.rule
            for _, layer in self.targets:
                if layer.weight.grad is not None:
                    sub = nuclear_subgradient(layer.weight, cfg.scheme, rank)
                    layer.weight.grad.add_(sub, alpha=cfg.nuclear)
        else:
            for name, layer in self.targets:
                sub = self._pending.pop(name, None)
                if sub is not None and layer.weight.grad is not None:
                    layer.weight.grad.add_(sub, alpha=cfg.nuclear)
            self._pending.clear()

    def after_step(self, step: int | None = None) -> None:
        super().after_step(step)
        self.batch_in_epoch += 1
        if self.config.counter == "global" and self._due(self.steps_done):
            self.project()

    def end_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        self.batch_in_epoch = 0
        if self.last_ranks:
            record["trp_mean_rank"] = sum(self.last_ranks.values()) / len(self.last_ranks)
            record["trp_ranks"] = dict(self.last_ranks)
        self.history.append({"epoch": epoch, "step": self.steps_done, "ranks": dict(self.last_ranks)})

    def state_dict(self) -> dict[str, Any]:
        return {"projections": self.projections, "last_ranks": self.last_ranks, "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.projections = int(state.get("projections", 0))
        self.last_ranks = dict(state.get("last_ranks", {}))
        self.history = list(state.get("history", []))
        self.batch_in_epoch = 0


class TRPCallback(TRPHook):
    """Deprecated (one release): the hook built from (targets, config) without `trp.apply`.

    It neither tags the layers nor projects at once: its first projection runs when training starts
    (`start(0)`), as the old callback's did. Use `trp.apply(model, config).hooks` instead.
    """

    def __init__(self, targets: list[tuple[str, nn.Module]], config: Config):
        warnings.warn("TRPCallback is deprecated; use reparam.trp.apply(model, config) and pass handle.hooks to "
                      "the Trainer (or call them in your loop)", DeprecationWarning, stacklevel=2)
        super().__init__(targets, config)
