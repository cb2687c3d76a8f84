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
    """A process that has not tried the kernel yet, with an empty cache folder and the kernel enabled."""
    monkeypatch.setattr(genkernel, "_tried", False)
    monkeypatch.setattr(genkernel, "_lib", None)
    monkeypatch.setenv("REPARAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("REPARAM_KERNEL", raising=False)
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
    tag = hashlib.sha256((genkernel.SOURCE + " ".join(genkernel.FLAGS)).encode()).hexdigest()[:16]
    (fresh / "cache").mkdir()
    (fresh / "cache" / f"genkernel-{tag}.so").write_bytes(b"\x7fELF truncated")
    _falls_back()


def test_kernel_with_different_bits_is_not_used(fresh, monkeypatch):
    if shutil.which("cc") is None:
        pytest.skip("no C compiler: nothing to miscompile")
    good = "o[c + 1] = ((float)LANE(h, 1) + 0.5f) * f[c + 1];"
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
