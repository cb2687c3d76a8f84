"""Training settings, shared by every method and the CLI."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field

import torch

from reparam.core.errors import ReparamError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "multistep", "cosine")


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    step_size: int = 30            # epochs, for "step"
    milestones: tuple[int, ...] = field(default_factory=tuple)  # epochs, for "multistep"
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    seed: int = 0
    augment: str | None = None     # e.g. "crop4+flip"; see reparam.data.make_augment
    label_smoothing: float = 0.0
    eval_batch_size: int = 512
    # Model selection: "val" (alias "best": the epoch with the best validation accuracy) or "last" (the final
    # epoch); never test. None: the process default (set_default_select_on; the CLI's --select-on).
    select_on: str | None = None
    progress: bool = True
    checkpoint: bool = True        # write OUT/checkpoint.* after every epoch when out_dir is set
    device: str | None = None      # "cpu", "cuda", "cuda:N", "auto"; None: the process default (set_default_device)
    # Only used under torchrun (several processes); see docs/distributed.md.
    sync_bn: bool | None = None    # BatchNorm statistics over the global batch (N processes == 1 process);
                                   # None: the process default (set_default_sync_bn; the CLI's --sync-bn)
    # DDP: False (default) builds DDP with static_graph=True: the set of parameters a forward pass uses is
    # found in the first step and assumed fixed (true of every method here), at no per-step cost. True: a
    # graph search every step, for models whose forward passes use different parameters from step to step.
    find_unused_parameters: bool = False
    # Stop after this many optimizer steps (the last epoch is then partial): budgets finer than an epoch,
    # e.g. MixtureGrowth's equal-FLOPs comparisons. The LR schedule spans max_steps. None: epochs * steps.
    max_steps: int | None = None

    def validate(self) -> TrainConfig:
        for name in ("lr", "momentum", "weight_decay", "gamma", "warmup_epochs", "label_smoothing"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ReparamError(f"{name} must be a finite number, got {v!r}")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ReparamError(f"epochs must be a positive integer, got {self.epochs!r}")
        if self.batch_size < 1:
            raise ReparamError(f"batch size must be >= 1, got {self.batch_size}")
        if self.optimizer not in OPTIMIZERS:
            raise ReparamError(f"unknown optimizer {self.optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ReparamError(f"unknown schedule {self.schedule!r}; allowed: {', '.join(SCHEDULES)}")
        if not self.lr > 0:
            raise ReparamError(f"learning rate must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ReparamError(f"weight decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise ReparamError(f"momentum must be in [0, 1), got {self.momentum}")
        if not self.gamma > 0:
            raise ReparamError(f"gamma (the lr factor of step schedules) must be > 0, got {self.gamma}")
        if not 0 <= self.label_smoothing < 1:
            raise ReparamError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.augment is not None:
            from reparam.data import make_augment

            make_augment(self.augment)   # an unknown augmentation fails here, before any output exists
        if self.warmup_epochs < 0 or self.warmup_epochs >= max(self.epochs, 1) and self.warmup_epochs:
            raise ReparamError(f"warmup epochs must be in [0, epochs), got {self.warmup_epochs}")
        resolve_device(self.device)
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise ReparamError(f"max_steps must be a positive integer or None, got {self.max_steps!r}")
        resolve_select_on(self.select_on)
        return self

    def to_dict(self) -> dict:   # what the run used, for the records
        return dict(asdict(self), sync_bn=resolve_sync_bn(self.sync_bn), select_on=resolve_select_on(self.select_on))


SELECT_ON = {"val": "val", "best": "val", "last": "last"}
_default_select_on = "val"


def set_default_select_on(name: str) -> None:
    """select_on of every TrainConfig that names none (the CLI's --select-on best|last)."""
    global _default_select_on
    _default_select_on = resolve_select_on(name)


def resolve_select_on(value: str | None) -> str:
    """'val' (best validation epoch; 'best' is the same) or 'last'."""
    if value is None:
        return _default_select_on
    if value not in SELECT_ON:
        raise ReparamError(f"select_on {value!r} is not allowed; allowed: best (= val), last")
    return SELECT_ON[value]


_default_device = os.environ.get("REPARAM_DEVICE", "cpu")


def set_default_device(name: str) -> None:
    """The device of every TrainConfig that names none (the CLI's --device sets it for the whole command,
    so methods that build their own TrainConfig follow it too). Default: $REPARAM_DEVICE or cpu."""
    global _default_device
    resolve_device(name)
    _default_device = name


def default_device() -> str:
    return _default_device


_default_sync_bn = False


def set_default_sync_bn(on: bool) -> None:
    """--sync-bn for every TrainConfig that does not say (methods that build their own configs follow it)."""
    global _default_sync_bn
    _default_sync_bn = bool(on)


def resolve_sync_bn(value: bool | None) -> bool:
    return _default_sync_bn if value is None else bool(value)


def resolve_device(name: str | None) -> torch.device:
    """The torch device a TrainConfig.device names. Under torchrun with CUDA, "auto"/"cuda" mean this
    process's GPU (LOCAL_RANK), which the process-group setup made current."""
    if name is None:
        name = _default_device
    if not isinstance(name, str) or not name:
        raise ReparamError(f"device {name!r} is not allowed; use cpu, cuda, cuda:N or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ReparamError(f"device {name!r} is not allowed; use cpu, cuda, cuda:N or auto") from None
    if dev.type not in ("cpu", "cuda"):
        raise ReparamError(f"device {name!r} is not allowed; use cpu, cuda, cuda:N or auto")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ReparamError(f"device {name!r} was asked for but torch sees no CUDA GPU "
                               f"(torch {torch.__version__}); use --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        elif dev.index >= torch.cuda.device_count():
            raise ReparamError(f"device {name!r} does not exist: {torch.cuda.device_count()} GPU(s) visible")
    return dev
