"""MixtureGrowth on the one protocol: Config checks, apply -> Applied (checks everything first, refuses
naming the layer, never a half-converted model), fold, and the own-loop example of docs/mixturegrowth.md."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

import reparam
from docexamples import doc_path, own_loop_code
from reparam import mixturegrowth as mg
from reparam.core.errors import ReparamError
from reparam.core.protocol import Applied, ReparamWarning, claim, methods_on

DOC = doc_path("mixturegrowth")




def _snapshot(model: nn.Module):
    return str(model), {k: v.clone() for k, v in model.state_dict().items()}


def _same(model: nn.Module, snap) -> bool:
    text, state = snap
    now = model.state_dict()
    return str(model) == text and now.keys() == state.keys() and all(torch.equal(now[k], v) for k, v in state.items())


def _wrn(name="wrn-10-1", seed=0, **kw):
    torch.manual_seed(seed)
    return mg.build_wrn(name, num_classes=10, in_channels=1, **kw)


def test_own_loop_example_from_the_docs():
    ns: dict = {}
    exec(compile(own_loop_code("mixturegrowth"), str(DOC), "exec"), ns)      # the example asserts fold == grown outputs
    for phase in ("net1", "net2", "grown"):
        losses = ns[phase]
        assert losses[-1] < losses[0], phase                    # every phase of the plain loop learns
    plain = ns["plain"]
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())
    assert not any(isinstance(m, mg.MemberBatchNorm2d) for m in plain.modules())
    assert plain.head.weight.shape == (10, 64) and plain.conv_3x3.weight.shape == (16, 1, 3, 3)
    assert isinstance(ns["handle"], Applied) and ns["handle"].method == "mixturegrowth"


def test_config_checks_every_field():
    assert mg.MixtureGrowthConfig is mg.Config and mg.fold_to_plain is mg.fold
    bad = [({"g": 3}, "g"), ({"g": 2.0}, "g"), ({"n_templates": 0}, "n_templates"),
           ({"n_templates": True}, "n_templates"), ({"share_templates": 1}, "share_templates"),
           ({"train_end_coefs": "yes"}, "train_end_coefs"), ({"full_input": "conv_3x3"}, "full_input"),
           ({"full_output": ("head", 3)}, "full_output")]
    for kwargs, field in bad:
        with pytest.raises(ReparamError, match=f"^{field}"):
            mg.Config(**kwargs)
    assert mg.Config(full_input=["conv_3x3"]).full_input == ("conv_3x3",)


def test_applied_handle_counts():
    model = _wrn("wrn-10-2")
    dense = sum(p.numel() for p in model.parameters())
    h = mg.apply(model)
    convs = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    bns = [n for n, m in model.named_modules() if isinstance(m, mg.MemberBatchNorm2d)]
    assert h.layers == convs + bns and len(convs) == 11 and len(bns) == 4
    assert h.tensors[0] == "conv_3x3.weight" and "lastact.0.bias" in h.tensors
    assert h.stored == sum(p.numel() for p in model.parameters())      # templates + coefficients + BN
    assert h.dense_params == dense and h.left_dense == [] and h.hooks == []
    assert mg.TemplateMix.reparam_method == "mixturegrowth"
    rows = reparam.summary(model, print_table=False)
    assert rows[-1].stored == h.stored


def test_filter_fn_excluded_layer_stays_bit_identical():
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(adapter=nn.Conv2d(1, 3, 1), body=mg.build_wrn(
        "wrn-10-1", num_classes=10, in_channels=3)))
    before = [t.clone() for t in (model.adapter.weight, model.adapter.bias)]
    snap = _snapshot(model)
    with pytest.raises(ReparamError, match="'adapter'.*bias"):
        mg.apply(model)                                        # on the grown path it would be refused
    assert _same(model, snap)
    h = mg.apply(model, filter_fn=lambda m, name: not name.startswith("adapter"))
    assert h.left_dense == [("adapter.weight", 3), ("adapter.bias", 3)]
    assert h.layers[0] == "body.conv_3x3" and model.body.conv_3x3.weight.shape == (8, 3, 3, 3)
    x = torch.rand(4, 1, 8, 8)
    model(x).sum().backward()
    mg.grow(model)
    model(x)
    mg.fold(model)
    assert not parametrize.is_parametrized(model.adapter) and methods_on(model.adapter, "weight") == []
    assert torch.equal(model.adapter.weight, before[0]) and torch.equal(model.adapter.bias, before[1])


def test_apply_twice_refuses_and_leaves_the_model_unchanged():
    model = _wrn()
    mg.apply(model)
    snap = _snapshot(model)
    with pytest.raises(ReparamError, match="mixturegrowth is already applied to conv_3x3.weight"):
        mg.apply(model)
    assert _same(model, snap)
    # nothing may follow MixtureGrowth, on a weight or on a member BatchNorm
    with pytest.raises(ReparamError, match="cannot apply compander to conv_3x3.weight: it already has mixturegrowth"):
        claim("compander", [("conv_3x3", model.conv_3x3, "weight")], may_follow=("pranc",))
    bn = model.stage_1[0].bn1.bns[0]
    with pytest.raises(ReparamError, match="it already has mixturegrowth"):
        claim("pranc", [("stage_1.0.bn1.bns.0", bn, "weight")])


class _Scale(nn.Module):
    def forward(self, w):
        return 2 * w


def test_foreign_parametrization_is_refused():
    model = _wrn()
    parametrize.register_parametrization(model.stage_2[0].conv1, "weight", _Scale())
    snap = _snapshot(model)
    with pytest.raises(ReparamError, match="stage_2.0.conv1.weight: it already has parametrization _Scale"):
        mg.apply(model)
    assert _same(model, snap)


def _net(*mid: nn.Module, head_in: int = 8) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), *mid,
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(head_in, 4, bias=False))


@pytest.mark.parametrize("mid, name, why", [
    ((nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),), "3", "depthwise convolution"),
    ((nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False),), "3", "grouped convolution"),
    ((nn.Conv2d(8, 8, 3, padding=1, bias=True),), "3", "has a bias"),
    ((nn.Conv2d(8, 7, 3, padding=1, bias=False), nn.Conv2d(7, 8, 1, bias=False)), "3", "not divisible"),
    ((nn.GroupNorm(2, 8),), "3", "GroupNorm cannot be grown"),
    ((nn.BatchNorm2d(8, affine=False),), "3", "without affine"),
    ((nn.Conv1d(8, 8, 1, bias=False),), "3", "Conv1d cannot be a template-mixing layer"),
])
def test_layer_on_the_grown_path_is_refused_by_name(mid, name, why):
    model = _net(*mid)
    snap = _snapshot(model)
    with pytest.raises(ReparamError, match=f"cannot take layer '{name}': .*{why}"):
        mg.apply(model)
    assert _same(model, snap)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())


def test_embedding_on_the_path_is_refused():
    class Tok(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(20, 8)
            self.mid = nn.Linear(8, 8, bias=False)
            self.head = nn.Linear(8, 4, bias=False)

        def forward(self, t):
            return self.head(self.mid(self.emb(t)).mean(1))

    model = Tok()
    snap = _snapshot(model)
    with pytest.raises(ReparamError, match="'emb': Embedding cannot be a template-mixing layer"):
        mg.apply(model)
    assert _same(model, snap)
    with pytest.warns(ReparamWarning, match="left 160 of 208 parameters dense.*emb.weight"):
        mg.apply(model, filter_fn=lambda m, n: n != "emb")     # off the grown path: the Embedding stays
    assert model(torch.randint(0, 20, (2, 5))).shape == (2, 4)


def test_depthwise_free_sequential_grows():
    model = _net(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
    mg.apply(model)
    x = torch.rand(3, 1, 6, 6)
    assert model(x).shape == (3, 4)
    mg.grow(model)
    assert model[3].weight.shape == (8, 8, 3, 3) and model(x).shape == (3, 4)


@pytest.mark.parametrize("member", [0, 1, None])
def test_fold_gives_a_plain_model_with_identical_outputs(member):
    model = _wrn("wrn-10-2", seed=3)
    mg.apply(model)
    x = torch.rand(5, 1, 8, 8)
    model.train()
    with torch.no_grad():
        for m in (0, 1):
            with mg.member_mode(model, m):
                model(x + 0.2 * m)                               # member-specific BN statistics
    if member is None:
        mg.grow(model, seed=1)
    model.eval()
    with torch.no_grad(), mg.member_mode(model, member):
        ref = model(x)
    out = mg.fold(model, member=member)
    assert out is model
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert not any(isinstance(m, mg.MemberBatchNorm2d) for m in model.modules())
    assert all(methods_on(m, t) == [] for m in model.modules() for t in ("weight", "bias"))
    assert all(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        assert torch.equal(model(x), ref)
    plain = mg.build_wrn("wrn-10-2", num_classes=10, in_channels=1, half=member is not None)
    plain.load_state_dict(model.state_dict())                    # exactly the plain architecture
    assert plain.feature_dim == model.feature_dim and plain.widen == model.widen
