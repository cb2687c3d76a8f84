"""The model registry: names -> builders, and `build_model`.

A builder is a function `builder(*, num_classes, in_channels, image_size, mean, std, **its options)`; its
keyword parameters beyond those five are the model's options, so unknown options can be reported by name
before anything is built. Families with a parameter in the name (`wrn-D-K`) register a pattern whose
builder gets the regex match as its first argument.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from reparam.core.errors import ReparamError, choose
from reparam.models.base import image_hw, opt_int

Builder = Callable[..., nn.Module]

#: name -> builder. Pattern families (wrn-D-K) list their common members here too, for help texts.
MODELS: dict[str, Builder] = {}
#: (compiled full-match regex, builder(match, **kwargs)) for names with parameters in them.
MODEL_PATTERNS: list[tuple[re.Pattern[str], Builder]] = []

_COMMON = ("num_classes", "in_channels", "image_size", "mean", "std")


def register_model(name: str, builder: Builder | None = None):
    """Register `builder` under `name`; usable as `@register_model("name")` or a plain call."""

    def add(fn: Builder) -> Builder:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = fn
        return fn

    return add(builder) if builder is not None else add


def register_model_pattern(pattern: str, builder: Builder, examples: Sequence[str] = ()) -> Builder:
    """Register a family of names matching `pattern`; `examples` are also listed in MODELS."""
    regex = re.compile(pattern)
    MODEL_PATTERNS.append((regex, builder))
    for example in examples:
        match = regex.fullmatch(example)
        assert match is not None, example

        def bound(*, _match=match, **kwargs):
            return builder(_match, **kwargs)

        bound.__signature__ = _options_signature(builder)  # type: ignore[attr-defined]
        register_model(example, bound)
    return builder


def _options_signature(builder: Builder) -> inspect.Signature:
    params = list(inspect.signature(builder).parameters.values())
    if params and params[0].kind in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        params = params[1:]  # the regex match
    return inspect.Signature(params)


def model_options(name: str) -> dict[str, object]:
    """The options of model `name` and their defaults (for help texts and error messages)."""
    builder, match = _resolve(name)
    sig = _options_signature(builder) if match is not None else inspect.signature(builder)
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.name not in _COMMON and p.kind == inspect.Parameter.KEYWORD_ONLY
    }


def _resolve(name: str) -> tuple[Builder, re.Match[str] | None]:
    if not isinstance(name, str):
        raise ReparamError(f"model name must be a string, got {name!r}")
    if name in MODELS:
        return MODELS[name], None
    for regex, builder in MODEL_PATTERNS:
        match = regex.fullmatch(name)
        if match is not None:
            return builder, match
    return choose(name, MODELS, "model"), None  # raises the "unknown model" error


def build_for(name: str, splits, seed: int | None = None, **options) -> nn.Module:
    """build_model for the data in `splits` (its classes, channels, image size, mean and std); with `seed`,
    every generator is seeded first, so the initial weights depend only on it."""
    if seed is not None:
        from reparam.core.runtime import seed_everything

        seed_everything(seed)
    return build_model(name, num_classes=splits.num_classes, in_channels=splits.in_channels,
                       image_size=splits.image_size, mean=splits.mean, std=splits.std, **options)


def build_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    image_size: int | Sequence[int],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **options,
) -> nn.Module:
    """Build model `name` for inputs [N, in_channels, H, W] in [0, 1] and `num_classes` outputs.

    mean/std (per channel, from the dataset) go into the model's Normalize layer. Options are checked
    against the builder: an unknown or invalid one raises ReparamError naming it. The returned module has
    `build_args` (everything needed to build it again, e.g. from a checkpoint's JSON header).
    """
    builder, match = _resolve(name)
    sig = _options_signature(builder) if match is not None else inspect.signature(builder)
    params = sig.parameters
    if not any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()):
        allowed = [p for p in params if p not in _COMMON]
        for key in options:
            if key not in allowed:
                raise ReparamError(
                    f"unknown option {key!r} for model {name!r}; allowed: {', '.join(allowed) or '(none)'}"
                )
    num_classes = opt_int("num_classes", num_classes, minimum=1)
    in_channels = opt_int("in_channels", in_channels, minimum=1)
    hw = image_hw(image_size)
    kwargs = dict(num_classes=num_classes, in_channels=in_channels, image_size=hw, mean=mean, std=std)
    model = builder(match, **kwargs, **options) if match is not None else builder(**kwargs, **options)
    model.build_args = {
        "name": name,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "image_size": list(hw),
        "mean": _as_list(mean),
        "std": _as_list(std),
        "options": dict(options),
    }
    return model


def _as_list(value) -> list[float] | None:
    """mean/std as a JSON-friendly list (Normalize has already validated them)."""
    if value is None:
        return None
    if hasattr(value, "flatten"):
        value = value.flatten().tolist()
    if isinstance(value, (int, float)):
        return [float(value)]
    return [float(v) for v in value]


def model_spec(name: str, splits, **options: Any) -> dict[str, Any]:
    """The spec of an architecture for `splits`, in the same form as `model.build_args`."""
    return {"name": name, "num_classes": splits.num_classes, "in_channels": splits.in_channels,
            "image_size": list(splits.image_size), "mean": list(splits.mean), "std": list(splits.std),
            "options": options}


# A spec read from a file is untrusted: its numbers are bounded before anything is built, the model is
# first built on the meta device (no memory) and counted, and only then built for real.
MAX_MODEL_NUMBERS = 1 << 30      # parameters + buffers (4 GiB as float32)
MAX_SPEC_INT = 1 << 16           # any integer in a spec (widths, depths, classes, image sides, list lengths)


def _spec_ok(value: Any, depth: int = 0) -> bool:
    """JSON values with every integer in [-MAX_SPEC_INT, MAX_SPEC_INT], finite floats, short lists/strings."""
    if depth > 4:
        return False
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return abs(value) <= MAX_SPEC_INT
    if isinstance(value, float):
        return value == value and abs(value) != float("inf")
    if isinstance(value, str):
        return len(value) <= 256
    if isinstance(value, list):
        return len(value) <= 1024 and all(_spec_ok(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return len(value) <= 64 and all(isinstance(k, str) and _spec_ok(v, depth + 1) for k, v in value.items())
    return False


def _check_spec(spec: Any) -> None:
    ok = (isinstance(spec, dict) and isinstance(spec.get("name"), str) and _spec_ok(spec)
          and all(isinstance(spec.get(k), int) and not isinstance(spec.get(k), bool) and spec[k] >= 1
                  for k in ("num_classes", "in_channels"))
          and isinstance(spec.get("image_size"), list) and len(spec["image_size"]) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in spec["image_size"])
          and all(spec.get(k) is None or isinstance(spec.get(k), list) for k in ("mean", "std"))
          and isinstance(spec.get("options", {}), dict)
          and all(int(n) <= MAX_SPEC_INT for n in re.findall(r"\d+", spec["name"])[:8]))
    if not ok:
        raise ReparamError("the model spec is not a valid reparam model spec (name, num_classes, in_channels, "
                           f"image_size, mean, std, options within bounds; integers at most {MAX_SPEC_INT})")


def build_from_spec(spec: dict[str, Any], expect: dict[str, list[int]] | None = None) -> nn.Module:
    """Rebuild an architecture from `model.build_args` (as stored in file headers).

    The spec is type- and bound-checked and the model is built on the meta device first: one with more than
    MAX_MODEL_NUMBERS numbers, or (with `expect`, a file's {state name: shape}) other tensors than the file
    describes, is refused before any memory is allocated.
    """
    import math

    import torch

    _check_spec(spec)

    def build():
        try:
            return build_model(spec["name"], num_classes=spec["num_classes"], in_channels=spec["in_channels"],
                               image_size=tuple(spec["image_size"]), mean=spec.get("mean"), std=spec.get("std"),
                               **spec.get("options", {}))
        except ReparamError:
            raise
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError, OverflowError) as e:
            raise ReparamError(f"model {spec['name']!r} cannot be built from this spec ({type(e).__name__})") \
                from None

    with torch.device("meta"):
        probe = build()
    state = {k: list(v.shape) for k, v in probe.state_dict().items()}
    total = sum(math.prod(s) for s in state.values())
    if total > MAX_MODEL_NUMBERS:
        raise ReparamError(f"model {spec['name']!r} from this spec has {total:,} numbers; at most "
                           f"{MAX_MODEL_NUMBERS:,} are allowed")
    if expect is not None:
        for name in sorted(set(state) | set(expect)):
            if state.get(name) != (list(expect[name]) if name in expect else None):
                raise ReparamError(f"the file's tensor {name!r} ({expect.get(name)}) does not match model "
                                   f"{spec['name']!r} built from its spec ({state.get(name)})")
    return build()
