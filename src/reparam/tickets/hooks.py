"""Robust training as `reparam.train.Hook`s: PGD (adversarial) and Gaussian-noise training in any loop.

Each hook replaces the training batch in `before_forward(x, y)`. In your own loop:

    adv = AdversarialTraining(PGDConfig(eps=0.1, steps=5), model=model)
    for x, y in batches:
        x, y = adv.before_forward(x, y)     # PGD examples of the batch (the model runs in eval for the attack)
        loss = F.cross_entropy(model(x), y); ...

reparam's Trainer takes the same objects in `callbacks` (it binds its model and sets `rows`, this process's
rows of the global batch under torchrun, so the random starts / noise are the ones one process draws).
Each hook draws from its own seeded CPU generator, so the numbers do not depend on the global RNG.
"""

from __future__ import annotations

import torch

from reparam.core.errors import ReparamError
from reparam.tickets.attacks import PGDConfig, _draw, pgd
from reparam.train.hooks import Hook


class AdversarialTraining(Hook):
    """Madry-style adversarial training: replace each training batch by its PGD examples (eq. 1)."""

    def __init__(self, cfg: PGDConfig, seed: int = 0, model: torch.nn.Module | None = None):
        self.cfg = cfg.check()
        self.gen = torch.Generator().manual_seed(seed)
        self.model = model

    def before_forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.model is None:
            raise ReparamError("AdversarialTraining has no model: build it with model=... (or let reparam's "
                               "Trainer bind its model)")
        return pgd(self.model, x, y, self.cfg, generator=self.gen, rows=self.rows), y


class GaussianNoiseTraining(Hook):
    """Randomized-smoothing-style training (Cohen et al.): x + N(0, sigma^2), clamped to [0, 1]."""

    def __init__(self, sigma: float, seed: int = 0):
        if sigma < 0:
            raise ReparamError(f"noise sigma must be >= 0, got {sigma}")
        self.sigma = sigma
        self.gen = torch.Generator().manual_seed(seed)

    def before_forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = _draw(torch.randn, x.shape, self.rows, generator=self.gen, dtype=x.dtype) * self.sigma
        return (x + noise.to(x.device)).clamp(0, 1), y
