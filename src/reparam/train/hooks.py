"""Training-time behaviour of a method as one object that works in any training loop.

In your own loop, one call per event (each method's guide says which it needs):

    for step, (x, y) in enumerate(batches):
        x, y = hook.before_forward(x, y)      # methods that change the batch (PGD, noise)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward()
        hook.before_step(step)                # gradient edits (TRP's nuclear sub-gradient, decay on Psi(v))
        opt.step()
        hook.after_step(step)                 # weight edits after the step (TRP's projection every m steps)

`step` is the 0-based index of the optimizer step in both calls; leave it out and the hook counts calls.
reparam's Trainer runs the same object: pass it in `callbacks` and the Trainer calls these methods at the
same points (`as_callback`). The Trainer knows only this interface, never a method.
"""

from __future__ import annotations

from typing import Any

import torch

from reparam.train.callbacks import Callback


class Hook:
    """Override what the method needs. `steps_done` counts finished optimizer steps."""

    model: torch.nn.Module | None = None
    rows: tuple[slice, int] | None = None    # this process's rows of the global batch (set by the Trainer)
    steps_done: int = 0

    def bind(self, model: torch.nn.Module) -> None:
        """The model the hook works on (the Trainer binds its model when the hook was built without one)."""
        if self.model is None:
            self.model = model

    def start(self, steps_done: int = 0) -> None:
        """Once before training (the Trainer calls it after restoring a checkpoint)."""
        self.steps_done = steps_done

    def before_forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def extra_loss(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        return None

    def before_step(self, step: int | None = None) -> None:
        """Gradients exist; the optimizer has not stepped."""

    def after_step(self, step: int | None = None) -> None:
        """The optimizer took step `step` (0-based). Subclasses call super() first to count it."""
        self.steps_done = self.steps_done + 1 if step is None else int(step) + 1

    def end_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        """After an epoch (the Trainer's): add fields to the epoch's log record."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


_RUNNING_STATS = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.instancenorm._InstanceNorm)


class KeepNormStatistics(Hook):
    """Fine-tuning over a frozen base (PRANC's delta mode, NOLA, adapters): the normalization layers stay in
    eval mode while training, so their running statistics remain the pretrained model's and the base is
    left exactly as it was. `before_forward` switches them back after every model.train()."""

    def __init__(self, model: torch.nn.Module | None = None):
        self.model = model

    def before_forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.model is not None:
            for m in self.model.modules():
                if isinstance(m, _RUNNING_STATS) and m.training:
                    m.eval()
        return x, y


class HookCallback(Callback):
    """Runs a Hook inside reparam's Trainer, at the points the own-loop recipe calls it."""

    def __init__(self, hook: Hook):
        self.hook = hook

    def on_train_start(self, trainer) -> None:
        self.hook.bind(trainer.model)
        self.hook.start(trainer.global_step)

    def before_forward(self, trainer, x, y):
        self.hook.rows = trainer.batch_rows
        return self.hook.before_forward(x, y)

    def extra_loss(self, trainer, logits, x, y):
        return self.hook.extra_loss(logits, x, y)

    def after_backward(self, trainer) -> None:
        self.hook.before_step(trainer.global_step)

    def after_step(self, trainer) -> None:
        self.hook.after_step(trainer.global_step - 1)

    def on_epoch_end(self, trainer, epoch: int, record: dict[str, Any]) -> None:
        self.hook.end_epoch(epoch, record)

    def state_dict(self) -> dict[str, Any]:
        return self.hook.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.hook.load_state_dict(state)


def as_callback(obj: Callback | Hook) -> Callback:
    """A Trainer callback for a Hook (or the callback itself)."""
    if isinstance(obj, Hook):
        return HookCallback(obj)
    if isinstance(obj, Callback):
        return obj
    raise TypeError(f"{type(obj).__name__} is neither a reparam Hook nor a Trainer Callback")
