"""Optimizers and learning-rate schedules (per optimizer step, with linear warmup)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from reparam.train.config import TrainConfig


def default_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weights; none on biases and normalization parameters (1-d tensors)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def make_optimizer(params: Iterable, config: TrainConfig) -> torch.optim.Optimizer:
    params = list(params)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                               weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def lr_factor(step: int, steps_per_epoch: int, config: TrainConfig) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based)."""
    total = config.max_steps if config.max_steps is not None else config.epochs * steps_per_epoch
    warm = int(round(config.warmup_epochs * steps_per_epoch))
    if step < warm:
        return (step + 1) / warm
    epoch = step / steps_per_epoch
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "step":
        return config.gamma ** int(epoch // config.step_size)
    if config.schedule == "multistep":
        return config.gamma ** sum(1 for m in config.milestones if epoch >= m)
    progress = (step - warm) / max(1, total - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_scheduler(optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                   config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps_per_epoch, config))
