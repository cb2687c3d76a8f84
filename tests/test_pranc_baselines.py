"""Baselines and ablation utilities."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from reparam.experiments.pranc.baselines import apply_hashednet, magnitude_prune, regress_onto_basis
from reparam.experiments.pranc.runs import orthogonality
from reparam.pranc import PrancConfig, apply_pranc, pranc_core

torch.set_num_threads(1)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.bn = nn.BatchNorm1d(8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(F.relu(self.bn(self.fc1(x))))


def test_hashednet_equal_partition_and_summed_gradients():
    torch.manual_seed(0)
    m = Net()
    hv = apply_hashednet(m, k=7, seed=1)
    d = 6 * 8 + 8 + 8 * 3 + 3
    counts = torch.bincount(hv.group, minlength=7)
    assert counts.sum() == d and counts.max() <= -(-d // 7)           # equal groups up to padding
    x = torch.rand(4, 6)
    m(x).sum().backward()
    # gradient of a shared value = sum of the weight gradients of its group
    m2 = Net()
    m2.load_state_dict({k: v for k, v in m.state_dict().items() if "parametrizations" not in k
                        and not k.startswith("hashed")}, strict=False)
    with torch.no_grad():
        vals = hv.values[hv.group]
        off = 0
        for mod in (m2.fc1, m2.fc2):
            for p in (mod.weight, mod.bias):
                p.copy_(vals[off:off + p.numel()].view_as(p))
                off += p.numel()
    m2(x).sum().backward()
    g = torch.cat([p.grad.reshape(-1) for mod in (m2.fc1, m2.fc2) for p in (mod.weight, mod.bias)])
    want = torch.zeros(7).index_add_(0, hv.group, g)
    assert torch.allclose(hv.values.grad, want, atol=1e-6)


def test_regression_recovers_alpha_in_span():
    torch.manual_seed(0)
    src = Net()
    core = apply_pranc(src, PrancConfig(k=5, seed=3, mode="streamed", init="l1-randn"))
    true_alpha = core.alpha.detach().clone()
    src.eval()
    dense = Net()
    dense.load_state_dict({**{k: v for k, v in src.state_dict().items() if k.startswith("bn.")},
                           "fc1.weight": src.fc1.weight, "fc1.bias": src.fc1.bias,
                           "fc2.weight": src.fc2.weight, "fc2.bias": src.fc2.bias})
    model, stats = regress_onto_basis(dense, k=5, seed=3)
    assert torch.allclose(pranc_core(model).alpha, true_alpha, atol=1e-4)
    assert stats["relative_residual"] < 1e-4
    _, stats_wrong = regress_onto_basis(dense, k=5, seed=4)
    assert stats_wrong["relative_residual"] > 0.5


def test_magnitude_pruning_keeps_exactly_the_largest():
    torch.manual_seed(0)
    m = Net()
    allw = torch.cat([p.detach().abs().reshape(-1) for p in (m.fc1.weight, m.fc1.bias, m.fc2.weight,
                                                             m.fc2.bias)])
    magnitude_prune(m, keep=10)
    kept = torch.cat([p.detach().reshape(-1) for p in (m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias)])
    assert int((kept != 0).sum()) == 10
    assert kept.abs().min() == 0 and kept.abs()[kept != 0].min() >= allw.topk(10).values.min()


def test_orthogonality_statistics_shrink_with_dimension():
    rows = orthogonality([10, 100, 1000], n=200, trials=2)
    assert rows[0]["mean_abs_cos"] > rows[1]["mean_abs_cos"] > rows[2]["mean_abs_cos"]
    assert rows[0]["max_abs_cos"] > rows[2]["max_abs_cos"]
    assert abs(rows[2]["norm_mean"] - 1) < 0.01


def test_magnitude_pruning_uses_the_one_mask_parametrization_and_keeps_the_largest_under_ties():
    from torch.nn.utils import parametrize

    from reparam.tickets.masks import MaskParam

    torch.manual_seed(0)
    m = Net()
    tensors = (m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias)
    with torch.no_grad():                       # integer magnitudes: many ties at the threshold
        for p in tensors:
            p.copy_(torch.randint(-3, 4, p.shape).float())
    flat = torch.cat([p.detach().abs().reshape(-1) for p in tensors])
    expected = torch.zeros_like(flat)
    expected[torch.topk(flat, 20).indices] = 1.0     # the rule the published numbers were measured with
    magnitude_prune(m, keep=20)
    plists = [m.fc1.parametrizations.weight, m.fc1.parametrizations.bias, m.fc2.parametrizations.weight,
              m.fc2.parametrizations.bias]
    assert all(isinstance(pl[0], MaskParam) and len(pl) == 1 for pl in plists)
    assert parametrize.is_parametrized(m.fc1, "weight")
    got = torch.cat([pl[0].mask.reshape(-1) for pl in plists])
    assert torch.equal(got, expected) and int(got.sum()) == 20
