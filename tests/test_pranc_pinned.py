"""The i.i.d. basis must never change its bits: values pinned with the generator as it was before issue 21
(digests computed with that code), and a .prnc file written by it must decode to the same weights."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import pytest
import torch

from reparam.core import generator as gen
from reparam.models import build_model
from reparam.pranc import PrancConfig, apply_pranc
from reparam.pranc.fileio import decode_prnc, load_prnc

FIXTURE = Path(__file__).parent / "data" / "pranc_iid_v1.prnc"   # written by the pre-issue-21 code


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()[:16]


@pytest.mark.parametrize("dist,want", [("uniform", "dff2a2c386a1ceb1"), ("gaussian", "92e6c929654c9851")])
def test_unit_block_pinned(dist, want):
    assert _digest(gen.unit_block(12345, 2, 5, 300, 3, 7001, dist)) == want


@pytest.mark.parametrize("cfg,want", [
    (dict(k=300, seed=7), "0d7dc0705061ef47"),
    (dict(k=300, seed=7, distribution="gaussian"), "c93e93ffb7157c7c"),
    (dict(k=90, seed=3, budgets="proportional", init="l1-randn"), "b4416a20a603e7c2"),
    (dict(k=50, seed=1, sigma=0.01, distribution="gaussian"), "3a9f7af05fdd2312"),
])
@pytest.mark.parametrize("mode", ["streamed", "materialized"])
def test_exact_weights_pinned(cfg, want, mode):
    torch.manual_seed(0)
    m = build_model("cnn", num_classes=10, in_channels=1, image_size=(8, 8), width=0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        core = apply_pranc(m, PrancConfig(mode=mode, **cfg))
    with torch.no_grad():
        core.alpha.copy_(torch.randn(core.k, generator=torch.Generator().manual_seed(5)) * 0.3)
    assert _digest(core.exact_theta()) == want


def test_old_file_decodes_to_the_same_bits():
    dense, header = decode_prnc(FIXTURE)
    assert "basis" not in header          # written before the basis field existed: i.i.d.
    sd = dense.state_dict()
    blob = b"".join(sd[k].numpy().tobytes() for k in sorted(sd))
    assert hashlib.sha256(blob).hexdigest()[:16] == "ef1a7ce1a67a1dfd"
    model, _ = load_prnc(FIXTURE)
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), dense.eval()(x))


@pytest.mark.parametrize("dist", ["uniform", "gaussian"])
def test_compiled_kernel_and_torch_code_give_the_same_bits(dist, monkeypatch):
    """The optional C kernel (reparam.core.genkernel) and the torch code path produce identical entries."""
    import random

    from reparam.core import genkernel

    if genkernel.kernel() is None:
        pytest.skip("no C compiler: only the torch path exists here")
    rng = random.Random(3)
    for _ in range(12):
        seed, block = rng.randrange(2**40), rng.randrange(5)
        r0, c0 = rng.randrange(100), rng.randrange(300)
        r1, c1 = r0 + rng.randrange(1, 40), c0 + rng.randrange(1, 700)
        scale = torch.rand(c1 - c0, generator=torch.Generator().manual_seed(r0)) * 0.3 + 0.01
        fast = gen.fill_block(torch.empty(r1 - r0, c1 - c0), seed, block, r0, r1, c0, c1, dist, scale)
        monkeypatch.setenv("REPARAM_KERNEL", "0")
        slow = gen.fill_block(torch.empty(r1 - r0, c1 - c0), seed, block, r0, r1, c0, c1, dist, scale)
        monkeypatch.delenv("REPARAM_KERNEL")
        assert torch.equal(fast, slow)
        assert torch.equal(fast, gen.unit_block(seed, block, r0, r1, c0, c1, dist) * scale)
        assert torch.equal(fast[:, :1], torch.tensor([[gen.reference_unit(seed, block, r, c0, dist)
                                                      for r in range(r0, r1)]]).T * scale[:1])
