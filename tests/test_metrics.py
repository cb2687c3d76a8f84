import pytest
import torch
import torch.nn as nn

from reparam.metrics import bytes_of, count_flops, count_params, latency, peak_rss_mb
from reparam.metrics.plots import line_plot


def test_flops_of_linear_and_conv():
    assert count_flops(nn.Linear(10, 7), (3, 10)) == 2 * 3 * 10 * 7
    conv = nn.Conv2d(2, 4, 3, padding=1)
    assert count_flops(conv, (1, 2, 5, 5)) == 2 * 4 * 2 * 9 * 25


def test_counts():
    m = nn.Linear(10, 7)
    assert count_params(m) == 77
    assert bytes_of(m.parameters()) == 308 and bytes_of(77, bits=16) == 154


def test_latency_and_memory(tmp_path):
    assert latency(nn.Linear(4, 4), torch.zeros(1, 4), repeats=3, warmup=1) > 0
    assert peak_rss_mb() > 10
    p = line_plot({"a": ([1, 2], [3, 4])}, tmp_path / "p.png", "x", "y")
    assert p.stat().st_size > 1000


def test_dense_count_of_a_parametrized_model_is_the_plain_count():
    from torch.nn.utils import parametrize

    from reparam.metrics import count_dense_params

    class LowRank(nn.Module):  # weight [7, 10] from two factors: 2*(7+10) numbers behind 70 weights
        def __init__(self):
            super().__init__()
            self.u, self.v = nn.Parameter(torch.randn(7, 2)), nn.Parameter(torch.randn(2, 10))

        def forward(self, w):
            return self.u @ self.v

    m = nn.Sequential(nn.Linear(10, 7), nn.Linear(7, 3))
    plain = count_params(m)
    parametrize.register_parametrization(m[0], "weight", LowRank())
    assert count_dense_params(m) == plain
    assert count_params(m) == plain + 14 + 20  # original weight + u + v


def test_paired_t_test_is_scipys_ttest_rel_and_none_without_spread():
    import math

    from reparam.metrics.stats import paired

    a, b = [0.91, 0.95, 0.97, 0.90], [0.90, 0.93, 0.96, 0.91]
    d = [x - y for x, y in zip(a, b)]
    m = sum(d) / 4
    s = math.sqrt(sum((x - m) ** 2 for x in d) / 3)
    r = paired(a, b)
    assert r["t"] == pytest.approx(m / (s / 2), rel=1e-12)
    assert r["p"] == pytest.approx(0.3189318, rel=1e-6)        # two-sided, 3 degrees of freedom
    assert paired([0.9], [0.8])["t"] is None and paired([0.9], [0.8])["p"] is None
    assert paired([1.0, 2.0], [0.5, 1.5])["p"] is None           # every difference equal: no spread
