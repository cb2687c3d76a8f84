"""A small transformer classifier that reads an image row by row (each row one token).

Sequences built from on-disk images: an H x W image (C channels) is H tokens of C*W numbers, embedded by
a Linear layer, plus learned positions, through nn.TransformerEncoder (pre-norm, GELU), mean-pooled,
LayerNorm, head. Its attention projections (MultiheadAttention's in_proj_weight and out_proj) and the
feed-forward Linear layers are what adapters such as NOLA fine-tune.
"""

from __future__ import annotations

import torch
from torch import nn

from reparam.core.errors import ReparamError
from reparam.models.base import Classifier, Normalize, opt_float, opt_int
from reparam.models.registry import register_model


class RowTransformer(Classifier):
    def __init__(self, num_classes: int, in_channels: int, image_size: tuple[int, int], dim: int = 32,
                 depth: int = 2, heads: int = 4, mlp_ratio: int = 2, dropout: float = 0.0, mean=None,
                 std=None) -> None:
        super().__init__()
        if dim % heads:
            raise ReparamError(f"rowformer dim {dim} must be a multiple of heads {heads}")
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        h, w = image_size
        self.norm = Normalize(mean, std, in_channels)
        self.embed = nn.Linear(in_channels * w, dim)
        self.pos = nn.Parameter(torch.randn(1, h, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * mlp_ratio, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm_out = nn.LayerNorm(dim)
        self.feature_dim = dim
        self.head = nn.Linear(dim, num_classes)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = x.permute(0, 2, 1, 3).reshape(n, h, c * w)      # row i = channels x columns of image row i
        return self.norm_out(self.encoder(self.embed(tokens) + self.pos).mean(1))


@register_model("rowformer")
def rowformer(*, num_classes, in_channels, image_size, mean=None, std=None, dim=32, depth=2, heads=4,
              mlp_ratio=2, dropout=0.0) -> RowTransformer:
    return RowTransformer(num_classes, in_channels, image_size, dim=opt_int("dim", dim, minimum=1),
                          depth=opt_int("depth", depth, minimum=1), heads=opt_int("heads", heads, minimum=1),
                          mlp_ratio=opt_int("mlp_ratio", mlp_ratio, minimum=1),
                          dropout=opt_float("dropout", dropout, low=0.0, high=1.0, high_open=True),
                          mean=mean, std=std)
