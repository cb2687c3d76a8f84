"""PRANC's Fastfood basis: the weights equal the plain-Python definition bit for bit, and do not depend on
the batching of sub-blocks, the transform's layout, threads, column ranges, train/eval mode or the file;
gradients, per-layer variance, the file header and the protocol suites."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from reparam.core.errors import ReparamError
from reparam.models import build_model
from reparam.pranc import PrancConfig, apply_pranc, fold, pranc_core, set_inference
from reparam.pranc import fastfood as ff
from reparam.pranc.fileio import decode_prnc, inspect_prnc, load_prnc, read_prnc_header, save_prnc

torch.set_num_threads(1)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))   # d = 35 + 18 = 53


def _cnn():
    torch.manual_seed(0)
    return build_model("cnn", num_classes=4, in_channels=1, image_size=(8, 8), width=0.25)


def _apply(model, **cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        core = apply_pranc(model, PrancConfig(basis="fastfood", init="l1-randn", **cfg))
    with torch.no_grad():
        core.alpha.copy_(torch.randn(core.k, generator=torch.Generator().manual_seed(1)))
    return core


def _scales(core, block):
    out = [0.0] * core.blocks[block].d
    for s in core.segments:
        if s.block == block:
            out[s.offset:s.offset + s.numel] = [s.scale] * s.numel
    return out


@pytest.mark.parametrize("cfg", [dict(k=7, seed=3), dict(k=64, seed=4), dict(k=150, seed=5),     # k < n, = n, > n
                                 dict(k=40, seed=6, distribution="gaussian"),
                                 dict(k=30, seed=2, distribution="gaussian", sigma=0.01),
                                 dict(k=20, seed=9, budgets="proportional")])
def test_weights_equal_the_plain_python_definition(cfg):
    core = _apply(_mlp(), **cfg)
    assert ff.transform_length(53) == 64
    theta = core.exact_theta()
    want = []
    for b in core.blocks:
        a = core.alpha.detach()[b.alpha_offset:b.alpha_offset + b.k].tolist()
        want += ff.reference_weights(cfg["seed"], b.index, a, b.d, _scales(core, b.index),
                                     cfg.get("distribution", "default-init"))
    assert torch.equal(theta, torch.tensor(want, dtype=torch.float32))


def test_bits_do_not_depend_on_batching_layout_threads_or_columns(monkeypatch):
    core = _apply(_cnn(), k=3000, seed=11)      # d = 5,964 -> n = 8,192: one sub-block
    whole = core.exact_theta()
    assert core.basis.subblocks(0) == 1 and ff.transform_length(core.d) == 8192
    core2 = _apply(_cnn(), k=20000, seed=11)    # three sub-blocks (the last one partial), summed in order
    assert core2.basis.subblocks(0) == 3
    ref9000 = core2.exact_theta()
    for group, split in [(1, 1 << 30), (8192 * 2, 1 << 30), (1 << 22, 8), (1, 2)]:
        monkeypatch.setattr(ff, "_GROUP_ELEMS", group)
        monkeypatch.setattr(ff, "_SPLIT_MIN", split)   # direct stages or the transposed [n1, n2] layout
        assert torch.equal(core.exact_theta(), whole)
        assert torch.equal(core2.exact_theta(), ref9000)
    torch.set_num_threads(2)
    try:
        assert torch.equal(core2.exact_theta(), ref9000)
    finally:
        torch.set_num_threads(1)
    pieces = torch.cat([core.exact_columns(0, a, min(core.d, a + 1000)) for a in range(0, core.d, 1000)])
    assert torch.equal(pieces, whole)


def test_training_weights_are_the_exact_weights_and_match_the_file(tmp_path):
    model = _cnn()
    core = _apply(model, k=500, seed=2)
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 4, (16,), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(3):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    theta = core.exact_theta()
    for policy in ("block", "layerwise"):
        set_inference(model, policy)
        got = torch.cat([getattr(model.get_submodule(s.module), s.tensor).detach().reshape(-1)
                         for s in core.segments])
        assert torch.equal(got, theta)
    model.train()
    with torch.no_grad():       # the training path computes the same bits (no separate fast path)
        got = torch.cat([getattr(model.get_submodule(s.module), s.tensor).detach().reshape(-1)
                         for s in core.segments])
    assert torch.equal(got, theta)
    model.eval()
    with torch.no_grad():
        logits = model(x)
    path = tmp_path / "m.prnc"
    save_prnc(path, model, architecture=model.build_args)
    header = read_prnc_header(path)
    assert header["generator"] == {"name": "reparam-fastfood", "version": 1} and header["basis"] == "fastfood"
    assert inspect_prnc(path)["basis"] == "fastfood"
    rebuilt, _ = load_prnc(path)
    assert torch.equal(pranc_core(rebuilt).exact_theta(), theta)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), logits)
    dense, _ = decode_prnc(path)
    assert torch.equal(torch.cat([getattr(dense.get_submodule(s.module), s.tensor).detach().reshape(-1)
                                  for s in core.segments]), theta)
    fold(model)
    with torch.no_grad():
        assert torch.equal(model(x), logits)


def test_file_header_refusals(tmp_path):
    from reparam.core.fileformat import load_tensors, save_tensors

    model = _mlp()
    _apply(model, k=10, seed=1)
    save_prnc(tmp_path / "m.prnc", model)
    tensors, header = load_tensors(tmp_path / "m.prnc", "pranc")
    header = {k: v for k, v in header.items() if k not in ("kind", "format_version")}
    bad = dict(header, basis="iid")          # fastfood generator, i.i.d. basis: refused, not mis-decoded
    save_tensors(tmp_path / "bad.prnc", tensors, "pranc", bad)
    with pytest.raises(ReparamError, match="does not match generator"):
        load_prnc(tmp_path / "bad.prnc", _mlp())
    bad = dict(header, generator={"name": "reparam-fastfood", "version": 2})
    save_tensors(tmp_path / "bad2.prnc", tensors, "pranc", bad)
    with pytest.raises(ReparamError, match="version 2 is not supported"):
        load_prnc(tmp_path / "bad2.prnc", _mlp())
    with pytest.raises(ReparamError, match="unknown PRANC basis 'dct'"):
        PrancConfig(basis="dct")


@pytest.mark.parametrize("k", [20, 150])
def test_gradient_matches_autograd_through_the_explicit_basis(k):
    model = _mlp()
    core = _apply(model, k=k, seed=7)
    x = torch.rand(9, 6, generator=torch.Generator().manual_seed(3))
    model.train()
    model(x).pow(2).sum().backward()
    B = core.generate(0, 0, k, 0, core.d)           # rows = the weights at alpha = e_j
    alpha = core.alpha.detach().clone().requires_grad_(True)
    theta = alpha @ B
    assert torch.allclose(theta.detach(), core.exact_theta(), rtol=1e-5, atol=1e-6)
    w1, b1 = theta[:30].view(5, 6), theta[30:35]
    w2, b2 = theta[35:50].view(3, 5), theta[50:53]
    (torch.relu(x @ w1.T + b1) @ w2.T + b2).pow(2).sum().backward()
    assert torch.allclose(core.alpha.grad, alpha.grad, rtol=1e-4, atol=1e-5)


def test_per_layer_variance_matches_the_iid_basis():
    """Basis network e_j has the i.i.d. basis's per-layer variance (default-init: bound^2 / 3; Gaussian:
    sigma^2), so e_0 init and learning rates carry over."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))    # d = 19,210 -> n = 32,768
    for dist, sigma in [("default-init", None), ("gaussian", None), ("gaussian", 0.02)]:
        m = pickle_copy(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            core = apply_pranc(m, PrancConfig(k=8, basis="fastfood", distribution=dist, sigma=sigma))
        B = core.generate(0, 0, 8, 0, core.d)
        for s in core.segments:
            if s.tensor != "weight":
                continue
            want = s.scale ** 2 / 3 if dist == "default-init" else s.scale ** 2
            got = B[:, s.offset:s.offset + s.numel].pow(2).mean().item()
            assert abs(got / want - 1) < 0.1, (dist, s.module, got, want)
        # basis networks are nearly orthogonal, like i.i.d. ones of the same length
        u = B / B.norm(dim=1, keepdim=True)
        cos = (u @ u.T - torch.eye(8)).abs().max().item()
        assert cos < 6 / math.sqrt(core.d)


def pickle_copy(model):
    import copy

    return copy.deepcopy(model)


def test_apply_to_a_big_model_generates_nothing_up_front():
    """k = 100,000 on a ResNet-20: apply builds no basis (the structured basis is O(d) to set up on first use)."""
    import time

    model = build_model("resnet20", num_classes=10, in_channels=1, image_size=(28, 28))
    t0 = time.perf_counter()
    core = apply_pranc(model, PrancConfig(k=100_000, basis="fastfood"))
    assert time.perf_counter() - t0 < 5.0         # about 0.05 s on an idle machine; the bound is for load
    assert core.basis.subblocks(0) == 1 and core.k == 100_000
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_protocol_suites_with_the_fastfood_basis(tmp_path, monkeypatch):
    """The conformance suite (each model kind: filter, summary, training, file round trip, fold) and the
    PRANC chains of the composition suite, with the structured basis."""
    import test_composition as comp
    import test_conformance as conf
    from reparam import pranc

    monkeypatch.setitem(conf.CONFIGS, "pranc", lambda: pranc.Config(k=64, seed=3, basis="fastfood"))
    for kind in ("registry", "sequential", "foreign"):
        (tmp_path / kind).mkdir()
        conf.test_method_on_model("pranc", kind, tmp_path / kind)
    real = pranc.Config
    monkeypatch.setattr(pranc, "Config", lambda **kw: real(**{"basis": "fastfood", **kw}))
    for second in ("compander", "tickets"):
        comp.test_every_ordered_pair_composes_or_refuses("pranc", second)


def test_compare_bases_frees_each_model_before_the_next_run(monkeypatch):
    """compare-bases must not keep a model (and its materialized basis, 10.7 GB for ResNet-20 at k = 10,000)
    alive into the next run."""
    import gc
    import weakref

    from reparam.experiments.pranc import runs as ex

    alive: list[weakref.ref] = []

    def fake_run_pranc(spec, splits, tconfig, pconfig):
        gc.disable()            # only compare_bases's own collection may free the cycle
        assert all(ref() is None for ref in alive), "the previous run's model is still alive"
        model = build_model("mlp", num_classes=3, in_channels=1, image_size=(4, 4), hidden=[8])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            apply_pranc(model, pconfig)
        alive.append(weakref.ref(model))
        return model, {"method": "pranc", "k": pconfig.k, "test_acc": 0.5, "train_seconds": 0.0, "counts": {}}

    monkeypatch.setattr(ex, "run_pranc", fake_run_pranc)
    try:
        rows = ex.compare_bases(None, None, [5, 9], [0, 1], 1, 1e-2)
    finally:
        gc.enable()
    assert [(r["k"], r["basis"], r["seed"]) for r in rows] == [
        (k, b, s) for s in (0, 1) for k in (5, 9) for b in ("iid", "fastfood")]
    assert len(alive) == 8


@pytest.mark.parametrize("basis,mode", [("iid", "materialized"), ("iid", "streamed"), ("fastfood", "materialized")])
def test_a_trained_model_is_freed_with_its_basis(basis, mode):
    """No reference cycle through autograd's graph: after training and evaluating, dropping the model frees
    its coefficient module and basis (each trained model's materialized basis used to stay in memory)."""
    import gc
    import weakref

    m = build_model("cnn", num_classes=10, in_channels=1, image_size=(8, 8), width=0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        core = apply_pranc(m, PrancConfig(k=40, seed=1, basis=basis, mode=mode, chunk=16))
    x = torch.rand(4, 1, 8, 8)
    F.cross_entropy(m(x), torch.tensor([0, 1, 2, 3])).backward()     # training mode: the cached block weights
    m.eval()
    m(x).sum().backward()                                              # eval mode with gradients
    refs = [weakref.ref(core), weakref.ref(core.basis)]
    del m, core
    gc.collect()
    assert all(r() is None for r in refs)


def test_backward_after_the_model_is_freed_is_one_clear_error():
    import gc

    m = build_model("mlp", num_classes=3, in_channels=1, image_size=(4, 4), hidden=[8])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        apply_pranc(m, PrancConfig(k=10, seed=1))
    loss = m(torch.rand(2, 1, 4, 4)).sum()
    del m
    gc.collect()
    with pytest.raises(ReparamError, match="has been freed"):
        loss.backward()


def test_a_model_trained_by_shards_is_freed_too(tmp_path):
    """The sharded (torchrun) path keeps no cycle either (its autograd function holds the shard strongly,
    but nothing cached by the model leads back to that ctx): a 1-process gloo group trains a step through
    PrancShard, and dropping the model then frees its coefficient module and basis."""
    import gc
    import weakref

    import torch.distributed as dist

    from reparam.pranc import distributed as pranc_dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        m = build_model("mlp", num_classes=3, in_channels=1, image_size=(4, 4), hidden=[8])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            core = apply_pranc(m, PrancConfig(k=10, seed=1))
        core.distributed_start(0, 1)
        assert core.shard is not None
        m(torch.rand(2, 1, 4, 4)).sum().backward()
        assert core.alpha.grad is not None and torch.isfinite(core.alpha.grad).all()
        core.distributed_end()
        refs = [weakref.ref(core), weakref.ref(core.basis)]
        del m, core
        gc.collect()
        assert all(r() is None for r in refs)
    finally:
        pranc_dist._group = None
        dist.destroy_process_group()
