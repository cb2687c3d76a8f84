"""Evaluation after transfer: OOD detection with the max-softmax score, and source/target domain gaps."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score


@torch.no_grad()
def msp(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Maximum softmax probability per input (higher = more in-distribution)."""
    was = model.training
    model.eval()
    out = torch.cat([model(x[i:i + batch_size]).softmax(1).max(1).values
                     for i in range(0, len(x), batch_size)])
    model.train(was)
    return out


def ood_metrics(score_in: torch.Tensor, score_out: torch.Tensor) -> dict[str, float]:
    """AUROC (in-distribution = positive) and FPR at 95% TPR of a detection score."""
    s_in, s_out = score_in.double().numpy(), score_out.double().numpy()
    labels = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
    auroc = float(roc_auc_score(labels, np.r_[s_in, s_out]))
    thr = np.quantile(s_in, 0.05, method="lower")   # 95% of in-distribution scores are >= thr
    fpr = float((s_out >= thr).mean())
    return {"auroc": auroc, "fpr95": fpr}


def ood_eval(model: nn.Module, x_in: torch.Tensor, x_out: torch.Tensor) -> dict[str, float]:
    return ood_metrics(msp(model, x_in), msp(model, x_out))


def linear_mmd(f_source: torch.Tensor, f_target: torch.Tensor) -> float:
    """Squared distance of the feature means (MMD with a linear kernel)."""
    return float((f_source.double().mean(0) - f_target.double().mean(0)).pow(2).sum())


def proxy_a_distance(f_source: torch.Tensor, f_target: torch.Tensor, seed: int = 0) -> float:
    """2 (1 - 2 err) of a linear domain classifier (held-out half), Ben-David et al."""
    x = torch.cat([f_source, f_target]).double().numpy()
    y = np.r_[np.zeros(len(f_source)), np.ones(len(f_target))]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    half = len(y) // 2
    tr, te = order[:half], order[half:]
    mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-8
    clf = LogisticRegression(max_iter=2000, C=1.0).fit((x[tr] - mu) / sd, y[tr])
    err = 1.0 - clf.score((x[te] - mu) / sd, y[te])
    return float(2.0 * (1.0 - 2.0 * min(err, 0.5)))
