"""Robust tickets: PGD, masks and sparsity patterns (exact properties on tiny models)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import prune

from reparam.tickets import masks as mk
from reparam.tickets.attacks import PGDConfig, pgd
from reparam.tickets.patterns import Pattern, parse_pattern, select

torch.set_num_threads(1)


class Tiny(nn.Module):
    def __init__(self, classes: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, classes)

    def features(self, x):
        x = F.relu(self.bn1(self.conv1((x - 0.5) / 0.25)))
        return F.relu(self.bn2(self.conv2(x))).mean((2, 3))

    def forward(self, x):
        return self.head(self.features(x))


def _data(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def reference_pgd_linf(model, x, y, eps, alpha, steps):
    """Independent oracle: one example at a time, no random start, explicit min/max projection."""
    model.eval()
    out = []
    for i in range(len(x)):
        xi, yi = x[i:i + 1].clone(), y[i:i + 1]
        adv = xi.clone()
        for _ in range(steps):
            adv = adv.clone().requires_grad_(True)
            loss = F.cross_entropy(model(adv), yi)
            loss.backward()
            adv = adv.detach() + alpha * adv.grad.sign()
            adv = torch.max(torch.min(adv, xi + eps), xi - eps)
            adv = torch.clamp(adv, 0.0, 1.0)
        out.append(adv)
    return torch.cat(out)


def test_pgd_stays_in_ball_and_box_and_raises_loss():
    torch.manual_seed(0)
    model = Tiny()
    x, y = _data()
    for norm, eps in (("linf", 0.1), ("l2", 0.5)):
        cfg = PGDConfig(eps=eps, norm=norm, steps=7)
        xa = pgd(model, x, y, cfg, generator=torch.Generator().manual_seed(1))
        d = (xa - x).flatten(1)
        size = d.abs().max(1).values if norm == "linf" else d.norm(dim=1)
        assert bool((size <= eps + 1e-6).all())
        assert xa.min() >= 0 and xa.max() <= 1
        model.eval()
        with torch.no_grad():
            assert F.cross_entropy(model(xa), y) > F.cross_entropy(model(x), y)


def test_pgd_matches_independent_reference_and_keeps_mode_and_grads():
    torch.manual_seed(0)
    model = Tiny()
    model(torch.rand(8, 1, 6, 6))  # fill BN stats in train mode
    model.train()
    x, y = _data()
    cfg = PGDConfig(eps=0.08, steps=5, alpha=0.02, random_start=False)
    xa = pgd(model, x, y, cfg)
    assert model.training  # restored
    assert all(p.grad is None for p in model.parameters())
    ref = reference_pgd_linf(model, x, y, 0.08, 0.02, 5)
    assert torch.allclose(xa, ref, atol=1e-6)


def test_pgd_zero_eps_is_identity():
    model = Tiny()
    x, y = _data()
    assert torch.equal(pgd(model, x, y, PGDConfig(eps=0.0)), x)


def test_omp_exact_sparsity_and_matches_torch_global_unstructured():
    torch.manual_seed(0)
    model = Tiny()
    scores = {k: v.abs() for k, v in mk.weights(model).items()}
    for s in (0.3, 0.5, 0.77):
        masks = select(scores, Pattern("unstructured"), s, "global")
        kept, total = mk.count(masks)
        assert total - kept == round(s * total)
        ref = Tiny()
        ref.load_state_dict(model.state_dict())
        prune.global_unstructured([(ref.conv1, "weight"), (ref.conv2, "weight")],
                                  pruning_method=prune.L1Unstructured, amount=s)
        ref_masks = mk.from_torch_prune(ref)
        assert set(ref_masks) == set(masks)
        for k in masks:
            assert torch.equal(masks[k], ref_masks[k])


def test_layer_scope_same_fraction_per_layer():
    model = Tiny()
    masks = select({k: v.abs() for k, v in mk.weights(model).items()}, Pattern("unstructured"), 0.5, "layer")
    for m in masks.values():
        assert int(m.sum()) == m.numel() - round(0.5 * m.numel())


def test_masks_never_revived_by_momentum_and_weight_decay():
    torch.manual_seed(0)
    model = Tiny()
    masks = select({k: v.abs() for k, v in mk.weights(model).items()}, Pattern("unstructured"), 0.6)
    mk.apply_masks(model, masks)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    x, y = _data(32)
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    for k, w in mk.weights(model).items():
        assert bool((w[masks[k] == 0] == 0).all())
        assert bool((w[masks[k] == 1] != 0).all())
    assert mk.get_masks(model).keys() == masks.keys()


def test_mask_save_load_roundtrip_and_torch_prune_conversion(tmp_path):
    model = Tiny()
    masks = select({k: v.abs() for k, v in mk.weights(model).items()}, Pattern("unstructured"), 0.4)
    mk.save_masks(tmp_path / "m.safetensors", masks, {"scheme": "omp"})
    loaded, header = mk.load_masks(tmp_path / "m.safetensors")
    assert header["scheme"] == "omp" and abs(header["sparsity"] - mk.sparsity(masks)) < 1e-12
    assert all(torch.equal(loaded[k], masks[k]) for k in masks)
    plain = Tiny()
    mk.to_torch_prune(plain, masks)
    back = mk.from_torch_prune(plain)
    assert all(torch.equal(back[k], masks[k]) for k in masks)


def test_nm_groups_have_at_most_n_nonzeros():
    torch.manual_seed(0)
    w = torch.randn(6, 5, 3, 3)   # row length 45, not a multiple of 4 or 8
    for n, m in ((2, 4), (1, 4), (4, 8)):
        mask = select({"a.weight": w.abs()}, parse_pattern(f"nm:{n}:{m}"), 0.0)["a.weight"]
        rows = mask.reshape(6, -1)
        pad = (-rows.shape[1]) % m
        groups = torch.cat([rows, torch.zeros(6, pad)], 1).reshape(6, -1, m).sum(2)
        assert int(groups.max()) <= n
        assert int(groups[:, :-1].min()) == n   # full groups keep exactly n


def test_channel_pattern_zeroes_whole_filters():
    torch.manual_seed(0)
    model = Tiny()
    scores = {k: v.abs() for k, v in mk.weights(model).items()}
    for scope in ("layer", "global"):
        masks = select(scores, Pattern("channel"), 0.5, scope)
        for m in masks.values():
            per_filter = m.reshape(m.shape[0], -1)
            assert bool(((per_filter.sum(1) == 0) | (per_filter.sum(1) == per_filter.shape[1])).all())
            assert per_filter.sum() > 0
    masks = select(scores, Pattern("channel"), 0.5, "layer")
    assert int(masks["conv2.weight"].reshape(8, -1).sum(1).gt(0).sum()) == 4


def test_prunable_filter_excludes_head_and_optionally_first_conv():
    model = Tiny()
    assert mk.layer_names(model) == ["conv1", "conv2"]
    assert mk.layer_names(model, mk.prunable(first_conv=False)) == ["conv2"]
    assert mk.layer_names(model, mk.prunable(linear=True)) == ["conv1", "conv2"]  # head never


def test_channel_ticket_export_is_exact_and_smaller():
    from reparam.models import build_model
    from reparam.tickets.export import apply_param_masks, channel_masks_with_bn, export_channel_ticket

    torch.manual_seed(0)
    model = build_model("cnn", num_classes=3, in_channels=1, image_size=(8, 8), width=0.25)
    x = torch.rand(4, 1, 8, 8)
    model(torch.rand(16, 1, 8, 8))          # non-trivial BN statistics
    model.eval()
    masks = select({k: v.abs() for k, v in mk.weights(model).items()}, Pattern("channel"), 0.5, "layer")
    small = export_channel_ticket(model, masks, x)
    masked = apply_param_masks(__import__("copy").deepcopy(model), channel_masks_with_bn(model, masks, x))
    masked.eval()
    small.eval()
    with torch.no_grad():
        assert torch.allclose(small(x), masked(x), atol=1e-5)
    n_small = sum(p.numel() for p in small.parameters())
    n_full = sum(p.numel() for p in model.parameters())
    assert n_small < 0.5 * n_full
    # sizes come from reparam's one MACs counter, per image
    from reparam.metrics import count_macs
    from reparam.tickets.export import size_report

    dense, exported = size_report(model, x), size_report(small, x)
    assert dense["macs"] == count_macs(model, (1, 1, 8, 8)) > 0 and dense["params"] == n_full
    assert exported["macs"] == count_macs(small, (1, 1, 8, 8)) < 0.5 * dense["macs"]
    assert exported["params"] == n_small


def test_noise_training_callback_and_domain_shifts():
    from reparam.experiments.tickets.targets import apply_shift, register_targets
    from reparam.tickets import attacks, hooks
    from reparam.tickets.hooks import GaussianNoiseTraining

    assert attacks.GaussianNoiseTraining is GaussianNoiseTraining               # the old import path
    assert attacks.AdversarialTraining is hooks.AdversarialTraining

    x = torch.rand(5, 1, 8, 8)
    xn, _ = GaussianNoiseTraining(0.5).before_forward(x, None)
    assert xn.min() >= 0 and xn.max() <= 1 and not torch.equal(xn, x)
    assert torch.equal(apply_shift(x, "inverted"), 1 - x)
    assert torch.equal(apply_shift(x, "rotated"), torch.rot90(x, 1, (2, 3)))
    assert torch.equal(apply_shift(x, "noisy", seed=3), apply_shift(x, "noisy", seed=3))
    b = apply_shift(x, "blurred")
    assert b.shape == x.shape and b.std() < x.std()
    names = register_targets()
    assert {"digits-inverted", "digits28", "digits28-noisy", "fashion-mnist-rotated"} <= set(names)
    from reparam.data import load_dataset

    d = load_dataset("digits28-inverted", classes=[5, 6])
    assert d.image_size == (28, 28) and d.num_classes == 2


def test_prunable_filter_is_reusable_across_models():
    from reparam.models import build_model

    f = mk.prunable(first_conv=False)
    assert mk.layer_names(Tiny(), f) == ["conv2"]
    cnn = build_model("cnn", num_classes=3, in_channels=1, image_size=(8, 8), width=0.25)
    assert mk.layer_names(cnn, f) == ["body.3", "body.7"]
