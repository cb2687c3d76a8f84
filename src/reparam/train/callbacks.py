"""Hooks a method plugs into the trainer. Override only what the method needs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from reparam.train.trainer import Trainer


class Callback:
    def on_train_start(self, trainer: Trainer) -> None:
        """Once, after the optimizer exists and any checkpoint was restored."""

    def before_forward(self, trainer: Trainer, x: torch.Tensor, y: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Change the batch (e.g. adversarial examples). Runs in train mode."""
        return x, y

    def extra_loss(self, trainer: Trainer, logits: torch.Tensor, x: torch.Tensor,
                   y: torch.Tensor) -> torch.Tensor | None:
        """A term added to the task loss (e.g. a regularizer)."""
        return None

    def after_backward(self, trainer: Trainer) -> None:
        """Gradients exist; the optimizer has not stepped yet."""

    def after_step(self, trainer: Trainer) -> None:
        """The optimizer stepped; trainer.global_step counts steps so far (1 after the first)."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        """After validation; add fields to `record`, which becomes the epoch's log line."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the best model was restored and evaluated."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state saved with checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
