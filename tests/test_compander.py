"""Exactness tests for the Weight Compander: math, init, gradients, decay, fold, optimizer, baselines."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from reparam.compander import (
    CompanderAdam,
    CompanderConfig,
    add_psi_decay_grad,
    apply,
    compander_adam,
    compander_layers,
    dpsi,
    fold,
    latent_parameters,
    learned_scales,
    param_groups,
    plain_state_dict,
    psi,
    psi_decay_penalty,
    psi_inverse,
    scale_parameters,
    weight_stats,
)
from reparam.core.errors import ReparamError
from reparam.core.protocol import ReparamWarning
from reparam.experiments.compander.baselines import apply_powerprop, apply_weight_norm
from reparam.experiments.compander.variants import fold_variant

torch.set_num_threads(1)


def tiny_cnn(seed: int = 0, bias: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=bias), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=bias), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )


def batch(seed: int = 1, n: int = 16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def train_steps(model: nn.Module, steps: int = 5, lr: float = 0.1, scale: float = 1.0, opt=None):
    opt = opt or torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for i in range(steps):
        x, y = batch(10 + i)
        loss = nn.functional.cross_entropy(model(x), y) * scale
        opt.zero_grad()
        loss.backward()
        opt.step()
    return opt


@pytest.mark.parametrize("fn", ["arctan", "asinh", "erf"])
def test_inverse_round_trip(fn):
    torch.manual_seed(0)
    a, b = 0.8, 0.5
    w = (torch.rand(10000) * 2 - 1) * 0.7  # inside every bound (erf needs |w| < a)
    v = psi_inverse(w.double(), a, b, fn).float()
    assert torch.allclose(psi(v, a, b, fn), w, rtol=0, atol=3e-7)


def test_dpsi_closed_form_and_at_zero():
    a, b = 0.8, 0.5
    assert float(dpsi(torch.zeros(1), a, b)) == pytest.approx(a / b, rel=1e-7)
    v = torch.linspace(-5, 5, 101, dtype=torch.float64, requires_grad=True)
    for fn in ("arctan", "asinh", "erf"):
        (g,) = torch.autograd.grad(psi(v, a, b, fn).sum(), v)
        assert torch.allclose(g, dpsi(v.detach(), a, b, fn), rtol=1e-12, atol=1e-14)
    # the [derived] identity Psi'(v) = (a / b) cos^2(w / a)
    w = psi(v.detach(), a, b)
    assert torch.allclose(dpsi(v.detach(), a, b), a / b * torch.cos(w / a) ** 2, rtol=1e-10)


@pytest.mark.parametrize("learnable", [None, "fine", "coarse"])
@pytest.mark.parametrize("init", ["default", "vgg"])
def test_outputs_identical_at_init(learnable, init):
    base = tiny_cnn()
    if init == "vgg":  # N(0, sqrt(2/n)), n = k*k*out_channels (chengyangfu/pytorch-vgg-cifar10)
        for m in base.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / n))
    base.eval()
    model = copy.deepcopy(base)
    a, b = (0.5, 1.0) if learnable else (0.8, 0.5)
    names = apply(model, CompanderConfig(a=a, b=b, learnable=learnable)).layers
    assert names == ["0", "3", "8"]  # first conv and last linear included
    x, _ = batch()
    diff = (model(x) - base(x)).abs().max()
    assert diff < 1e-6
    for name in names:
        w0, w1 = base.get_submodule(name).weight, model.get_submodule(name).weight
        assert torch.allclose(w1, w0, rtol=0, atol=2e-7)


def test_nothing_on_batchnorm_or_bias():
    model = tiny_cnn(bias=True)
    apply(model, CompanderConfig(), filter_fn=lambda m, n: True)  # a filter that picks everything
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert not parametrize.is_parametrized(m), name
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert parametrize.is_parametrized(m, "weight")
            assert not parametrize.is_parametrized(m, "bias")
    assert len(compander_layers(model)) == 3


def test_filter_excludes_layers():
    model = tiny_cnn()
    with pytest.warns(ReparamWarning, match="left 122 of 770 parameters dense"):   # the head stays plain
        h = apply(model, CompanderConfig(), filter_fn=lambda m, n: n != "8")
    assert h.layers == ["0", "3"]
    assert not parametrize.is_parametrized(model[8])
    assert ("8.weight", 80) in h.left_dense


def test_bound_holds_under_huge_gradients():
    a, b = 0.8, 0.5
    model = tiny_cnn()
    apply(model, CompanderConfig(a=a, b=b))
    bound32 = torch.tensor(a * math.pi / 2, dtype=torch.float32)
    opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)
    for i in range(6):
        train_steps(model, steps=1, scale=1e6 * (10 ** i), opt=opt)
        for name, m, _ in compander_layers(model):
            assert m.weight.abs().max() <= bound32, (name, i)
            assert torch.isfinite(m.weight).all()
    v_max = max(float(v.detach().abs().max()) for v in latent_parameters(model))
    assert v_max > 1e3  # the latent really was pushed far out; only Psi kept w bounded
    # strictly below the bound where float32 can still resolve it
    v = torch.tensor([1e3, -1e4, 1e5])
    assert (psi(v, a, b).abs() < bound32).all()


def test_autograd_gradient_matches_eq3():
    a, b = 0.8, 0.5
    model = tiny_cnn()
    apply(model, CompanderConfig(a=a, b=b))
    train_steps(model, steps=3)  # move v away from init
    x, y = batch(5)
    model.zero_grad()
    with parametrize.cached():
        ws = [m.weight for _, m, _ in compander_layers(model)]
        for w in ws:
            w.retain_grad()
        nn.functional.cross_entropy(model(x), y).backward()
    for w, v in zip(ws, latent_parameters(model)):
        expected = w.grad * a * b / (b * b + v.detach() ** 2)
        assert torch.allclose(v.grad, expected, rtol=1e-5, atol=1e-10)


def test_penalty_gradient_equals_wd_psi_dpsi():
    wd = 5e-4
    model = tiny_cnn()
    apply(model, CompanderConfig())
    train_steps(model, steps=2)
    vs = latent_parameters(model)
    model.zero_grad()
    psi_decay_penalty(model, wd).backward()
    by_loss = [v.grad.clone() for v in vs]
    model.zero_grad()
    add_psi_decay_grad(model, wd)
    for v, g_loss in zip(vs, by_loss):
        closed = wd * psi(v.detach(), 0.8, 0.5) * dpsi(v.detach(), 0.8, 0.5)
        assert torch.allclose(v.grad, closed, rtol=1e-6, atol=1e-12)
        assert torch.allclose(g_loss, closed, rtol=1e-5, atol=1e-12)


def test_penalty_is_half_lambda_sum_w_squared():
    """lambda/2 convention: the penalty is (wd/2) * sum w^2 over the layers' actual weights w = Psi(v),
    whose w-gradient wd * w is what torch SGD's weight_decay=wd adds for a plain weight."""
    model = tiny_cnn()
    apply(model, CompanderConfig())
    wd = 1e-3
    expected = 0.5 * wd * sum(float(m.weight.detach().pow(2).sum()) for _, m, _ in compander_layers(model))
    assert float(psi_decay_penalty(model, wd).detach()) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("learnable", [None, "fine"])
def test_folded_equals_trained_and_loads_into_plain(learnable):
    model = tiny_cnn()
    apply(model, CompanderConfig(a=0.5, b=1.0, learnable=learnable) if learnable else CompanderConfig())
    train_steps(model, steps=4)
    model.eval()
    x, _ = batch(7)
    with torch.no_grad():
        trained = model(x)
        sd = plain_state_dict(model)
    folded = fold(copy.deepcopy(model))
    assert not any(parametrize.is_parametrized(m) for m in folded.modules())
    with torch.no_grad():
        assert torch.equal(folded(x), trained)
    plain = tiny_cnn(seed=3).eval()
    assert sum(p.numel() for p in folded.parameters()) == sum(p.numel() for p in plain.parameters())
    plain.load_state_dict(sd, strict=True)
    with torch.no_grad():
        assert torch.equal(plain(x), trained)
    plain.load_state_dict(folded.state_dict(), strict=True)


@pytest.mark.parametrize("learnable", ["fine", "coarse"])
@pytest.mark.parametrize("positivity", ["abs", "softplus"])
def test_learnable_ab_get_gradients_and_no_decay(learnable, positivity):
    model = tiny_cnn()
    apply(model, CompanderConfig(a=0.5, b=1.0, learnable=learnable, positivity=positivity))
    ab = scale_parameters(model)
    assert len(ab) == (6 if learnable == "fine" else 2)
    for a, b in learned_scales(model).values():
        assert a == pytest.approx(0.5, abs=1e-6) and b == pytest.approx(1.0, abs=1e-6)
    cfg = CompanderConfig(learnable=learnable)
    groups = param_groups(model, 5e-4, cfg)
    by_name = {g["name"]: g for g in groups}
    assert by_name["compander_ab"]["weight_decay"] == 0.0
    assert by_name["compander_v"]["weight_decay"] == 5e-4  # learnable WC decays v (paper)
    assert {id(p) for p in by_name["compander_ab"]["params"]} == {id(p) for p in ab}
    n_group = sum(len(g["params"]) for g in groups)
    assert n_group == len(list(model.parameters()))
    x, y = batch()
    nn.functional.cross_entropy(model(x), y).backward()
    for p in ab:
        assert p.grad is not None and float(p.grad.abs()) > 0
    # zero gradient + decay group 0 => a, b do not move, whatever the weight decay
    opt = torch.optim.SGD(groups, lr=0.1)
    before = [p.detach().clone() for p in ab]
    model.zero_grad()
    for p in ab:
        p.grad = torch.zeros_like(p)
    opt.step()
    assert all(torch.equal(p, q) for p, q in zip(ab, before))


def test_fixed_wc_groups_do_not_decay_v():
    model = tiny_cnn()
    apply(model, CompanderConfig())
    groups = {g["name"]: g for g in param_groups(model, 5e-4, CompanderConfig())}
    assert groups["compander_v"]["weight_decay"] == 0.0
    assert groups["rest_no_decay"]["weight_decay"] == 0.0  # BN keeps the baseline's rule (no decay on 1-d)
    assert "compander_ab" not in groups
    v_groups = {g["name"]: g for g in param_groups(model, 5e-4, CompanderConfig(weight_decay="v"))}
    assert v_groups["compander_v"]["weight_decay"] == 5e-4


def test_learnable_b_stays_positive():
    model = tiny_cnn()
    apply(model, CompanderConfig(a=0.5, b=1.0, learnable="fine", positivity="abs"))
    _, _, comp = compander_layers(model)[0]
    with torch.no_grad():
        comp.scale.b.fill_(-0.3)
        comp.scale.a.fill_(0.0)
    a, b = comp.scale.values()
    assert float(b.detach()) == pytest.approx(0.3) and float(a.detach()) == pytest.approx(1e-3)
    soft = tiny_cnn()
    apply(soft, CompanderConfig(a=0.5, b=1.0, learnable="fine"))  # default softplus
    _, _, comp = compander_layers(soft)[0]
    with torch.no_grad():
        comp.scale.b.fill_(-50.0)
    assert 0 < float(comp.scale.values()[1].detach()) < 2e-3


def test_out_of_bound_init_errors_or_clamps():
    model = tiny_cnn()
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = 2.0  # > 0.8 * pi / 2
    with pytest.raises(ReparamError, match="bound"):
        apply(copy.deepcopy(model), CompanderConfig(a=0.8, b=0.5))
    clamped = copy.deepcopy(model)
    with pytest.warns(UserWarning, match="clamped 1 initial"):
        apply(clamped, CompanderConfig(a=0.8, b=0.5, on_out_of_bound="clamp"))
    w = clamped[0].weight
    assert torch.isfinite(w).all() and float(w.detach().abs().max()) < 0.8 * math.pi / 2
    with pytest.raises(ReparamError, match="erf"):
        m2 = tiny_cnn()
        with torch.no_grad():
            m2[8].weight[0, 0] = 0.6
        apply(m2, CompanderConfig(a=0.5, b=0.5, fn="erf"))


def test_bad_config_values():
    # checked when the Config is built, each error naming the field
    for kwargs, field in ((dict(a=-1), "a"), (dict(b=0), "b"), (dict(fn="tanh"), "tanh"),
                          (dict(learnable="medium"), "learnable"), (dict(wd=-1.0), "wd"),
                          (dict(clamp_margin=1.0), "clamp_margin"), (dict(weight_decay="l1"), "weight_decay")):
        with pytest.raises(ReparamError, match=field):
            CompanderConfig(**kwargs)
    cfg = CompanderConfig()
    cfg.a = 0.0                      # changed after construction: apply checks again
    with pytest.raises(ReparamError, match="a must be"):
        apply(tiny_cnn(), cfg)
    model = tiny_cnn()
    apply(model, CompanderConfig())
    with pytest.raises(ReparamError, match="compander is already applied"):
        apply(model, CompanderConfig())


def test_modified_adam_step_is_adam_in_w_space_times_dpsi():
    a, b = 0.8, 0.5
    torch.manual_seed(0)
    v = nn.Parameter(torch.randn(50) * 0.7)
    w_ref = nn.Parameter(psi(v.detach(), a, b).clone())
    opt = CompanderAdam([v], lr=1e-2, derivatives={v: lambda t: dpsi(t, a, b)})
    ref = torch.optim.Adam([w_ref], lr=1e-2)
    target = torch.randn(50)
    for _ in range(5):
        # the same w-space gradient for both: dL/dw at the current w = Psi(v)
        w = psi(v, a, b)
        loss = ((w - target) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        g_w = 2 * (psi(v.detach(), a, b) - target)
        w_ref.grad = g_w.clone()
        slope = dpsi(v.detach(), a, b)
        v_before, w_before = v.detach().clone(), w_ref.detach().clone()
        opt.step()
        ref.step()
        adam_step = w_ref.detach() - w_before
        assert torch.allclose(v.detach() - v_before, adam_step * slope, rtol=1e-4, atol=5e-7)
        with torch.no_grad():
            w_ref.copy_(psi(v, a, b))  # keep the reference at the same point


def test_compander_adam_on_model_and_plain_params():
    model = tiny_cnn()
    apply(model, CompanderConfig())
    opt = compander_adam(model, param_groups(model, 0.0, CompanderConfig()), lr=1e-3)
    assert len(opt._derivatives) == 3
    train_steps(model, steps=3, opt=opt)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_weight_norm_and_powerprop_baselines():
    base = tiny_cnn().eval()
    x, _ = batch()
    for apply_fn in (apply_weight_norm, lambda m: apply_powerprop(m, alpha=2.0)):
        model = copy.deepcopy(base)
        names = apply_fn(model)
        assert names == ["0", "3", "8"]
        assert (model(x) - base(x)).abs().max() < 1e-5
        model.train()
        train_steps(model, steps=2)
        model.eval()
        with torch.no_grad():
            out = model(x)
        assert fold(model) is model and parametrize.is_parametrized(model[0])   # not the compander's
        folded = fold_variant(model)
        assert not any(parametrize.is_parametrized(m) for m in folded.modules())
        with torch.no_grad():
            assert torch.equal(folded(x), out)


def test_weight_stats_reports_bound_and_ab():
    model = tiny_cnn()
    apply(model, CompanderConfig(a=0.5, b=1.0, learnable="fine"))
    st = weight_stats(model)
    rec = st["layers"]["0"]
    assert len(rec["pct"]) == 9 and rec["pct"][0] >= rec["pct"][4] >= rec["pct"][8]
    assert rec["bound"] == pytest.approx(0.5 * math.pi / 2, rel=1e-6)
    assert rec["a"] == pytest.approx(0.5) and rec["b"] == pytest.approx(1.0)
    assert 0 <= st["near0"] <= 1 and st["max_abs"] == max(r["max_abs"] for r in st["layers"].values())
