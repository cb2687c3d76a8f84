"""Fourier-feature MLP (Tancik et al. 2020) for implicit neural representations of images.

Not a classifier: it maps pixel coordinates [N, 2] in [-1, 1] to colours [N, out_channels]. PRANC's image
codec overfits one to a single image. Layout (PRANC section 3 / Table 10 with depth=4, width=512,
fourier=256):

    gamma(v) = [sin(2 pi v B), cos(2 pi v B)]          B ~ N(0, sigma^2), shape [2, M] -> 2M features
    depth x [Linear(., width) -> LayerNorm (optional) -> ReLU or sine]
    Linear(width, out_channels) -> identity or sigmoid

B is a buffer regenerated from `fourier_seed` by a private generator when the model is built, so it is
identical for a given seed whatever the global RNG state, is never trained, and is not in the state dict
(persistent=False): storing the model means storing the seed, as PRANC stores its basis.
The default output is linear; decoders clamp to [0, 1] (`render` does).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from reparam.models.base import opt_bool, opt_choice, opt_float, opt_int
from reparam.models.registry import register_model

OUTPUTS = ("linear", "sigmoid")
ACTIVATIONS = ("relu", "sine")


class Sine(nn.Module):
    """sin(x): after a LayerNorm the input is about N(0, 1), so no SIREN frequency factor is needed (the
    image codec measured a factor of 3 far worse and 1 better than ReLU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x)


def coords(h: int, w: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The [h*w, 2] grid of pixel coordinates in [-1, 1], row-major; column 0 is the row (y), 1 the column."""
    ys = torch.linspace(-1.0, 1.0, h, device=device)
    xs = torch.linspace(-1.0, 1.0, w, device=device)
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)
    return grid.reshape(h * w, 2)


class FourierMLP(nn.Module):
    def __init__(
        self,
        out_channels: int = 3,
        width: int = 256,
        depth: int = 4,
        fourier: int = 256,
        sigma: float = 10.0,
        fourier_seed: int = 0,
        layernorm: bool = True,
        output: str = "linear",
        in_features: int = 2,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.out_channels, self.in_features = out_channels, in_features
        self.fourier, self.sigma, self.fourier_seed, self.output = fourier, sigma, fourier_seed, output
        self.register_buffer(
            "B", self.fourier_matrix(in_features, fourier, sigma, fourier_seed), persistent=False
        )
        layers: list[nn.Module] = []
        d = 2 * fourier if fourier > 0 else in_features
        for _ in range(depth):
            layers.append(nn.Linear(d, width))
            if layernorm:
                layers.append(nn.LayerNorm(width))
            layers.append(Sine() if activation == "sine" else nn.ReLU(inplace=True))
            d = width
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(d, out_channels)

    @staticmethod
    def fourier_matrix(in_features: int, m: int, sigma: float, seed: int) -> torch.Tensor:
        """B = sigma * N(0, 1) of shape [in_features, m] from a private CPU generator seeded with `seed`."""
        gen = torch.Generator(device="cpu").manual_seed(seed)
        return torch.randn(in_features, m, generator=gen, dtype=torch.float32, device="cpu") * sigma

    coords = staticmethod(coords)

    def embed(self, v: torch.Tensor) -> torch.Tensor:
        if self.fourier == 0:
            return v
        proj = (2 * math.pi) * (v @ self.B)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        y = self.out(self.body(self.embed(v)))
        return torch.sigmoid(y) if self.output == "sigmoid" else y

    @torch.no_grad()
    def render(self, h: int, w: int, chunk: int = 65536) -> torch.Tensor:
        """Decode the image [out_channels, h, w], clamped to [0, 1]; evaluates `chunk` pixels at a time."""
        grid = coords(h, w, device=self.B.device)
        out = torch.cat([self(grid[i : i + chunk]) for i in range(0, grid.shape[0], chunk)])
        return out.clamp(0, 1).T.reshape(self.out_channels, h, w)


@register_model("fourier-mlp")
def fourier_mlp(
    *,
    num_classes,
    in_channels,
    image_size,
    mean=None,
    std=None,
    out_channels=None,
    width=256,
    depth=4,
    fourier=256,
    sigma=10.0,
    fourier_seed=0,
    layernorm=True,
    output="linear",
    activation="relu",
) -> FourierMLP:
    """num_classes, image_size, mean and std are accepted for a uniform build_model call and ignored;
    out_channels defaults to in_channels (an INR of an image outputs its channels)."""
    out = in_channels if out_channels is None else opt_int("out_channels", out_channels, minimum=1)
    model = FourierMLP(
        out_channels=out,
        width=opt_int("width", width, minimum=1),
        depth=opt_int("depth", depth, minimum=0),
        fourier=opt_int("fourier", fourier, minimum=0),
        sigma=opt_float("sigma", sigma, low=0.0, low_open=True),
        fourier_seed=opt_int("fourier_seed", fourier_seed, minimum=0),
        layernorm=opt_bool("layernorm", layernorm),
        output=opt_choice("output", output, OUTPUTS),
        activation=opt_choice("activation", activation, ACTIVATIONS),
    )
    model.image_size = tuple(image_size)
    return model
