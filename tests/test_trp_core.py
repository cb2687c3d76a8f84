"""TRP core math: reshapes, rank rules, projection, nuclear sub-gradient, decomposition, FLOPs."""

import pytest
import torch
import torch.nn as nn

from reparam.core.errors import ReparamError
from reparam.trp import (
    RankRule,
    TRPConfig,
    conv_macs,
    decompose_conv,
    decompose_model,
    energy_rank,
    formula_macs,
    fraction_rank,
    from_matrix,
    low_rank,
    max_rank,
    nuclear_norm,
    nuclear_subgradient,
    project_,
    select_targets,
    skeleton,
    speedup,
    to_matrix,
    value_rank,
)

torch.set_num_threads(1)
SCHEMES = ["channel", "spatial", "nd"]


def _w(shape=(6, 4, 3, 5), seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("shape", [(6, 4, 3, 5), (1, 1, 1, 1), (8, 3, 3, 3), (2, 7, 5, 1)])
def test_reshape_round_trip_is_exact(scheme, shape):
    w = _w(shape)
    assert torch.equal(from_matrix(to_matrix(w, scheme), scheme, w.shape), w)


def test_reshape_layouts_match_the_spec():
    w = _w((6, 4, 3, 5))
    n, c, kh, kw = w.shape
    m = to_matrix(w, "NC")
    assert m.shape == (n, c * kh * kw) and m[2, 1 * kh * kw + 2 * kw + 4] == w[2, 1, 2, 4]
    v = to_matrix(w, "VH")
    assert v.shape == (c * kh, n * kw)
    assert v[1 * kh + 2, 5 * kw + 3] == w[5, 1, 2, 3]  # rows (c, kh), cols (n, kw)
    assert to_matrix(w, "nd").shape == (n, c, kh * kw)
    assert max_rank(w.shape, "spatial") == min(c * kh, n * kw)


def test_unknown_scheme_is_a_clear_error():
    with pytest.raises(ReparamError, match="unknown scheme 'xy'"):
        to_matrix(_w(), "xy")


def test_energy_rank_is_eq3_literally():
    s = torch.tensor([3.0, 2.0, 1.0, 0.5])            # energies 9, 4, 1, 0.25; total 14.25
    total = 14.25
    assert energy_rank(s, 0.25 / total) == 3           # tail after 3 = 0.25 <= e*total exactly
    assert energy_rank(s, 0.25 / total - 1e-9) == 4
    assert energy_rank(s, 1.25 / total) == 2
    assert energy_rank(s, 0.999) == 1                  # k >= 1 always
    assert energy_rank(s, 0.0) == 4                    # e -> 0: full rank
    assert energy_rank(s, 1e-12) == 4
    assert energy_rank(torch.zeros(5), 0.1) == 1       # all-zero weight
    assert energy_rank(torch.tensor([2.0, 0.0, 0.0]), 0.0) == 1  # exact rank, nothing to keep beyond


def test_energy_rank_matches_code_threshold_complement():
    s = torch.linalg.svdvals(torch.randn(20, 30, generator=torch.Generator().manual_seed(1)))
    for e in (0.01, 0.05, 0.1, 0.3):
        frac = torch.cumsum(s**2, 0) / (s**2).sum()    # the code's EnergyThreshold(T = 1 - e)
        code_k = int((frac < 1 - e - 1e-12).sum()) + 1
        assert energy_rank(s, e) == code_k


def test_other_rank_rules_and_their_errors():
    s = torch.tensor([1.0, 0.2, 0.05, 0.01])
    assert value_rank(s, 0.05) == 3 and value_rank(s, 5.0) == 1
    assert fraction_rank(s, 0.5) == 2 and fraction_rank(s, 0.1) == 1
    assert RankRule.parse("rank:9")(s) == 4 and RankRule.parse("energy:0.5")(s) == 1
    for bad in ("energy:0", "energy:1", "energy:1.5", "rank:0", "fraction:0", "banana:1", "energy"):
        with pytest.raises(ReparamError):
            RankRule.parse(bad)
    with pytest.raises(ReparamError, match="energy must be in"):
        TRPConfig(energy=1.0)
    with pytest.raises(ReparamError, match="period"):
        TRPConfig(period=0)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_projection_has_rank_k_and_is_idempotent(scheme):
    w = _w((8, 6, 3, 3), seed=2)
    p, ranks = low_rank(w, scheme, RankRule("energy", 0.2))
    mats = to_matrix(p, scheme)
    got = [int(torch.linalg.matrix_rank(m)) for m in (mats if scheme == "nd" else [mats])]
    assert got == ranks and min(ranks) >= 1
    assert max(ranks) < max_rank(w.shape, scheme)
    pp, _ = low_rank(p, scheme, ranks)
    assert torch.allclose(pp, p, atol=1e-5)


def test_project_in_place_keeps_the_parameter_object():
    conv = nn.Conv2d(4, 6, 3)
    param = conv.weight
    ranks = project_(conv, "channel", 2)
    assert conv.weight is param and ranks == [2]
    assert int(torch.linalg.matrix_rank(to_matrix(conv.weight.detach(), "channel"))) == 2


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_nuclear_subgradient_properties(scheme):
    w = _w((6, 4, 3, 3), seed=3)
    g = nuclear_subgradient(w, scheme, "full")
    assert torch.allclose((g * w).sum(), nuclear_norm(w, scheme), rtol=1e-5)   # <U V^T, W> = ||W||_*
    wr = w.clone().requires_grad_(True)
    torch.linalg.matrix_norm(to_matrix(wr, scheme), ord="nuc").backward()
    assert torch.allclose(wr.grad, g, atol=1e-5)                                # the true gradient here
    gk = nuclear_subgradient(w, scheme, RankRule("energy", 0.3))                 # the code's variant
    assert int(torch.linalg.matrix_rank(to_matrix(gk, scheme))) == energy_rank(
        torch.linalg.svdvals(to_matrix(w, scheme)), 0.3)


def test_nuclear_subgradient_full_on_a_low_rank_weight_uses_its_rank():
    p, (k,) = low_rank(_w((8, 8, 3, 3), seed=4), "channel", 3)
    g = nuclear_subgradient(p, "channel", "full")
    assert int(torch.linalg.matrix_rank(to_matrix(g, "channel"))) == k == 3
    assert torch.allclose((g * p).sum(), nuclear_norm(p, "channel"), rtol=1e-4)


CONVS = [
    dict(in_channels=5, out_channels=7, kernel_size=3, padding=1, bias=True),
    dict(in_channels=5, out_channels=7, kernel_size=3, stride=2, padding=1, bias=False),
    dict(in_channels=5, out_channels=7, kernel_size=(3, 5), stride=(2, 1), padding=(1, 2), bias=True),
    dict(in_channels=4, out_channels=6, kernel_size=3, dilation=2, padding=2, bias=True),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding="same", bias=True),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, padding_mode="circular", bias=True),
    dict(in_channels=4, out_channels=6, kernel_size=(5, 3), stride=(1, 2), padding=0, bias=True),
]


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("kw", CONVS)
def test_decomposed_conv_equals_projected_conv(scheme, kw):
    if scheme == "nd" and kw.get("padding") == "same":
        pytest.skip("same as the padding=1 case")
    torch.manual_seed(0)
    conv = nn.Conv2d(**kw)
    rule = RankRule("energy", 0.15)
    ranks = project_(conv, scheme, rule)
    mod, got = decompose_conv(conv, scheme, ranks)
    assert got == ranks
    x = torch.randn(2, kw["in_channels"], 11, 9)
    with torch.no_grad():
        assert (mod(x) - conv(x)).abs().max() <= 1e-5


def test_decomposed_layer_shapes_follow_the_spec():
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1)
    a, b = decompose_conv(conv, "spatial", 3)[0]
    assert a.kernel_size == (3, 1) and a.stride == (2, 1) and a.padding == (1, 0) and a.bias is None
    assert b.kernel_size == (1, 3) and b.stride == (1, 2) and b.padding == (0, 1) and b.bias is not None
    a, b = decompose_conv(conv, "channel", 3)[0]
    assert a.kernel_size == (3, 3) and a.stride == (2, 2) and b.kernel_size == (1, 1) and b.stride == (1, 1)


def _resnet():
    from reparam.models import build_model

    torch.manual_seed(0)
    m = build_model("resnet20", num_classes=10, in_channels=1, image_size=(8, 8))
    # non-trivial BN statistics so the check is not dominated by zeros
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
@pytest.mark.parametrize("only_stride1", [True, False])
def test_resnet20_decomposed_logits_equal_projected_logits(scheme, only_stride1):
    model = _resnet()
    targets = select_targets(model)
    assert len(targets) == 18 and "conv1" not in dict(targets)
    ranks = {name: project_(conv, scheme, RankRule("energy", 0.5))[0] for name, conv in targets}
    small, plans = decompose_model(model, scheme, ranks, only_stride1=only_stride1)
    assert sum(p.decompose for p in plans) == (16 if only_stride1 else 18)
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert (small(x) - model(x)).abs().max() <= 1e-4
    shape = (1, 8, 8)
    assert formula_macs(model, plans, scheme, shape) == conv_macs(small, shape)   # paper formula == hooks
    sp = speedup(model, small, shape)
    assert sp["flops_speedup"] > 1.0
    rebuilt = skeleton(model, scheme, plans)
    rebuilt.load_state_dict(small.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(x), small(x))


def test_nd_model_formula_matches_hooks():
    model = _resnet()
    small, plans = decompose_model(model, "nd", "energy:0.2", only_stride1=False)
    assert formula_macs(model, plans, "nd", (1, 8, 8)) == conv_macs(small, (1, 8, 8))


def test_conv_macs_is_half_of_torch_flop_counter_for_convs():
    from torch.utils.flop_counter import FlopCounterMode

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, stride=2), nn.Flatten())
    with FlopCounterMode(display=False) as fc:
        model(torch.zeros(1, 3, 10, 10))
    assert 2 * conv_macs(model, (3, 10, 10)) == fc.get_total_flops()


def test_model_without_eligible_layers_is_an_error():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1), nn.Flatten())
    with pytest.raises(ReparamError, match="no eligible layers"):
        select_targets(model)
    assert len(select_targets(model, skip_stem=False)) == 1
