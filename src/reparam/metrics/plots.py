"""PNG plots with matplotlib (Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def line_plot(series: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, xlabel: str,
              ylabel: str, title: str = "", logx: bool = False, logy: bool = False,
              errors: dict[str, Sequence[float]] | None = None, markers: bool = True) -> Path:
    """One line per label; optional error bars per label. Returns the path written."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for label, (xs, ys) in series.items():
        err = (errors or {}).get(label)
        if err is not None:
            ax.errorbar(xs, ys, yerr=err, label=label, marker="o" if markers else None, capsize=3)
        else:
            ax.plot(xs, ys, label=label, marker="o" if markers else None)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def training_curves(history: list[dict], path: str | Path, title: str = "") -> Path:
    """Loss and accuracy per epoch from a trainer history."""
    epochs = [r["epoch"] for r in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5), dpi=120)
    a1.plot(epochs, [r["train_loss"] for r in history], label="train")
    a1.plot(epochs, [r["val_loss"] for r in history], label="val")
    a1.set_xlabel("epoch")
    a1.set_ylabel("loss")
    a1.legend()
    a2.plot(epochs, [r["train_acc"] for r in history], label="train")
    a2.plot(epochs, [r["val_acc"] for r in history], label="val")
    a2.set_xlabel("epoch")
    a2.set_ylabel("accuracy")
    a2.legend()
    for a in (a1, a2):
        a.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
