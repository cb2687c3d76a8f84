"""Batch augmentations in plain torch, each drawing its randomness from an explicit `torch.Generator`.

They act on whole batches [N, C, H, W] (one random draw per image), so augmentation costs a few tensor
ops per batch instead of a Python loop per image, and a seeded generator makes a run reproducible.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from reparam.core.errors import ReparamError

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _check_batch(x: torch.Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"expected a batch [N, C, H, W], got shape {tuple(x.shape)}")


def _offsets(n: int, high: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
    # Draw on the generator's device (a CPU generator cannot feed a CUDA op), then move.
    return torch.randint(0, high, (n,), generator=g, device=g.device).to(device)


def _crop_padded(padded: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Per-image crop of size h x w at offsets (oy[i], ox[i]) from a padded batch, by one gather."""
    n, c = padded.shape[:2]
    dev = padded.device
    rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :]
    batch = torch.arange(n, device=dev)[:, None, None, None]
    chans = torch.arange(c, device=dev)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_crop(x: torch.Tensor, padding: int, g: torch.Generator) -> torch.Tensor:
    """Zero-pad by `padding` on every side, then crop back to the input size at a random offset (CIFAR)."""
    _check_batch(x)
    if padding <= 0:
        return x
    h, w = x.shape[-2:]
    padded = F.pad(x, (padding,) * 4)
    oy = _offsets(len(x), 2 * padding + 1, g, x.device)
    ox = _offsets(len(x), 2 * padding + 1, g, x.device)
    return _crop_padded(padded, oy, ox, h, w)


def random_shift(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Translate each image by up to `max_shift` pixels per axis, filling with the replicated edge.

    Unlike `random_crop` (black borders), the border pixels are repeated, so no artificial edge appears.
    """
    _check_batch(x)
    if max_shift <= 0:
        return x
    h, w = x.shape[-2:]
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    oy = _offsets(len(x), 2 * max_shift + 1, g, x.device)
    ox = _offsets(len(x), 2 * max_shift + 1, g, x.device)
    return _crop_padded(padded, oy, ox, h, w)


def hflip(x: torch.Tensor, g: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability `p`."""
    _check_batch(x)
    flip = (torch.rand(len(x), generator=g, device=g.device) < p).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def resize(x: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Bilinear resize of a batch to `size` (int or (H, W)); antialiased when shrinking; clamped to [0, 1]."""
    _check_batch(x)
    hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == hw:
        return x
    antialias = hw[0] < x.shape[-2] or hw[1] < x.shape[-1]
    out = F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=antialias)
    return out.clamp(0.0, 1.0)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std per channel."""
    _check_batch(x)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


AUGMENT_FORMS = (
    "none, cropN (zero-pad N then random crop), shiftN (random shift up to N pixels), flip (horizontal, "
    "p=0.5), joined with '+', e.g. crop4+flip"
)


class Pipeline:
    """A parsed augmentation spec: callable as `augment(x, generator)`; `spec` is its canonical text."""

    def __init__(self, steps: list[tuple[str, int]]):
        self.steps = steps
        self.spec = "+".join(f"{op}{arg}" if op != "flip" else op for op, arg in steps)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        for op, arg in self.steps:
            if op == "crop":
                x = random_crop(x, arg, g)
            elif op == "shift":
                x = random_shift(x, arg, g)
            else:
                x = hflip(x, g)
        return x

    def __repr__(self) -> str:
        return f"Pipeline({self.spec!r})"


def make_augment(spec: str | None) -> Augment | None:
    """Parse an augmentation spec ("crop4+flip", "shift2", "flip", "none"/None) into a batch augmentation.

    Returns None for no augmentation. Steps run left to right.
    """
    if spec is None:
        return None
    if not isinstance(spec, str):
        raise ReparamError(f"augmentation spec must be a string, got {spec!r}; allowed: {AUGMENT_FORMS}")
    text = spec.strip().lower()
    if text in ("", "none"):
        return None
    steps: list[tuple[str, int]] = []
    for token in text.split("+"):
        token = token.strip()
        m = re.fullmatch(r"(crop|shift)(\d+)", token)
        if m and int(m.group(2)) >= 1:
            steps.append((m.group(1), int(m.group(2))))
        elif token == "flip":
            steps.append(("flip", 0))
        else:
            raise ReparamError(f"unknown augmentation {token!r} in {spec!r}; allowed: {AUGMENT_FORMS}")
    return Pipeline(steps)
