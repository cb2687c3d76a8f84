"""PGD attacks in [0, 1] pixel space (the training hooks that use them are in `reparam.tickets.hooks`).

Models normalize their inputs internally, so the attack never sees the normalization: it perturbs raw
pixels, projects onto the eps-ball around the clean input and clamps to [0, 1] after every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from reparam.core.errors import ReparamError

NORMS = ("linf", "l2")


@dataclass
class PGDConfig:
    eps: float = 0.1
    norm: str = "linf"            # linf | l2
    steps: int = 5
    alpha: float | None = None    # step size; None -> 2.5 * eps / steps (Madry et al.)
    random_start: bool = True

    def step_size(self) -> float:
        return self.alpha if self.alpha is not None else 2.5 * self.eps / max(self.steps, 1)

    def __post_init__(self) -> None:   # checked when built, like every Config
        self.check()

    def check(self) -> PGDConfig:
        if self.norm not in NORMS:
            raise ReparamError(f"unknown attack norm {self.norm!r}; allowed: {', '.join(NORMS)}")
        if self.eps < 0 or self.steps < 0:
            raise ReparamError(f"PGD needs eps >= 0 and steps >= 0, got eps={self.eps}, steps={self.steps}")
        return self


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project perturbations onto the eps-ball of the given norm."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    scale = (eps / _flat_norm(delta)).clamp(max=1.0)
    return delta * scale


def _draw(fn, shape: tuple[int, ...], rows: tuple[slice, int] | None, **kw) -> torch.Tensor:
    """fn(shape) for a batch that is `rows` = (slice, n) of a global batch of n: drawn for all n, sliced."""
    if rows is None:
        return fn(shape, **kw)
    return fn((rows[1], *shape[1:]), **kw)[rows[0]]


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: PGDConfig,
        generator: torch.Generator | None = None, rows: tuple[slice, int] | None = None) -> torch.Tensor:
    """Untargeted PGD maximizing cross-entropy; returns x_adv in [0, 1] with ||x_adv - x|| <= eps.

    The model is put in eval mode for the attack (BN statistics are not touched) and restored after;
    gradients flow to the input only (`torch.autograd.grad`), so parameter .grad fields stay untouched.
    `rows` = (slice, n): x is those rows of a global batch of n (one process's share under torchrun); the
    random start is drawn for the whole batch and sliced, so each example gets the start it gets in 1 process.
    """
    cfg.check()
    if cfg.eps == 0 or cfg.steps == 0:
        return x.detach().clone()
    was_training = model.training
    model.eval()
    x = x.detach()
    if cfg.random_start:
        if cfg.norm == "linf":
            delta = (_draw(torch.rand, x.shape, rows, generator=generator, dtype=x.dtype) * 2 - 1) * cfg.eps
        else:
            d = _draw(torch.randn, x.shape, rows, generator=generator, dtype=x.dtype)
            r = _draw(torch.rand, (x.shape[0],) + (1,) * (x.dim() - 1), rows, generator=generator, dtype=x.dtype)
            delta = d / _flat_norm(d) * r * cfg.eps
        # drawn on the CPU generator (same numbers on every device), then moved to the batch
        delta = (x + delta.to(x.device)).clamp(0, 1) - x
    else:
        delta = torch.zeros_like(x)
    alpha = cfg.step_size()
    try:
        for _ in range(cfg.steps):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model(x + delta), y)
            (g,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                step = g.sign() if cfg.norm == "linf" else g / _flat_norm(g)
                delta = project(delta + alpha * step, cfg.eps, cfg.norm)
                delta = (x + delta).clamp(0, 1) - x
    finally:
        model.train(was_training)
    return (x + delta).detach()


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1)


def robust_accuracy(model: nn.Module, dataset, cfg: PGDConfig, batch_size: int = 256, seed: int = 0,
                    limit: int | None = None) -> float:
    """Accuracy under PGD (fraction) on a TensorDataset; `limit` evaluates only the first N examples."""
    x_all, y_all = dataset.tensors
    if limit is not None:
        x_all, y_all = x_all[:limit], y_all[:limit]
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x_all), batch_size):
        x, y = x_all[i:i + batch_size], y_all[i:i + batch_size]
        xa = pgd(model, x, y, cfg, generator=gen)
        correct += int((_predict(model, xa) == y).sum())
    model.train(was_training)
    return correct / max(len(x_all), 1)


def __getattr__(name: str):
    # The training hooks moved to reparam.tickets.hooks; the old import path works for one release.
    if name in ("AdversarialTraining", "GaussianNoiseTraining"):
        from reparam.tickets import hooks

        return getattr(hooks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
