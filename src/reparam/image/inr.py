"""The coordinate network shared by the codec and its baseline, and byte-exact sizes of both file kinds.

`InrSpec` is everything needed to rebuild the network (besides its weights): the Fourier-feature MLP of
reparam.models ("fourier-mlp"): 2*fourier features from a Gaussian matrix regenerated from `fourier_seed`,
`depth` hidden Linear -> LayerNorm -> ReLU (or sine) layers of `width`, a Linear output with one unit per
channel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from reparam.core.errors import ReparamError
from reparam.models import build_model
from reparam.models.fourier import FourierMLP

MAX_SIDE = 1 << 15


@dataclass
class InrSpec:
    width: int = 32
    depth: int = 4
    fourier: int = 32
    sigma: float = 1.0
    fourier_seed: int = 0
    output: str = "linear"
    activation: str = "relu"

    def validate(self) -> InrSpec:
        for name in ("width", "depth", "fourier"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ReparamError(f"INR {name} must be a positive integer, got {v!r}")
        if not self.sigma > 0:
            raise ReparamError(f"Fourier scale sigma must be > 0, got {self.sigma}")
        if not 0 <= int(self.fourier_seed) < 2**63:
            raise ReparamError(f"Fourier seed must be in [0, 2**63), got {self.fourier_seed}")
        if self.output not in ("linear", "sigmoid"):
            raise ReparamError(f"unknown INR output {self.output!r}; allowed: linear, sigmoid")
        if self.activation not in ("relu", "sine"):
            raise ReparamError(f"unknown INR activation {self.activation!r}; allowed: relu, sine")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InrSpec:
        return cls(width=int(d["width"]), depth=int(d["depth"]), fourier=int(d["fourier"]),
                   sigma=float(d["sigma"]), fourier_seed=int(d["fourier_seed"]),
                   output=str(d.get("output", "linear")), activation=str(d.get("activation", "relu"))).validate()


def build_inr(spec: InrSpec, channels: int, height: int, width: int) -> FourierMLP:
    spec.validate()
    if channels not in (1, 3):
        raise ReparamError(f"images must have 1 or 3 channels, got {channels}")
    return build_model("fourier-mlp", num_classes=channels, in_channels=channels, image_size=(height, width),
                       out_channels=channels, width=spec.width, depth=spec.depth, fourier=spec.fourier,
                       sigma=spec.sigma, fourier_seed=spec.fourier_seed, layernorm=True, output=spec.output,
                       activation=spec.activation)


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def layernorm_state(model: nn.Module) -> list[str]:
    return [f"{n}.{t}" for n, m in model.named_modules() if isinstance(m, nn.LayerNorm) for t in ("weight", "bias")]


def layer_sizes(model: nn.Module) -> list[int]:
    """Weights + biases of every Linear layer, in order (the PRANC blocks of the codec)."""
    return [m.weight.numel() + (m.bias.numel() if m.bias is not None else 0) for _, m in linear_layers(model)]


def dense_params(spec: InrSpec, channels: int) -> int:
    """All parameters of the plain network (Linear layers + LayerNorm affine)."""
    w, d, f = spec.width, spec.depth, spec.fourier
    return (2 * f * w + w) + (d - 1) * (w * w + w) + (w * channels + channels) + 2 * w * d
