"""Statistics over seeds shared by the methods' experiments and the reproduce verdicts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for a single value)."""
    arr = np.asarray(xs, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Paired differences a - b (same seed, same setting): mean, std, wins/ties/losses, paired t and
    two-sided p (`scipy.stats.ttest_rel`; None when there are fewer than two pairs or no spread)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    m, s = mean_std(d)
    n = len(d)
    t = p = None
    if n > 1 and s > 0:
        from scipy import stats

        res = stats.ttest_rel(np.asarray(a, dtype=float), np.asarray(b, dtype=float))
        t, p = float(res.statistic), float(res.pvalue)
    return {"mean": m, "std": s, "n": n, "wins": int((d > 0).sum()), "ties": int((d == 0).sum()),
            "losses": int((d < 0).sum()), "t": t, "p": p, "diffs": d.tolist()}


def paired_verdict(d: dict[str, Any], alpha: float = 0.05) -> str:
    """'holds' / 'does not hold' only when the paired difference is significant, else 'inconclusive'."""
    if d["p"] is None or d["p"] >= alpha:
        return "inconclusive"
    return "holds" if d["mean"] > 0 else "does not hold"
