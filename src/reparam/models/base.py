"""Shared pieces of the model zoo: input normalization, the classifier contract, option checking.

Every classifier is a plain tree of nn.Conv2d / nn.Linear / nn.BatchNorm2d modules, because methods find
layers by type and reparameterize `.weight` with torch.nn.utils.parametrize. Nothing here uses functional
weights or shares a weight tensor between two layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from reparam.core.errors import ReparamError


class Normalize(nn.Module):
    """(x - mean) / std per channel, the first op of every classifier.

    Normalizing inside the model keeps the model's input in [0, 1] pixel space, so adversarial attacks and
    augmentations work on raw pixels. mean/std are buffers (saved in the state dict, never trained, not
    counted as parameters). With mean=None and std=None the module is the identity: the buffers then hold
    0 and 1 so that every model of a given architecture has the same state-dict keys.
    """

    def __init__(
        self,
        mean: Sequence[float] | float | None = None,
        std: Sequence[float] | float | None = None,
        channels: int | None = None,
    ) -> None:
        super().__init__()
        # Checked as Python floats (no tensor ops), so models can also be built on the meta device.
        mean_v = _stat_values("mean", mean, 0.0, channels)
        std_v = _stat_values("std", std, 1.0, channels)
        if len(mean_v) != len(std_v) and 1 not in (len(mean_v), len(std_v)):
            raise ReparamError(f"mean has {len(mean_v)} values but std has {len(std_v)}")
        if any(v <= 0 for v in std_v):
            raise ReparamError(f"std must be > 0 in every channel, got {std_v}")
        self.register_buffer("mean", torch.tensor(mean_v, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std_v, dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def is_identity(self) -> bool:
        return bool((self.mean == 0).all()) and bool((self.std == 1).all())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def _stat_values(what: str, value, default: float, channels: int | None) -> list[float]:
    if value is None:
        return [default] * (channels or 1)
    if isinstance(value, torch.Tensor):
        values = [float(v) for v in value.flatten().tolist()]
    elif isinstance(value, (int, float)):
        values = [float(value)]
    else:
        try:
            values = [float(v) for v in value]
        except (TypeError, ValueError):
            raise ReparamError(f"{what} must be a number or a list of numbers, got {value!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise ReparamError(f"{what} must be finite numbers, got {value!r}")
    if channels is not None and len(values) not in (1, channels):
        raise ReparamError(f"{what} has {len(values)} values but the model has {channels} input channels")
    if channels is not None and len(values) == 1:
        values = values * channels
    return values


class Classifier(nn.Module):
    """Base class of the image classifiers: norm -> features -> head.

    Subclasses build `self.norm` (Normalize), their trunk, and `self.head` (nn.Linear on `feature_dim`
    features), and implement `_trunk(x)` on normalized input returning [N, feature_dim].
    """

    norm: Normalize
    head: nn.Linear
    feature_dim: int
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features [N, feature_dim] of inputs x in [0, 1] (normalization included)."""
        return self._trunk(self.norm(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Swap `model.head` for a freshly initialized nn.Linear with `num_classes` outputs; returns the model.

    The new head is on the old head's device and dtype and keeps its bias setting (fine-tuning, transfer).
    """
    old = getattr(model, "head", None)
    if not isinstance(old, nn.Linear):
        raise ReparamError(f"model {type(model).__name__} has no nn.Linear head to replace")
    num_classes = opt_int("num_classes", num_classes, minimum=1)
    model.head = nn.Linear(
        old.in_features,
        num_classes,
        bias=old.bias is not None,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    if hasattr(model, "num_classes"):
        model.num_classes = num_classes
    return model


def kaiming_init(model: nn.Module) -> None:
    """torchvision's ResNet/VGG init: Kaiming-normal (fan_out, relu) convs, BN weight 1 / bias 0.

    Linear layers keep PyTorch's default init, as torchvision's ResNet does.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def scaled(channels: int, width: float) -> int:
    """channels * width rounded half up, at least 1 (width multipliers)."""
    return max(1, int(math.floor(channels * width + 0.5)))


# ---- option checking: values may come from Python or, as strings, from the command line ----


def opt_int(name: str, value, *, minimum: int | None = None) -> int:
    out = None
    if isinstance(value, int) and not isinstance(value, bool):
        out = value
    elif isinstance(value, float) and value.is_integer():
        out = int(value)
    elif isinstance(value, str):
        try:
            out = int(value.strip())
        except ValueError:
            out = None
    if out is None:
        raise ReparamError(f"option {name!r} must be an integer, got {value!r}")
    if minimum is not None and out < minimum:
        raise ReparamError(f"option {name!r} must be >= {minimum}, got {value!r}")
    return out


def opt_float(
    name: str,
    value,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    if isinstance(value, bool):
        raise ReparamError(f"option {name!r} must be a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ReparamError(f"option {name!r} must be a number, got {value!r}") from None
    bad = not math.isfinite(out)
    if low is not None:
        bad = bad or out < low or (low_open and out == low)
    if high is not None:
        bad = bad or out > high or (high_open and out == high)
    if bad:
        lo = "" if low is None else f"{'(' if low_open else '['}{low}"
        hi = "" if high is None else f"{high}{')' if high_open else ']'}"
        raise ReparamError(
            f"option {name!r} must be a number in {lo or '(-inf'}, {hi or 'inf)'}, got {value!r}"
        )
    return out


def opt_bool(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise ReparamError(f"option {name!r} must be true or false, got {value!r}")


def opt_int_tuple(name: str, value, *, minimum: int = 1) -> tuple[int, ...]:
    """A tuple of ints from an int, a sequence, or a comma-separated string ('256,128'; '' is empty)."""
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(",") if p]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        parts = [value]
    elif isinstance(value, Sequence):
        parts = list(value)
    else:
        raise ReparamError(f"option {name!r} must be a list of integers, got {value!r}")
    return tuple(opt_int(name, p, minimum=minimum) for p in parts)


def opt_choice(name: str, value, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ReparamError(f"option {name!r} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def image_hw(image_size) -> tuple[int, int]:
    """(H, W) from an int or a pair; what build_model accepts as image_size."""
    if isinstance(image_size, (int, str)) and not isinstance(image_size, bool):
        h = w = opt_int("image_size", image_size, minimum=1)
    elif isinstance(image_size, Sequence) and len(image_size) == 2:
        h = opt_int("image_size", image_size[0], minimum=1)
        w = opt_int("image_size", image_size[1], minimum=1)
    else:
        raise ReparamError(f"image_size must be an int or (height, width), got {image_size!r}")
    return h, w
