"""PRANC: generator exactness, modes, gradients, file round trip, bad input."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from reparam.core import generator as gen
from reparam.core.errors import ReparamError
from reparam.pranc import PrancCoefficients, PrancConfig, apply_pranc, fold_pranc, pranc_core, set_inference
from reparam.pranc.core import CANON_ROWS, tree_sum
from reparam.pranc.fileio import decode_prnc, inspect_prnc, load_prnc, round_alpha, save_prnc

torch.set_num_threads(1)


class Tiny(nn.Module):
    """Conv + BN + Linear, small enough for explicit k x d matrices."""

    def __init__(self, c: int = 4, classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(1, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c * 16, classes)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.conv(x))).flatten(1))


def tiny_spec():
    return None


def _train_steps(model, steps=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(8, 1, 4, 4, generator=g)
    y = torch.randint(0, 3, (8,), generator=g)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return x


# ------------------------------------------------------------------------------------------- generator
def test_generator_matches_python_reference():
    rng = random.Random(1)
    for dist in ("uniform", "gaussian"):
        for _ in range(40):
            seed, block = rng.randrange(2**40), rng.randrange(5)
            r, c = rng.randrange(1000), rng.randrange(5000)
            v = gen.unit_block(seed, block, r, r + 1, c, c + 1, dist)[0, 0].item()
            assert v == gen.reference_unit(seed, block, r, c, dist)


def test_generator_chunked_equals_whole_exactly():
    whole = gen.unit_block(7, 0, 0, 37, 0, 1001)
    for rows, cols in [(1, 1001), (5, 3), (16, 250), (37, 7)]:
        parts = torch.cat([torch.cat([gen.unit_block(7, 0, r, min(37, r + rows), c, min(1001, c + cols))
                                      for c in range(0, 1001, cols)], dim=1) for r in range(0, 37, rows)])
        assert torch.equal(parts, whole)


def test_generator_tiling_does_not_change_bits(monkeypatch):
    whole = gen.unit_block(5, 1, 3, 40, 7, 333)
    monkeypatch.setattr(gen, "_TILE", 13)
    assert torch.equal(gen.unit_block(5, 1, 3, 40, 7, 333), whole)


def test_generator_threads_do_not_change_bits():
    a = gen.unit_block(3, 2, 0, 64, 0, 4096, "gaussian")
    torch.set_num_threads(2)
    try:
        b = gen.unit_block(3, 2, 0, 64, 0, 4096, "gaussian")
    finally:
        torch.set_num_threads(1)
    assert torch.equal(a, b)


def test_generator_statistics_and_independence():
    u = gen.unit_block(0, 0, 0, 200, 0, 2000)
    assert abs(u.mean().item()) < 0.01 and abs(u.var().item() - 1 / 3) < 0.01
    z = gen.unit_block(0, 0, 0, 200, 0, 2000, "gaussian")
    assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 1) < 0.01
    c = torch.corrcoef(u[:50])
    assert (c - torch.eye(50)).abs().max() < 0.12          # rows nearly orthogonal (d=2000)
    assert not torch.equal(gen.unit_block(0, 0, 0, 1, 0, 100), gen.unit_block(1, 0, 0, 1, 0, 100))
    assert not torch.equal(gen.unit_block(0, 0, 0, 1, 0, 100), gen.unit_block(0, 1, 0, 1, 0, 100))


def test_tree_sum_is_fixed_pairwise_order():
    p = torch.tensor([[1e8], [1.0], [-1e8], [1.0], [3.0]])
    # ((1e8 + 1) + (-1e8 + 1)) + 3 in float32
    a = torch.tensor(1e8) + torch.tensor(1.0)
    b = torch.tensor(-1e8) + torch.tensor(1.0)
    assert tree_sum(p).item() == ((a + b) + torch.tensor(3.0)).item()


# ------------------------------------------------------------------------------------------- core
@pytest.mark.parametrize("budgets", [None, "proportional"])
def test_modes_and_chunks_agree_and_exact_path_is_bit_identical(budgets):
    torch.manual_seed(0)
    x = torch.rand(6, 1, 4, 4)
    outs, grads, exacts = [], [], []
    for mode, chunk in [("materialized", 256), ("streamed", 1), ("streamed", 7), ("streamed", 1000)]:
        torch.manual_seed(0)
        m = Tiny()
        core = apply_pranc(m, PrancConfig(k=40, seed=3, mode=mode, chunk=chunk, budgets=budgets,
                                          init="l1-randn"))
        m.train()
        out = m(x)
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append(core.alpha.grad.clone())
        m.eval()
        exacts.append(core.exact_theta())
        for policy in ("block", "layerwise"):
            set_inference(m, policy)
            exacts.append(torch.cat([m.conv.weight.flatten(), m.conv.bias, m.fc.weight.flatten(), m.fc.bias]))
    for o, g in zip(outs[1:], grads[1:]):
        assert torch.allclose(o, outs[0], rtol=1e-5, atol=1e-6)
        assert torch.allclose(g, grads[0], rtol=1e-4, atol=1e-5)
    for e in exacts[1:]:
        assert torch.equal(e, exacts[0])


def test_exact_path_equals_definition():
    torch.manual_seed(0)
    m = Tiny(c=8)
    k = CANON_ROWS + 37   # two row groups
    core = apply_pranc(m, PrancConfig(k=k, seed=11, mode="streamed", chunk=50, init="l1-randn"))
    alpha = core.alpha.detach()
    B = core.generate(0, 0, k, 0, core.d)
    want = torch.zeros(core.d)
    for r0 in range(0, k, CANON_ROWS):
        want = want + tree_sum(alpha[r0:r0 + CANON_ROWS, None] * B[r0:r0 + CANON_ROWS])
    assert torch.equal(core.exact_theta(), want)
    # and it is alpha @ B up to rounding; layer scales are 1/sqrt(fan_in)
    assert torch.allclose(want, alpha @ B, rtol=1e-5, atol=1e-6)
    assert B[:, :80].abs().max() <= 1 / 3 + 1e-6 and B[:, 80:].abs().max() <= 1 / 8 + 1e-6


@pytest.mark.parametrize("mode", ["materialized", "streamed"])
def test_gradient_matches_autograd_through_explicit_basis(mode):
    torch.manual_seed(1)
    ref = Tiny()
    m = Tiny()
    m.load_state_dict(ref.state_dict())
    core = apply_pranc(m, PrancConfig(k=30, seed=2, mode=mode, chunk=4, init="l1-randn"))
    x = torch.rand(5, 1, 4, 4)
    m.train()
    m(x).pow(2).sum().backward()
    B = core.generate(0, 0, 30, 0, core.d)
    alpha = core.alpha.detach().clone().requires_grad_(True)
    theta = alpha @ B
    shapes = [("conv", "weight"), ("conv", "bias"), ("fc", "weight"), ("fc", "bias")]
    params, off = {}, 0
    for mod, t in shapes:
        shp = getattr(ref, mod).__getattr__(t).shape
        n = shp.numel()
        params[f"{mod}.{t}"] = theta[off:off + n].view(shp)
        off += n
    params.update({k: v for k, v in ref.state_dict().items() if k.startswith("bn.")})
    ref.train()
    out = torch.func.functional_call(ref, params, (x,))
    out.pow(2).sum().backward()
    assert torch.allclose(core.alpha.grad, alpha.grad, rtol=1e-4, atol=1e-5)


def test_gradient_finite_differences():
    torch.manual_seed(2)
    m = Tiny().double()
    core = apply_pranc(m, PrancConfig(k=6, seed=4, mode="streamed", chunk=4, init="l1-randn"))
    core.alpha.data = core.alpha.data.double()
    for name in list(core._buffers):
        core._buffers[name] = core._buffers[name].double()
    x = torch.rand(3, 1, 4, 4, dtype=torch.double)
    m.eval()    # BN running stats: a deterministic function of alpha

    def f():
        m.train()
        return m(x).pow(2).sum()

    f().backward()
    g = core.alpha.grad.clone()
    for j in range(6):
        e = 1e-6
        with torch.no_grad():
            core.alpha[j] += e
        m.bn.reset_running_stats()
        fp = f().item()
        with torch.no_grad():
            core.alpha[j] -= 2 * e
        fm = f().item()
        with torch.no_grad():
            core.alpha[j] += e
        assert abs((fp - fm) / (2 * e) - g[j].item()) < 1e-4 * max(1.0, abs(g[j].item()))


def test_alpha_and_bn_are_parameters_basis_not_in_state_dict():
    m = Tiny()
    core = apply_pranc(m, PrancConfig(k=10, mode="materialized"))
    sd = m.state_dict()
    alpha_keys = [k for k in sd if k.endswith(".core.alpha")]
    assert len(alpha_keys) == 1 and "bn.weight" in sd and "bn.running_mean" in sd
    assert not any("basis" in k or "scale_" in k for k in sd)
    # placeholders are empty: alpha is the only number stored under the parametrizations
    assert sum(v.numel() for k, v in sd.items() if "parametrizations" in k) == 10
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {alpha_keys[0], "bn.weight", "bn.bias"}
    assert not any(isinstance(c, PrancCoefficients) for c in m.children())
    assert core.alpha[0].item() == 1.0 and core.alpha[1:].abs().sum().item() == 0.0
    # e0 init: the network starts at basis network 0
    assert torch.equal(m.eval().fc.bias, core.generate(0, 0, 1, core.d - 3, core.d)[0])


def test_bn_trained_directly_and_other_params_freeze():
    m = Tiny()
    apply_pranc(m, PrancConfig(k=10))
    before = m.bn.weight.detach().clone()
    _train_steps(m)
    assert not torch.equal(before, m.bn.weight)

    class WithLN(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.ln = nn.LayerNorm(4)

        def forward(self, x):
            return self.ln(self.fc(x))

    w = WithLN()
    apply_pranc(w, PrancConfig(k=3, other_params="freeze"))
    assert not w.ln.weight.requires_grad and pranc_core(w).alpha.requires_grad


def test_fold_gives_exact_eval_weights_and_logits():
    torch.manual_seed(0)
    m = Tiny()
    apply_pranc(m, PrancConfig(k=20, mode="streamed", chunk=3))
    x = _train_steps(m)
    m.eval()
    out = m(x)
    fold_pranc(m)
    assert not hasattr(m, "pranc") and isinstance(m.conv.weight, nn.Parameter)
    assert torch.equal(m(x), out)


# ------------------------------------------------------------------------------------------- file
def test_file_round_trip_bit_identical(tmp_path):
    torch.manual_seed(0)
    m = Tiny()
    apply_pranc(m, PrancConfig(k=25, seed=9, mode="materialized", budgets=[5, 20]))
    x = _train_steps(m, steps=4)
    m.eval()
    out = m(x)
    path = tmp_path / "m.prnc"
    save_prnc(path, m, extra={"note": "t"})
    m2, header = load_prnc(path, Tiny())
    assert torch.equal(m2(x), out)
    assert header["generator"] == {"name": gen.GENERATOR_NAME, "version": gen.GENERATOR_VERSION}
    assert header["layout"] == "per-layer" and header["extra"] == {"note": "t"}
    dense, _ = decode_prnc(path, seed=None) if header.get("architecture") else (None, None)
    assert dense is None   # no architecture spec in this file; decode needs the model
    info = inspect_prnc(path)
    assert info["k"] == 25 and info["stored_bn_numbers"] == 16
    assert info["stored_numbers"] == 25 + 16 + 0   # BN weight, bias, mean, var (4 x 4); step counter is int
    # wrong seed -> a different model
    m3, _ = load_prnc(path, Tiny(), seed=10)
    assert not torch.allclose(m3(x), out)


def test_fp16_coefficients(tmp_path):
    torch.manual_seed(0)
    m = Tiny()
    apply_pranc(m, PrancConfig(k=25))
    x = _train_steps(m)
    round_alpha(m, "float16")
    m.eval()
    out = m(x)
    save_prnc(tmp_path / "h.prnc", m, coef_dtype="float16")
    m2, h = load_prnc(tmp_path / "h.prnc", Tiny())
    assert h["coef_dtype"] == "float16" and h["tensors"]["alpha"][0] == "float16"
    assert torch.equal(m2(x), out)
    assert (tmp_path / "h.prnc").stat().st_size < (tmp_path / "h.prnc").stat().st_size + 50


def test_file_with_architecture_decodes(tmp_path):
    from reparam.models import build_from_spec

    spec = {"name": "mlp", "num_classes": 3, "in_channels": 1, "image_size": [4, 4], "mean": [0.0],
            "std": [1.0], "options": {"hidden": [8]}}
    m = build_from_spec(spec)
    apply_pranc(m, PrancConfig(k=12, mode="streamed", chunk=5))
    x = _train_steps(m)
    m.eval()
    out = m(x)
    save_prnc(tmp_path / "a.prnc", m, architecture=spec)
    d, _ = decode_prnc(tmp_path / "a.prnc")
    assert not hasattr(d, "pranc")
    assert torch.equal(d(x), out)


def test_bad_inputs(tmp_path):
    with pytest.raises(ReparamError, match="k must be a positive"):
        apply_pranc(Tiny(), PrancConfig(k=0))
    with pytest.raises(ReparamError, match="mode"):
        apply_pranc(Tiny(), PrancConfig(k=3, mode="fast"))
    with pytest.warns(UserWarning, match="nothing is compressed"):
        apply_pranc(Tiny(), PrancConfig(k=1000))
    with pytest.raises(ReparamError, match="budget"):
        apply_pranc(Tiny(), PrancConfig(k=3, budgets={"conv": 2, "nope": 1}))
    m = Tiny()
    apply_pranc(m, PrancConfig(k=5))
    path = tmp_path / "m.prnc"
    save_prnc(path, m)
    # architecture mismatch names the tensor
    with pytest.raises(ReparamError, match="conv.weight"):
        load_prnc(path, Tiny(c=5))
    # corrupted payload
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    bad = tmp_path / "bad.prnc"
    bad.write_bytes(bytes(data))
    with pytest.raises(ReparamError, match="CRC32|corrupt"):
        load_prnc(bad, Tiny())
    # truncated
    trunc = tmp_path / "trunc.prnc"
    trunc.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ReparamError):
        load_prnc(trunc, Tiny())
    # another kind of reparam file
    from reparam.core.fileformat import save_tensors

    save_tensors(tmp_path / "other.safetensors", {"x": torch.zeros(2)}, "model")
    with pytest.raises(ReparamError, match="not.*pranc|kind"):
        load_prnc(tmp_path / "other.safetensors", Tiny())
    # a file from a future generator version (written with a valid CRC)
    from reparam.core.fileformat import load_tensors

    tensors, h = load_tensors(path, "pranc")
    h = {k: v for k, v in h.items() if k not in ("format", "format_version", "kind", "tensors", "crc32")}
    h["generator"] = {**h["generator"], "version": 99}
    save_tensors(tmp_path / "future.prnc", tensors, "pranc", h)
    with pytest.raises(ReparamError, match="generator"):
        load_prnc(tmp_path / "future.prnc", Tiny())
    # an edited header is caught by the CRC
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    hh = json.loads(meta["reparam"])
    hh["seed"] = 1
    meta["reparam"] = json.dumps(hh)
    save_file(load_file(str(path)), str(tmp_path / "edited.prnc"), metadata=meta)
    with pytest.raises(ReparamError, match="CRC32|corrupt"):
        load_prnc(tmp_path / "edited.prnc", Tiny())
