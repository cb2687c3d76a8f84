"""Linear CKA (Kornblith et al., 2019) for the paper's feature analysis (Figs. 4 and 5)."""

from __future__ import annotations

import torch
import torch.nn as nn


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA between two feature matrices [N, D1], [N, D2] of the same N inputs (1 = same up to
    rotation and isotropic scale)."""
    x = x.reshape(x.shape[0], -1).double()
    y = y.reshape(y.shape[0], -1).double()
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs features of the same inputs; got {x.shape[0]} and {y.shape[0]} rows")
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    hsic = (y.T @ x).norm() ** 2
    denom = (x.T @ x).norm() * (y.T @ y).norm()
    return float(hsic / denom) if denom > 0 else 0.0


def cka_matrix(feats_a: list[torch.Tensor], feats_b: list[torch.Tensor] | None = None) -> torch.Tensor:
    """CKA between every pair (i, j) of feature snapshots (epochs or layers)."""
    feats_b = feats_a if feats_b is None else feats_b
    out = torch.zeros(len(feats_a), len(feats_b))
    for i, a in enumerate(feats_a):
        for j, b in enumerate(feats_b):
            if feats_b is feats_a and j < i:
                out[i, j] = out[j, i]
            else:
                out[i, j] = linear_cka(a, b)
    return out


@torch.no_grad()
def conv_outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every Conv2d output (global-average-pooled to [N, C]) in module order, in eval mode."""
    outs: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: outs.append(o.mean(dim=(2, 3))))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    was = model.training
    model.eval()
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return outs


def save_heatmap(matrix: torch.Tensor, path, title: str, xlabel: str, ylabel: str,
                 marks: list[int] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    im = ax.imshow(matrix.numpy(), vmin=0, vmax=1, cmap="magma", origin="lower")
    for m in marks or []:
        ax.axhline(m - 0.5, color="cyan", lw=0.8)
        ax.axvline(m - 0.5, color="cyan", lw=0.8)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
