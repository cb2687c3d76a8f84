"""Robust tickets: IMP/A-IMP, LMP, transfer protocols, OOD metrics (tiny model, synthetic data)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from reparam.experiments.tickets.evaluation import ood_metrics
from reparam.experiments.tickets.transfer import transfer
from reparam.tickets import masks as mk
from reparam.tickets.attacks import PGDConfig
from reparam.tickets.draw import IMPConfig, LMPConfig, ScoreMask, attach_scores, imp, imp_sparsity, lmp, omp
from reparam.tickets.hooks import AdversarialTraining
from reparam.tickets.patterns import Pattern
from reparam.train import TrainConfig, Trainer

torch.set_num_threads(1)


class Tiny(nn.Module):
    def __init__(self, classes: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 12, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(12)
        self.head = nn.Linear(12, classes)

    def features(self, x):
        x = F.relu(self.bn1(self.conv1(x - 0.5)))
        return F.relu(self.bn2(self.conv2(x))).mean((2, 3))

    def forward(self, x):
        return self.head(self.features(x))


def _splits(n=48, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = (torch.rand(n, 1, 6, 6, generator=g) * 0.5 + y.view(-1, 1, 1, 1) * 0.2).clamp(0, 1)
    ds = TensorDataset(x, y)
    return SimpleNamespace(name="toy", train=ds, val=ds, test=ds, num_classes=classes)


def _cfg(epochs=1, **kw):
    return TrainConfig(epochs=epochs, batch_size=16, lr=0.05, progress=False, checkpoint=False, **kw)


def test_imp_sparsity_schedule_nested_masks_and_rewind():
    torch.manual_seed(0)
    model = Tiny()
    data = _splits()
    theta_pre = mk.weights(model)
    rounds = imp(model, data, IMPConfig(rate=0.2, rounds=4, train=_cfg()), train_last=True)
    total = sum(v.numel() for v in theta_pre.values())
    prev = None
    for rec in rounds:
        kept, _ = mk.count(rec.masks)
        assert abs((total - kept) - imp_sparsity(0.2, rec.round) * total) <= 1
        if prev is not None:
            assert all(bool((rec.masks[k] <= prev[k]).all()) for k in prev)
        prev = rec.masks
    # round 1 = OMP at the rate
    om = omp(model, imp_sparsity(0.2, 1))
    assert all(torch.equal(om[k], rounds[0].masks[k]) for k in om)
    # rewinding: the ticket's weights are theta_pre * mask
    last = rounds[-1]
    ticket = Tiny()
    ticket.load_state_dict(model.state_dict())
    mk.apply_masks(ticket, last.masks)
    for k, w in mk.weights(ticket).items():
        assert torch.equal(w, theta_pre[k] * last.masks[k])
    # the trained state differs from theta_pre (training happened), and the input model is untouched
    assert all(torch.equal(v, theta_pre[k]) for k, v in mk.weights(model).items())


def test_aimp_uses_pgd_and_keeps_schedule():
    torch.manual_seed(0)
    model = Tiny()
    rounds = imp(model, _splits(), IMPConfig(rate=0.5, rounds=2, train=_cfg(), pgd=PGDConfig(eps=0.1, steps=2)))
    assert [round(r.sparsity, 2) for r in rounds] == [0.5, 0.75]


def test_imp_channel_and_nm_patterns():
    torch.manual_seed(0)
    model = Tiny()
    rounds = imp(model, _splits(), IMPConfig(rate=0.5, rounds=2, train=_cfg(), pattern=Pattern("channel"),
                                             scope="layer"))
    for m in rounds[-1].masks.values():
        f = m.reshape(m.shape[0], -1).sum(1)
        assert bool(((f == 0) | (f == m[0].numel())).all())
    rounds = imp(model, _splits(), IMPConfig(rate=0.5, rounds=2, train=_cfg(), pattern=Pattern("nm", 2, 4)))
    assert abs(rounds[-1].sparsity - 0.5) < 0.05


def test_lmp_exact_k_per_layer_weights_unchanged_and_ste_gradients():
    torch.manual_seed(0)
    model = Tiny()
    theta_pre = mk.weights(model)
    probe = Tiny()
    probe.load_state_dict(model.state_dict())
    attach_scores(probe, LMPConfig(sparsity=0.75))
    x, y = _splits().train.tensors
    F.cross_entropy(probe(x), y).backward()
    for mod in (probe.conv1, probe.conv2):
        s = next(p for p in mod.parametrizations.weight if isinstance(p, ScoreMask)).scores
        assert s.grad is not None and bool((s.grad != 0).all())
        assert mod.parametrizations.weight.original.grad is None

    masks, net, _ = lmp(model, _splits(), LMPConfig(sparsity=0.75, train=_cfg(2, optimizer="adam",
                                                                                weight_decay=0.0)))
    for m in masks.values():
        assert int(m.sum()) == max(1, round(0.25 * m.numel()))
    for name in ("conv1", "conv2"):
        assert torch.equal(getattr(net, name).parametrizations.weight.original, theta_pre[f"{name}.weight"])


def test_linear_eval_leaves_backbone_and_bn_stats_unchanged():
    torch.manual_seed(0)
    model = Tiny()
    data = _splits()
    Trainer(model, data, _cfg()).fit(resume=False)
    masks = omp(model, 0.5)
    net, res = transfer(model, masks, _splits(classes=2), "linear")
    before = {k: v for k, v in model.state_dict().items() if not k.startswith("head")}
    after = {k.replace("parametrizations.weight.original", "weight"): v for k, v in net.state_dict().items()
             if not k.startswith("head") and ".0.mask" not in k}
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert net.head.out_features == 2 and 0 <= res["test_acc"] <= 1


def test_full_finetune_keeps_mask():
    torch.manual_seed(0)
    model = Tiny()
    masks = omp(model, 0.8)
    net, res = transfer(model, masks, _splits(classes=2), "full", train_config=_cfg(3, weight_decay=0.1),
                        callbacks=[AdversarialTraining(PGDConfig(eps=0.05, steps=1))])
    for k, w in mk.weights(net).items():
        assert bool((w[masks[k] == 0] == 0).all())
    assert abs(mk.sparsity(mk.get_masks(net)) - 0.8) < 1e-3


def test_ood_metrics_exact_on_separable_scores():
    r = ood_metrics(torch.tensor([0.9, 0.8, 0.95, 0.85]), torch.tensor([0.1, 0.2, 0.3]))
    assert r["auroc"] == 1.0 and r["fpr95"] == 0.0
    r = ood_metrics(torch.tensor([0.1, 0.2]), torch.tensor([0.8, 0.9]))
    assert r["auroc"] == 0.0 and r["fpr95"] == 1.0


def test_bad_inputs_raise_reparam_error():
    from reparam.core.errors import ReparamError
    from reparam.tickets.patterns import parse_pattern

    for bad in ("nm:5:4", "diagonal", "nm:2"):
        with pytest.raises(ReparamError):
            parse_pattern(bad)
    with pytest.raises(ReparamError):
        omp(Tiny(), 1.0)
    with pytest.raises(ReparamError):
        mk.apply_masks(Tiny(), {"conv1.weight": torch.ones(2, 2)})
