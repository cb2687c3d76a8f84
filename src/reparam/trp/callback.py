"""TRP's training-time behaviour as a trainer callback (paper eq. 1 and eq. 5).

Projection: with the global counter, step t (0-based) must see T_z = D(W_t) when t % m == 0. The callback
projects right after the optimizer step that ends with trainer.global_step == t (and once before the first
step), which gives the same trajectory as projecting just before step t's forward pass, and means that a
model evaluated between steps with m = 1 is exactly low-rank. With counter='epoch' (official code's
per-epoch batch_idx) the projection runs in before_forward. SGD momentum buffers are left untouched.

Nuclear sub-gradient: lambda * reshape^-1(U_r V_r^T) is added to the weight's .grad after backward, on every
step (paper) or only on projection steps with r = the energy rank (official cifar-TRP.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from reparam.train import Callback
from reparam.trp.config import TRPConfig
from reparam.trp.project import low_rank, nuclear_subgradient


class TRPCallback(Callback):
    def __init__(self, targets: list[tuple[str, nn.Conv2d]], config: TRPConfig):
        self.targets = list(targets)
        self.config = config
        self.rule = config.rule
        self.batch_in_epoch = 0
        self.projections = 0
        self.last_ranks: dict[str, int] = {}
        self.history: list[dict[str, Any]] = []    # one row per epoch: epoch, step, ranks
        self._pending: dict[str, torch.Tensor] = {}

    # -- the operator ---------------------------------------------------------------------------
    @torch.no_grad()
    def project(self) -> dict[str, int]:
        """One TRP iteration's D(.) on every target (or, without projection, just the ranks and sub)."""
        cfg = self.config
        code_nuclear = cfg.nuclear > 0 and cfg.nuclear_when == "projection"
        ranks = {}
        for name, conv in self.targets:
            new, rk = low_rank(conv.weight, cfg.scheme, self.rule)
            if code_nuclear:
                # from the same SVD as the projection (the code's `sub`), so r = k exactly
                rank = "full" if cfg.nuclear_rank == "full" else rk
                self._pending[name] = nuclear_subgradient(conv.weight, cfg.scheme, rank)
            if cfg.project:
                conv.weight.copy_(new)
            ranks[name] = max(rk)
        self.projections += 1
        self.last_ranks = ranks
        return ranks

    def _due(self, t: int) -> bool:
        return t % self.config.period == 0

    # -- hooks ----------------------------------------------------------------------------------
    def on_train_start(self, trainer) -> None:
        if self.config.counter == "global" and trainer.global_step == 0:
            self.project()
            self.history.append({"epoch": 0, "step": 0, "ranks": dict(self.last_ranks)})

    def before_forward(self, trainer, x, y):
        if self.config.counter == "epoch" and self._due(self.batch_in_epoch):
            self.project()
        return x, y

    def after_backward(self, trainer) -> None:
        cfg = self.config
        if cfg.nuclear <= 0:
            return
        if cfg.nuclear_when == "every":
            rank = "full" if cfg.nuclear_rank == "full" else self.rule
            for _, conv in self.targets:
                if conv.weight.grad is not None:
                    sub = nuclear_subgradient(conv.weight, cfg.scheme, rank)
                    conv.weight.grad.add_(sub, alpha=cfg.nuclear)
        else:
            for name, conv in self.targets:
                sub = self._pending.pop(name, None)
                if sub is not None and conv.weight.grad is not None:
                    conv.weight.grad.add_(sub, alpha=cfg.nuclear)
            self._pending.clear()

    def after_step(self, trainer) -> None:
        self.batch_in_epoch += 1
        if self.config.counter == "global" and self._due(trainer.global_step):
            self.project()

    def on_epoch_end(self, trainer, epoch: int, record: dict[str, Any]) -> None:
        self.batch_in_epoch = 0
        if self.last_ranks:
            record["trp_mean_rank"] = sum(self.last_ranks.values()) / len(self.last_ranks)
            record["trp_ranks"] = dict(self.last_ranks)
        self.history.append({"epoch": epoch, "step": trainer.global_step, "ranks": dict(self.last_ranks)})

    def state_dict(self) -> dict[str, Any]:
        return {"projections": self.projections, "last_ranks": self.last_ranks, "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.projections = int(state.get("projections", 0))
        self.last_ranks = dict(state.get("last_ranks", {}))
        self.history = list(state.get("history", []))
        self.batch_in_epoch = 0
