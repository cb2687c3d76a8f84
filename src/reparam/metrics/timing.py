from __future__ import annotations

import resource
import statistics
import sys
import time

import torch


@torch.no_grad()
def latency(model: torch.nn.Module, x: torch.Tensor, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall-clock seconds of one forward pass in eval mode (CPU)."""
    was_training = model.training
    model.eval()
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t0)
    model.train(was_training)
    return statistics.median(times)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
