"""Overfitting a coordinate network (INR) to one image: the paper's recipe (section 3).

Adam (lr 1e-3) with a cosine schedule to zero, MSE on a fresh random 25% of the pixels at every step.
The shared Trainer is built for classifiers with datasets and epochs; an INR fit has one "sample" (the
image) and counts steps, so it is this small loop. Whatever parameters of the model require grad are
trained: all weights for a plain INR, only the coefficients for a PRANC-reparametrized one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from reparam.core.errors import ReparamError, TrainingDiverged
from reparam.models.fourier import coords


@dataclass
class FitConfig:
    steps: int = 2000
    lr: float = 1e-3
    fraction: float = 0.25      # share of pixels per step (paper: 25%)
    max_pixels: int | None = None   # at most this many pixels per step (keeps large images' steps cheap)
    schedule: str = "cosine"    # cosine | constant
    seed: int = 0               # pixel sampling order
    eval_every: int = 100       # full-image PSNR for the progress bar / history
    warmup: int = 0             # steps of linear learning-rate warm-up before the cosine decay

    def validate(self) -> FitConfig:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ReparamError(f"steps must be a positive integer, got {self.steps!r}")
        if not self.lr > 0:
            raise ReparamError(f"lr must be > 0, got {self.lr}")
        if not 0 < self.fraction <= 1:
            raise ReparamError(f"pixel fraction must be in (0, 1], got {self.fraction}")
        if self.max_pixels is not None and (not isinstance(self.max_pixels, int) or self.max_pixels < 1):
            raise ReparamError(f"pixels per step must be a positive integer, got {self.max_pixels!r}")
        if not isinstance(self.warmup, int) or not 0 <= self.warmup < self.steps:
            raise ReparamError(f"warm-up must be an integer in [0, steps), got {self.warmup!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ReparamError(f"unknown schedule {self.schedule!r}; allowed: cosine, constant")
        return self


@dataclass
class FitResult:
    psnr: float                 # full image, float32 output clamped to [0, 1] (before any quantization)
    seconds: float
    steps: int
    history: list[dict] = field(default_factory=list)
    grad_sq: list[torch.Tensor] = field(default_factory=list)   # Adam's second moments, one per parameter


def pixels(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(coordinates [H*W, 2], colours [H*W, C]) of an image [C, H, W], row-major."""
    c, h, w = image.shape
    return coords(h, w), image.reshape(c, h * w).T.contiguous()


def _psnr_of_mse(mse: float) -> float:
    return math.inf if mse <= 0 else -10.0 * math.log10(mse)


@torch.no_grad()
def full_psnr(model: nn.Module, xy: torch.Tensor, rgb: torch.Tensor, chunk: int = 65536) -> float:
    out = torch.cat([model(xy[i : i + chunk]) for i in range(0, xy.shape[0], chunk)]).clamp(0, 1)
    return _psnr_of_mse(float(torch.mean((out - rgb) ** 2)))


class Adam:
    """Adam (Kingma & Ba; torch.optim.Adam's update without weight decay or amsgrad) in a few lines.

    Why not torch.optim.Adam: constructing the first torch optimizer in a process imports torch._dynamo,
    several seconds that an image encode (a few tens of seconds in all) should not pay."""

    def __init__(self, params: list[torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps, self.t = list(params), lr, betas, eps, 0
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, lr: float) -> None:
        self.t += 1
        b1, b2 = self.betas
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq, strict=True):
            if p.grad is None:
                continue
            g = p.grad
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / math.sqrt(1 - b2 ** self.t)).add_(self.eps)
            p.addcdiv_(m, denom, value=-lr / (1 - b1 ** self.t))


def _lr_factor(cfg: FitConfig, step: int) -> float:
    """Multiplier of the learning rate after `step` optimizer steps: linear warm-up, then cosine to 0."""
    if step < cfg.warmup:
        return (step + 1) / (cfg.warmup + 1)
    if cfg.schedule == "constant":
        return 1.0
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * (1 + math.cos(math.pi * t))


def fit_inr(model: nn.Module, image: torch.Tensor, config: FitConfig | None = None, *,
            progress: bool = True, label: str = "fit", params: list[torch.Tensor] | None = None,
            before_step: Callable[[int], None] | None = None,
            after_backward: Callable[[], None] | None = None) -> FitResult:
    """Train `model` (coords -> colours) on `image` [C, H, W] in [0, 1]; returns the final full-image PSNR.

    `params` (default: the model's trainable parameters) are what Adam updates. Quantization-aware
    fine-tuning passes latent values here and two callbacks: `before_step(step)` writes the quantized
    values into the model, `after_backward()` hands their gradient to the latent ones (straight-through).
    """
    cfg = (config or FitConfig()).validate()
    xy, rgb = pixels(image)
    n = xy.shape[0]
    batch = max(1, int(round(cfg.fraction * n)))
    if cfg.max_pixels is not None:
        batch = min(batch, cfg.max_pixels)
    params = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ReparamError("the model has no trainable parameters")
    opt = Adam(params, lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict] = []
    model.train()
    t0 = time.perf_counter()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn(), TextColumn("{task.fields[info]}"), disable=not progress,
                   transient=True)
    with bar:
        task = bar.add_task(label, total=cfg.steps, info="")
        for step in range(1, cfg.steps + 1):
            idx = torch.randperm(n, generator=gen)[:batch] if batch < n else slice(None)
            if before_step is not None:
                before_step(step)
            loss = torch.mean((model(xy[idx]) - rgb[idx]) ** 2)
            opt.zero_grad()
            model.zero_grad(set_to_none=True)
            loss.backward()
            if after_backward is not None:
                after_backward()
            opt.step(cfg.lr * _lr_factor(cfg, step - 1))
            lv = loss.detach().item()
            if not math.isfinite(lv):
                raise TrainingDiverged(f"INR fit diverged at step {step} (loss {lv})")
            if step % cfg.eval_every == 0 or step == cfg.steps:
                p = full_psnr(model, xy, rgb)
                history.append({"step": step, "loss": lv, "psnr": p, "seconds": time.perf_counter() - t0})
                bar.update(task, info=f"PSNR {p:.2f} dB")
            bar.advance(task)
    if before_step is not None:
        before_step(cfg.steps + 1)   # the model holds the values of the final parameters
    grad_sq = [v.clone() for v in opt.exp_avg_sq]
    return FitResult(psnr=full_psnr(model, xy, rgb) if before_step is not None else history[-1]["psnr"],
                     seconds=time.perf_counter() - t0, steps=cfg.steps, history=history, grad_sq=grad_sq)
