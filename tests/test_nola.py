"""NOLA: zero-initialised deltas give the base bit for bit; merge/unmerge and remove restore the base exactly;
two adapters swap on one base; an adapter file from another base is refused; quantized coefficients decode
to exactly the values the model evaluated with; the delta is the paper's s (sum alpha_i A_i)(B_0 + sum
beta_j B_j)."""

import copy
import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from loops import adam_steps
from reparam import nola
from reparam.core import adapter as ad
from reparam.core import generator
from reparam.core.errors import ReparamError
from reparam.nola.core import FACTOR_A, FACTOR_B, FACTOR_B0, block_id


class Net(nn.Module):
    """Conv + BatchNorm, a grouped conv, attention (in_proj + out_proj), an Embedding NOLA skips, a head."""

    def __init__(self, c: int = 8, classes: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(1, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=2)
        self.pos = nn.Embedding(16, c)
        self.attn = nn.MultiheadAttention(c, 2, batch_first=True)
        self.head = nn.Linear(c, classes)

    def forward(self, x):
        h = F.relu(self.bn(self.conv(x)))
        h = F.max_pool2d(F.relu(self.dw(h)), 2)
        t = h.flatten(2).transpose(1, 2) + self.pos(torch.arange(16))
        return self.head((t + self.attn(t, t, t, need_weights=False)[0]).mean(1))


def data(n=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


def base_model(seed=0):
    torch.manual_seed(seed)
    m = Net()
    m.train()
    with torch.no_grad():      # BatchNorm statistics that are not the defaults, as a pretrained model's
        m(data(64, 9)[0])
    return m.eval()


def apply(model, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nola.apply(model, nola.Config(**{"k": 6, "rank": 2, **kw}))


def train(model, handle, steps=15, seed=1, lr=0.05):
    return adam_steps(model, handle, *data(seed=seed), steps, lr)


def out(model, x=None):
    with torch.no_grad():
        return model(data()[0] if x is None else x)


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


@pytest.mark.parametrize("sharing", ["per-layer", "shared"])
def test_zero_initialised_delta_is_the_base_bit_for_bit(sharing):
    base = base_model()
    ref = out(base)
    model = copy.deepcopy(base)
    h = apply(model, sharing=sharing)
    assert h.layers == ["conv", "dw", "attn", "attn.out_proj", "head"] and h.skipped[0][0] == "pos"
    assert torch.equal(out(model), ref)
    model.train()                  # training mode too: the hook keeps the base's BatchNorm statistics
    x, y = h.before_forward(*data())
    base.train()
    base.bn.eval()                 # (attention takes another kernel path in training mode: compare like with like)
    with torch.no_grad():
        assert torch.equal(model(x), base(x))
    base.eval()
    assert ad.fingerprint(model) == ad.fingerprint(base)
    # only alpha and beta train; with A = 0 at the start only alpha has a gradient (B = B_0 != 0)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "conv.parametrizations.weight.0.core.alpha", "conv.parametrizations.weight.0.core.beta"]
    F.cross_entropy(model(x), y).backward()
    core = nola.nola_core(model)
    assert core.alpha.grad.abs().sum() > 0 and torch.equal(core.beta.grad, torch.zeros_like(core.beta))
    assert h.stored == (2 * 6 if sharing == "shared" else 5 * 2 * 6)


def test_the_delta_is_the_papers_formula_from_the_portable_generator():
    model = base_model()
    h = apply(model, k=5, l=3, rank=3, lora_alpha=6.0, seed=11)
    core = h.extra["core"]
    with torch.no_grad():
        core.alpha.copy_(torch.randn(core.alpha.shape, generator=torch.Generator().manual_seed(0)))
        core.beta.copy_(torch.randn(core.beta.shape, generator=torch.Generator().manual_seed(1)))
    plan = core.layers[1]                              # dw: [8, 4, 3, 3] -> 8 x 36
    assert (plan.out, plan.inn) == (8, 36)

    def units(factor, rows, cols):
        return generator.unit_block(11, block_id(plan.index, factor), 0, rows, 0, cols)

    a = core.alpha[plan.alpha_offset:plan.alpha_offset + 5].detach()
    b = core.beta[plan.beta_offset:plan.beta_offset + 3].detach()
    A = torch.einsum("i,ij->j", a.double(), units(FACTOR_A, 5, 8 * 3).double() / math.sqrt(5)).view(8, 3)
    B = units(FACTOR_B0, 1, 3 * 36)[0].double() / 6 + torch.einsum(
        "j,jk->k", b.double(), units(FACTOR_B, 3, 3 * 36).double() / math.sqrt(3))
    expected = model.dw.parametrizations.weight.original.double() + 2.0 * (A @ B.view(3, 36)).view(8, 4, 3, 3)
    torch.testing.assert_close(model.dw.weight.double(), expected, rtol=0, atol=1e-6)
    # every layer and factor has its own matrices
    other = core.layers[0]
    assert not torch.equal(getattr(core, f"A_{plan.index}")[:, :8], getattr(core, f"A_{other.index}")[:, :8])


def test_the_weights_do_not_depend_on_train_or_eval_mode_or_the_device_path():
    model = base_model()
    h = apply(model)
    train(model, h, steps=3)
    with torch.no_grad():
        model.eval()
        w_eval = model.attn.in_proj_weight.clone()
        model.train()
        w_train = model.attn.in_proj_weight.clone()
    assert torch.equal(w_eval, w_train)


def test_merge_then_unmerge_restores_the_base_exactly():
    base = base_model()
    base_state = copy.deepcopy(base.state_dict())
    model = copy.deepcopy(base)
    h = apply(model)
    originals = {n: model.get_submodule(n).parametrizations[t].original for n, t in
                 [(p.module, p.tensor) for p in h.extra["core"].layers]}
    train(model, h)
    adapted = out(model)
    assert not torch.equal(adapted, out(base))
    nola.merge(model)
    assert nola.is_merged(model) and not any(hasattr(m, "parametrizations") for m in model.modules())
    assert torch.equal(out(model), adapted)
    assert ad.fingerprint(model) == ad.fingerprint(base)            # the base is kept aside, not subtracted
    nola.unmerge(model)
    assert torch.equal(out(model), adapted)
    for (name, t), orig in zip([(p.module, p.tensor) for p in h.extra["core"].layers], originals.values()):
        assert model.get_submodule(name).parametrizations[t].original is orig   # the very same tensors
    nola.remove(model)
    assert same_state(dict(model.state_dict()), base_state)
    assert torch.equal(out(model), out(base))
    assert all(p.requires_grad for p in model.parameters())          # the flags apply froze come back


def test_fold_is_merge_for_good():
    model = base_model()
    h = apply(model)
    train(model, h)
    adapted = out(model)
    nola.fold(model)
    assert not any(hasattr(m, "parametrizations") or getattr(m, "_reparam_tags", None) for m in model.modules())
    assert torch.equal(out(model), adapted)
    assert all(p.requires_grad for p in model.parameters())


def test_two_adapters_swap_on_one_base(tmp_path):
    base = base_model()
    model = copy.deepcopy(base)
    h = apply(model)
    core = h.extra["core"]
    base_ptrs = [p.data_ptr() for p in model.parameters() if not p.requires_grad]
    train(model, h, seed=1)
    out_a = out(model)
    nola.save_adapter(tmp_path / "a.safetensors", model)
    nola.set_coefficients(model, {"alpha": torch.zeros_like(core.alpha), "beta": torch.zeros_like(core.beta)})
    assert torch.equal(out(model), out(base))
    train(model, h, seed=2)
    out_b = out(model)
    nola.save_adapter(tmp_path / "b.safetensors", model)
    assert not torch.equal(out_a, out_b)
    for name, expected in (("a", out_a), ("b", out_b), ("a", out_a)):
        assert nola.load_adapter(tmp_path / f"{name}.safetensors", model) is None   # swapped, not re-applied
        assert torch.equal(out(model), expected)
    nola.merge(model)       # swapping a merged model re-merges with the new numbers
    nola.load_adapter(tmp_path / "b.safetensors", model)
    assert nola.is_merged(model) and torch.equal(out(model), out_b)
    nola.unmerge(model)
    assert [p.data_ptr() for p in model.parameters() if not p.requires_grad] == base_ptrs
    # a fresh copy of the base rebuilds the adapter from the file alone, bit for bit
    fresh = copy.deepcopy(base)
    assert nola.load_adapter(tmp_path / "a.safetensors", fresh) is not None
    assert torch.equal(out(fresh), out_a)


def test_a_file_from_another_base_is_refused_in_one_line(tmp_path):
    model = base_model()
    h = apply(model)
    train(model, h, steps=2)
    nola.save_adapter(tmp_path / "a.safetensors", model)
    other = base_model(seed=5)                      # same architecture, other weights
    state = copy.deepcopy(other.state_dict())
    with pytest.raises(ReparamError, match="other base weights") as err:
        nola.load_adapter(tmp_path / "a.safetensors", other)
    assert "\n" not in str(err.value)
    assert same_state(dict(other.state_dict()), state) and not hasattr(other.conv, "parametrizations")
    touched = base_model()
    with torch.no_grad():
        touched.bn.running_mean[0] += 1e-6            # a buffer is part of the base too
    with pytest.raises(ReparamError, match="other base weights"):
        nola.load_adapter(tmp_path / "a.safetensors", touched)
    wider = Net(c=12)
    with pytest.raises(ReparamError, match="another architecture"):
        nola.load_adapter(tmp_path / "a.safetensors", wider)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_packing_and_rounding_are_exact_and_idempotent(bits):
    v = torch.randn(37, generator=torch.Generator().manual_seed(bits))
    segs = [(0, 20), (20, 17)]
    r = ad.round_coefficients(v, f"int{bits}", segs)
    assert torch.equal(ad.round_coefficients(r, f"int{bits}", segs), r)
    enc = ad.encode_coefficients("alpha", v, f"int{bits}", segs)
    assert enc["alpha.q"].numel() == math.ceil(37 * bits / 8)
    assert torch.equal(ad.decode_coefficients(enc, "alpha", f"int{bits}", 37, segs), r)
    levels = 2 ** (bits - 1) - 1
    assert len(torch.unique(r[:20])) <= 2 * levels + 1


def test_quantized_adapters_decode_to_what_the_model_evaluated(tmp_path):
    base = base_model()
    model = copy.deepcopy(base)
    h = apply(model, quant_bits=3)                 # quantization-aware training
    train(model, h)
    qat = out(model)
    header = nola.save_adapter(tmp_path / "q.safetensors", model, coef_dtype="int3")
    fresh = copy.deepcopy(base)
    nola.load_adapter(tmp_path / "q.safetensors", fresh)
    assert torch.equal(out(fresh), qat)
    plain = copy.deepcopy(base)                    # post-training rounding of a float adapter
    h2 = apply(plain)
    train(plain, h2)
    nola.round_coefficients(plain, "float16")
    f16 = out(plain)
    h16 = nola.save_adapter(tmp_path / "h.safetensors", plain, coef_dtype="float16")
    fresh = copy.deepcopy(base)
    nola.load_adapter(tmp_path / "h.safetensors", fresh)
    assert torch.equal(out(fresh), f16)
    n = nola.nola_core(plain).stored
    assert h16["counts"]["payload_bytes"] == 2 * n
    assert header["counts"]["payload_bytes"] == math.ceil(n / 2 * 3 / 8) * 2 + 4 * 10   # 5 layers x 2 steps


def test_bad_settings_and_refusals_are_one_line():
    for kw, field in (({"k": 0}, "k"), ({"rank": 1.5}, "rank"), ({"l": -1}, "l"), ({"sharing": "all"}, "sharing"),
                      ({"quant_bits": 1}, "quant_bits"), ({"lora_alpha": 0}, "lora_alpha")):
        with pytest.raises(ReparamError, match=field) as err:
            nola.Config(**kw)
        assert "\n" not in str(err.value)
    model = base_model()
    with pytest.raises(ReparamError, match="no layer"):
        nola.apply(model, nola.Config(), filter_fn=lambda m, n: False)
    apply(model)
    with pytest.raises(ReparamError, match="nola is already applied"):
        apply(model)
    with pytest.raises(ReparamError, match="no NOLA adapter"):
        nola.nola_core(base_model())
