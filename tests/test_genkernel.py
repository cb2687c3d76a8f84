"""The optional compiled generator kernel degrades to the torch code, with the same bits, whenever it cannot
be built, loaded or trusted: no C compiler, a failing compiler, no writable cache, no home folder, a
damaged cached library, or a kernel whose bits differ from the definition."""

from __future__ import annotations

import hashlib
import pathlib
import shutil
import warnings

import pytest
import torch

from reparam.core import generator as gen
from reparam.core import genkernel
from reparam.models import build_model
from reparam.pranc import PrancConfig, apply_pranc

# pinned in tests/test_pranc_pinned.py (computed by the generator before the kernel existed)
UNIT_UNIFORM = "dff2a2c386a1ceb1"
WEIGHTS_K300_SEED7 = "0d7dc0705061ef47"


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()[:16]


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A process that has not tried the C kernel yet, with an empty cache folder and only the C kernel
    enabled (numba, when installed, would otherwise stand in for it)."""
    monkeypatch.setattr(genkernel, "_tried", False)
    monkeypatch.setattr(genkernel, "_lib", None)
    monkeypatch.setenv("REPARAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("REPARAM_KERNEL", "c")
    return tmp_path


def _pranc_weights() -> str:
    torch.manual_seed(0)
    m = build_model("cnn", num_classes=10, in_channels=1, image_size=(8, 8), width=0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        core = apply_pranc(m, PrancConfig(k=300, seed=7, mode="materialized"))
    with torch.no_grad():
        core.alpha.copy_(torch.randn(core.k, generator=torch.Generator().manual_seed(5)) * 0.3)
    return _digest(core.exact_theta())


def _falls_back() -> None:
    assert genkernel.kernel() is None
    out = torch.empty(3, 7001 - 300)
    assert genkernel.fill(out, gen.row_keys(12345, 2, 0, 3, "cpu"), 0, 0, 1.0, None, None) is False
    assert _digest(gen.unit_block(12345, 2, 5, 300, 3, 7001, "uniform")) == UNIT_UNIFORM
    assert _pranc_weights() == WEIGHTS_K300_SEED7       # the whole PRANC path, same bits as ever


def test_no_compiler_on_path(fresh, monkeypatch):
    empty = fresh / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("CC", raising=False)
    _falls_back()
    assert not list((fresh / "cache").glob("*.so"))


def test_failing_compiler(fresh, monkeypatch):
    if shutil.which("false") is None:
        pytest.skip("no 'false' program")
    monkeypatch.setenv("CC", shutil.which("false"))
    _falls_back()


def test_cache_folder_not_writable(fresh, monkeypatch):
    (fresh / "afile").write_text("x")
    monkeypatch.setenv("REPARAM_CACHE", str(fresh / "afile" / "cache"))     # below a file: cannot be created
    _falls_back()


def test_no_home_folder(fresh, monkeypatch):
    def no_home(cls):
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("REPARAM_CACHE")
    monkeypatch.setattr(pathlib.Path, "home", classmethod(no_home))
    _falls_back()


def test_damaged_cached_library(fresh):
    (fresh / "cache").mkdir()
    (fresh / "cache" / f"genkernel-{genkernel._tag()}.so").write_bytes(b"\x7fELF truncated")
    _falls_back()


def test_kernel_with_different_bits_is_not_used(fresh, monkeypatch):
    if shutil.which("cc") is None:
        pytest.skip("no C compiler: nothing to miscompile")
    good = "oc[i] = ((float)s[i] + 0.5f) * f[i];"
    assert good in genkernel.SOURCE
    monkeypatch.setattr(genkernel, "SOURCE", genkernel.SOURCE.replace(good, good.replace("0.5f", "0.25f")))
    _falls_back()
    assert list((fresh / "cache").glob("*.so"))       # it was built, then refused by the self-check


def test_working_compiler_builds_a_kernel_that_passes_its_self_check(fresh):
    if shutil.which("cc") is None:
        pytest.skip("no C compiler: the torch path is the only one")
    lib = genkernel.kernel()
    assert lib is not None and genkernel._self_check(lib)
    assert _pranc_weights() == WEIGHTS_K300_SEED7


# ------------------------------------------------------------------ fused products (streamed training)
@pytest.mark.parametrize("dist", ["uniform", "gaussian"])
def test_fused_products_equal_their_definition_on_generated_entries(dist):
    """theta = alpha @ B and grad = B @ g with the entries generated inside the kernel: the same bits as the
    documented order applied to fill_block's entries, over a column range with a partial first quad and
    more than one 1,024-column tile."""
    if genkernel.kernel() is None:
        pytest.skip("no C compiler: the tiled torch path is the only one")
    seed, block, k, c0, c1 = 99, 1, 37, 5, 2311
    keys = gen.row_keys(seed, block, 0, k, "cpu")
    scale = torch.rand(c1 - c0, generator=torch.Generator().manual_seed(1)) * 0.2 + 0.01
    entries = gen.fill_block(torch.empty(k, c1 - c0), seed, block, 0, k, c0, c1, dist, scale)
    alpha = torch.randn(k, generator=torch.Generator().manual_seed(2))
    g = torch.randn(c1 - c0, generator=torch.Generator().manual_seed(3))
    theta, grad = torch.zeros(c1 - c0), torch.zeros(k)
    assert gen.fused_product("theta", theta, keys, alpha, c0, c1, dist, scale)
    assert gen.fused_product("grad", grad, keys, g, c0, c1, dist, scale)
    assert torch.equal(theta, genkernel.theta_reference(entries, alpha))
    assert torch.equal(grad, genkernel.grad_reference(entries, g))
    assert torch.allclose(theta, alpha @ entries, rtol=1e-4, atol=1e-5)


def test_fused_kernel_with_different_sums_is_not_used(fresh):
    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    good = "y[i] += a * buf[i];"
    assert good in genkernel.SOURCE
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(genkernel, "SOURCE", genkernel.SOURCE.replace(good, "y[i] += buf[i] * (a + 1e-3f);"))
        _falls_back()


def test_plain_build_gives_the_same_bits_as_the_multiversioned_one(fresh, monkeypatch):
    """The kernel is built with an AVX2 and a baseline copy of each function (chosen at load time from the
    running CPU); a build without that (a compiler or platform without target_clones) gives the same bits."""
    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    keys = gen.row_keys(5, 0, 0, 9, "cpu")
    scale = torch.linspace(0.01, 0.3, 1500)

    def products():
        lib = genkernel.kernel()
        assert lib is not None
        out = [torch.zeros(1500), torch.zeros(9), torch.empty(9, 1500)]
        gen.fused_product("theta", out[0], keys, torch.linspace(-1, 1, 9), 2, 1502, "uniform", scale)
        gen.fused_product("grad", out[1], keys, torch.linspace(-1, 3, 1500), 2, 1502, "uniform", scale)
        gen.fill_block(out[2], 5, 0, 0, 9, 2, 1502, "uniform", scale, keys=keys)
        return out

    multi = products()
    monkeypatch.setattr(genkernel, "CLONES", "-DREPARAM_PLAIN")
    monkeypatch.setattr(genkernel, "_tried", False)
    plain = products()
    assert len(list((fresh / "cache").glob("*.so"))) == 2
    assert all(torch.equal(a, b) for a, b in zip(multi, plain))


@pytest.mark.parametrize("dist", ["default-init", "gaussian"])
def test_streamed_training_uses_the_fused_kernel_and_matches_the_tiles(dist, monkeypatch):
    """Streamed training never writes a tile of the basis when the kernel is there, and its outputs and
    gradients agree with the tiled torch path (REPARAM_KERNEL=0) up to the order of the sums."""
    if genkernel.kernel() is None:
        pytest.skip("no C compiler")
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    res = []
    for kernel_on in (True, False):
        torch.manual_seed(0)
        m = build_model("cnn", num_classes=10, in_channels=1, image_size=(8, 8), width=0.25)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            core = apply_pranc(m, PrancConfig(k=70, seed=3, mode="streamed", chunk=16, init="l1-randn",
                                              distribution=dist))
        with monkeypatch.context() as mp:
            if kernel_on:
                mp.setattr(gen, "fill_block", None)       # any tile generation would fail
            else:
                mp.setenv("REPARAM_KERNEL", "0")
            m.train()
            out = m(x)
            out.square().sum().backward()
        res.append((out.detach(), core.alpha.grad.clone()))
    assert torch.allclose(res[0][0], res[1][0], rtol=1e-5, atol=1e-6)
    assert torch.allclose(res[0][1], res[1][1], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ the numba backend (optional extra)
def test_numba_backend_gives_the_same_bits_as_torch_and_the_c_kernel(monkeypatch):
    pytest.importorskip("numba")
    monkeypatch.setenv("REPARAM_KERNEL", "numba")
    jit = genkernel.kernel()
    assert jit is not None and jit.name == "numba" and genkernel._self_check(jit)
    assert _digest(gen.unit_block(12345, 2, 5, 300, 3, 7001, "uniform")) == UNIT_UNIFORM
    assert _pranc_weights() == WEIGHTS_K300_SEED7
    keys = gen.row_keys(8, 1, 0, 11, "cpu")
    scale = torch.linspace(0.02, 0.4, 2100)
    res = {}
    for mode in ("numba", "c", "0"):
        monkeypatch.setenv("REPARAM_KERNEL", mode)
        if mode == "c" and genkernel.kernel() is None:
            continue
        for dist in ("uniform", "gaussian"):
            th, ga = torch.zeros(2100), torch.zeros(11)
            fused = [gen.fused_product("theta", th, keys, torch.linspace(-1, 1, 11), 7, 2107, dist, scale),
                     gen.fused_product("grad", ga, keys, torch.linspace(-2, 1, 2100), 7, 2107, dist, scale)]
            assert all(fused) == (mode != "0")
            res[mode, dist] = (gen.fill_block(torch.empty(11, 2100), 8, 1, 0, 11, 7, 2107, dist, scale), th, ga)
    for (mode, dist), (entries, th, ga) in res.items():
        assert torch.equal(entries, res["0", dist][0])
        if mode != "0":
            assert torch.equal(th, res["numba", dist][1]) and torch.equal(ga, res["numba", dist][2])


def test_numba_stands_in_when_there_is_no_compiler(fresh, monkeypatch):
    pytest.importorskip("numba")
    empty = fresh / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("REPARAM_KERNEL", "1")
    backend = genkernel.kernel()
    assert backend is not None and backend.name == "numba"
    assert _pranc_weights() == WEIGHTS_K300_SEED7
