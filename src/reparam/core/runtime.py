"""Process-wide settings: thread count and seeding.

On a loaded 2-core machine two torch threads were measured 10-80x slower than one, so the default is
one thread; `REPARAM_THREADS` or `--threads` changes it.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def default_threads() -> int:
    try:
        return max(1, int(os.environ.get("REPARAM_THREADS", "1")))
    except ValueError:
        return 1


def set_threads(n: int | None = None) -> int:
    n = default_threads() if n is None else int(n)
    if n < 1:
        from reparam.core.errors import ReparamError

        raise ReparamError(f"threads must be >= 1, got {n}")
    torch.set_num_threads(n)
    return n


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def derive_seed(*parts: int) -> int:
    """A deterministic 63-bit seed from integers (e.g. (seed, epoch)), independent of Python's hash salt."""
    h = 1469598103934665603
    for p in parts:
        h ^= int(p) & 0xFFFFFFFFFFFFFFFF
        h = (h * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF
