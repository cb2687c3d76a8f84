"""PRANC's delta mode: W = W_pretrained (frozen) + sum_j alpha_j basis_j, alpha starting at zero.

The adapted model starts at the pretrained function bit for bit; only alpha trains; fold merges; the adapter
file rebuilds the trained model exactly on its base and is refused on another; a .prnc file (which cannot
hold the base) refuses a delta-mode model."""

import copy
import warnings

import pytest
import torch
import torch.nn as nn

from loops import adam_steps
from reparam import pranc
from reparam.core import adapter as ad
from reparam.core.errors import ReparamError
from reparam.pranc import adapter as pa
from reparam.pranc import config as pranc_config
from reparam.pranc.fileio import save_prnc


def base_model(seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                      nn.Flatten(), nn.Linear(24, 4))
    m.train()
    with torch.no_grad():
        m(torch.rand(32, 1, 6, 6))
    return m.eval()


def data(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(24, 1, 6, 6, generator=g), torch.randint(0, 4, (24,), generator=g)


def out(model):
    with torch.no_grad():
        return model(data()[0])


def train(model, handle, steps=10):
    adam_steps(model, handle, *data(), steps)


def apply(model, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pranc.apply(model, pranc.Config(k=kw.pop("k", 30), delta=True, **kw))


@pytest.mark.parametrize("mode", ["materialized", "streamed"])
def test_zero_alpha_is_the_pretrained_model_bit_for_bit(mode):
    base = base_model()
    model = copy.deepcopy(base)
    h = apply(model, mode=mode)
    assert h.extra["core"].config.init == "zero" and torch.equal(h.extra["core"].alpha, torch.zeros(30))
    assert torch.equal(out(model), out(base))
    model.train()
    x, _ = h.before_forward(*data())
    with torch.no_grad():
        assert torch.equal(model(x), base(x))            # BatchNorm kept in eval by the hook
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["0.parametrizations.weight.0.core.alpha"]
    assert ad.fingerprint(model) == ad.fingerprint(base)


def test_training_moves_only_alpha_and_fold_merges():
    base = base_model()
    model = copy.deepcopy(base)
    h = apply(model)
    train(model, h)
    assert ad.fingerprint(model) == ad.fingerprint(base)     # the base (and its BN statistics) untouched
    adapted = out(model)
    assert not torch.equal(adapted, out(base))
    pranc.fold(model)
    assert not any(hasattr(m, "parametrizations") for m in model.modules())
    assert torch.equal(out(model), adapted)


def test_adapter_file_round_trip_and_refusals(tmp_path):
    base = base_model()
    model = copy.deepcopy(base)
    h = apply(model, k=40, budgets="uniform")
    train(model, h)
    adapted = out(model)
    pa.save_adapter(tmp_path / "p.safetensors", model)
    fresh = copy.deepcopy(base)
    assert pa.load_adapter(tmp_path / "p.safetensors", fresh) is not None
    assert torch.equal(out(fresh), adapted)
    pa.remove(fresh)
    assert torch.equal(out(fresh), out(base))
    pa.round_coefficients(model, "int8")
    q = out(model)
    pa.save_adapter(tmp_path / "q.safetensors", model, coef_dtype="int8")
    assert pa.load_adapter(tmp_path / "q.safetensors", fresh) is not None
    assert torch.equal(out(fresh), q)
    other = base_model(seed=3)
    with pytest.raises(ReparamError, match="other base weights") as err:
        pa.load_adapter(tmp_path / "p.safetensors", other)
    assert "\n" not in str(err.value) and not hasattr(other[0], "parametrizations")
    with pytest.raises(ReparamError, match="adapter over its pretrained base"):
        save_prnc(tmp_path / "m.prnc", model)


def test_delta_mode_settings_are_checked():
    with pytest.raises(ReparamError, match="init 'e0' is not allowed in delta mode"):
        pranc.Config(k=5, delta=True, init="e0")
    with pytest.raises(ReparamError, match="delta must be True or False"):
        pranc.Config(k=5, delta=1)
    assert pranc.Config(k=5).init == "e0" and pranc.Config(k=5, delta=True).init == "zero"


# Every basis PRANC has (i.i.d. and Fastfood): the delta adds to the pretrained tensor whichever basis
# generates it.
BASES = pranc_config.BASES
assert "fastfood" in BASES


@pytest.mark.parametrize("basis", BASES)
def test_every_basis_starts_at_the_base_and_rebuilds_from_the_file(basis, tmp_path):
    base = base_model()
    model = copy.deepcopy(base)
    h = apply(model, **({} if basis == "iid" else {"basis": basis}))
    assert torch.equal(out(model), out(base))
    train(model, h)
    adapted = out(model)
    assert not torch.equal(adapted, out(base)) and ad.fingerprint(model) == ad.fingerprint(base)
    pa.save_adapter(tmp_path / "a.safetensors", model)
    fresh = copy.deepcopy(base)
    pa.load_adapter(tmp_path / "a.safetensors", fresh)
    assert torch.equal(out(fresh), adapted)
