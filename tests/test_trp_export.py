"""Running a TRP-decomposed model for deployment (reparam.trp.export): BatchNorm folded into the preceding conv
(into the second conv of a split pair), compiled runtimes left out without a C++ compiler, per-module times."""

import pytest
import torch
import torch.nn as nn

from reparam import trp
from reparam.core.errors import ReparamError
from reparam.models import build_model
from reparam.trp import export
from reparam.trp.export import fold_batchnorm, module_times, prepare, usable_runtimes

torch.set_num_threads(1)


def _trained_like(model: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine weights, as training would."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))
    return model.eval()


def test_fold_batchnorm_resnet_and_its_split_pairs_match_unfolded():
    torch.manual_seed(0)
    model = _trained_like(build_model("resnet20", num_classes=3, in_channels=1, image_size=(8, 8)))
    trp.apply(model, trp.Config(scheme="spatial", energy=0.3))
    small, plans = trp.decompose(model)
    small.eval()
    assert sum(p.decompose for p in plans) >= 10
    x = torch.rand(4, 1, 8, 8)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    for net in (trp.fold(model), small):
        folded, n = fold_batchnorm(net)
        assert n == n_bn == 19                                   # stem + 18 block convs, none left
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        with torch.no_grad():
            assert torch.allclose(folded(x), net(x), atol=1e-4, rtol=1e-4)
    folded, _ = fold_batchnorm(small)
    pair = folded.layer1[0].conv1
    assert isinstance(pair, nn.Sequential)                     # a split conv: BN went into its second conv
    assert pair[0].bias is None and pair[1].bias is not None
    assert isinstance(folded.layer1[0].bn1, nn.Identity)
    assert any(isinstance(m, nn.BatchNorm2d) for m in small.modules())   # the input is not changed


def test_fold_batchnorm_leaves_what_it_cannot_fold():
    class Shared(nn.Module):          # the conv's output also feeds the addition: folding would change it
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    class Branchy(nn.Module):         # control flow on data: not traceable, returned unfolded
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)

        def forward(self, x):
            return self.bn(self.conv(x)) if x.sum() > 0 else x

    x = torch.rand(2, 2, 5, 5)
    for net in (Shared(), Branchy()):
        net = _trained_like(net)
        folded, n = fold_batchnorm(net)
        assert n == 0 and isinstance(folded.bn, nn.BatchNorm2d)
        with torch.no_grad():
            assert torch.equal(folded(x), net(x))


def test_prepare_runs_the_folded_model():
    model = _trained_like(build_model("resnet20", num_classes=3, in_channels=1, image_size=(8, 8)))
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        ref = model(x)
        for rt in ("eager", "channels_last"):
            fn, _ = prepare(model, rt, x)
            assert torch.allclose(fn(), ref, atol=1e-4, rtol=1e-4)


def test_compiled_runtimes_left_out_without_a_cxx_compiler(monkeypatch):
    monkeypatch.setattr(export, "cxx_compiler", lambda: None)
    assert usable_runtimes(("eager", "compile", "compile+channels_last")) == (
        ("eager",), ["compile", "compile+channels_last"])
    with pytest.raises(ReparamError, match="needs a C.. compiler"):
        usable_runtimes(("compile",))
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())
    m = export.compare(net, net, (1, 5, 5), (1,), runtimes=("eager", "compile"), rounds=1, min_round_s=0)
    assert m["latency_runtimes_skipped"] == ["compile"] and list(m["latency_runtimes"]["b1"]) == [
        "eager/before", "eager/after"]
    monkeypatch.setattr(export, "cxx_compiler", lambda: "/usr/bin/g++")
    assert usable_runtimes(("compile",)) == (("compile",), [])


def test_module_times_has_every_leaf_and_the_whole_pass():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Sequential(nn.Conv2d(4, 2, 1)), nn.Flatten())
    t = module_times(net, torch.rand(2, 1, 6, 6), rounds=3)
    assert set(t) == {"", "0", "1", "2.0", "3"}
    assert all(v >= 0 for v in t.values()) and t[""] >= t["0"]
    with pytest.raises(ReparamError, match="unknown clock 'gpu'"):
        module_times(net, torch.rand(1, 1, 6, 6), clock="gpu")


def test_cost_table_key_names_the_allocator_only_when_set(monkeypatch):
    from reparam.trp.latency import machine_key

    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    assert "allocator" not in machine_key()
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1")
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libjemalloc.so.2 /usr/lib/libother.so")
    assert machine_key()["allocator"] == "GLIBC_TUNABLES=glibc.malloc.trim_threshold=1;LD_PRELOAD=libjemalloc.so.2"
