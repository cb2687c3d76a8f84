"""The protocol, checked the same way for every method on three kinds of model.

For each method x {a registry model, an nn.Sequential, a foreign model (Conv+BN, a residual add, a
depthwise conv, nn.Embedding, nn.MultiheadAttention, LayerNorm, a Linear head)}:
apply; 20 steps of a plain loop (with the handle's hooks) lower the loss; filter_fn is honoured (an excluded
layer stays bit-identical); fold leaves a plain model with the same outputs; the applied model's state
saves and loads through the reparam file format into a freshly applied model; summary adds up.
MixtureGrowth cannot take the foreign model (its grown path needs plain ungrouped layers): it must refuse
it naming the layer, with the model unchanged.
"""

import copy
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import reparam
from reparam import compander, mixturegrowth, nola, pranc, tickets, trp
from reparam.core.errors import ReparamError
from reparam.core.fileformat import load_model_state, save_model
from reparam.core.protocol import methods_on
from reparam.models import build_model

METHODS = {"pranc": pranc, "compander": compander, "trp": trp, "tickets": tickets, "mixturegrowth": mixturegrowth,
           "nola": nola}


class Foreign(nn.Module):
    """A user's model: nothing in it was written for reparam."""

    def __init__(self, classes: int = 4, c: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.res = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.res_bn = nn.BatchNorm2d(c)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.pw = nn.Conv2d(c, c, 1)
        self.pos = nn.Embedding(16, c)
        self.attn = nn.MultiheadAttention(c, 2, batch_first=True)
        self.ln = nn.LayerNorm(c)
        self.head = nn.Linear(c, classes)

    def forward(self, x):
        h = self.stem(x)
        h = F.relu(h + self.res_bn(self.res(h)))                    # residual add
        h = F.max_pool2d(self.pw(F.relu(self.dw(h))), 2)            # depthwise + pointwise, 8x8 -> 4x4
        t = h.flatten(2).transpose(1, 2) + self.pos(torch.arange(16, device=x.device))
        t = self.ln(t + self.attn(t, t, t, need_weights=False)[0])
        return self.head(t.mean(1))


def _sequential(bias: bool = True):
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4, bias=bias))


def make_model(kind: str, method: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "registry":
        if method == "mixturegrowth":   # the WRN MixtureGrowth grows: no biases on its layers
            return build_model("wrn-10-2", num_classes=4, in_channels=1, image_size=(8, 8), head_bias=False)
        return build_model("cnn", num_classes=4, in_channels=1, image_size=(8, 8), width=0.25)
    if kind == "sequential":
        return _sequential(bias=method != "mixturegrowth")
    return Foreign()


# the layer each (model kind) excludes through filter_fn, and the head's name
HEAD = {"registry": "head", "sequential": "8", "foreign": "head"}
EXCLUDED = {"registry": "head", "sequential": "3", "foreign": "res"}

CONFIGS = {
    "pranc": lambda: pranc.Config(k=64, seed=3),
    "compander": lambda: compander.Config(a=0.8, b=0.5, on_out_of_bound="clamp", wd=5e-4),
    "trp": lambda: trp.Config(energy=0.1, period=2),
    "tickets": lambda: tickets.Config(sparsity=0.5, linear=True),
    "mixturegrowth": lambda: mixturegrowth.Config(),
    "nola": lambda: nola.Config(k=8, rank=2, seed=3),
}
LR = {"pranc": 0.05, "compander": 0.05, "trp": 0.05, "tickets": 0.05, "mixturegrowth": 0.05, "nola": 0.05}


def _filter(kind: str, method: str):
    if method == "mixturegrowth":
        return None     # every layer of a grown network is template-mixing
    if method == "trp" and kind != "registry":
        # TRP's default takes 3x3 convs other than the stem; Linear layers when a filter picks them
        return lambda m, n: n != EXCLUDED[kind] and (isinstance(m, (nn.Conv2d, nn.Linear)))
    return lambda m, n: n != EXCLUDED[kind]


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.rand(32, 1, 8, 8, generator=g), torch.randint(0, 4, (32,), generator=g)


def _apply(method, model, kind):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")    # left-dense reports; their content is tested in test_protocol
        return METHODS[method].apply(model, CONFIGS[method](), filter_fn=_filter(kind, method))


def _params_of(model, name):
    return {k: v.detach().clone() for k, v in model.get_submodule(name).state_dict().items()}


CASES = [(m, k) for m in METHODS for k in ("registry", "sequential", "foreign")]


@pytest.mark.parametrize("method,kind", CASES)
def test_method_on_model(method, kind, tmp_path):
    model = make_model(kind, method)
    x, y = _data()
    if method == "mixturegrowth" and kind == "foreign":
        state = copy.deepcopy(model.state_dict())
        with pytest.raises(ReparamError) as err:
            _apply(method, model, kind)
        assert "\n" not in str(err.value) and any(n in str(err.value) for n in ("stem.0", "dw", "pos", "attn"))
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
        assert not any(hasattr(m, "parametrizations") for m in model.modules())
        return
    excluded = EXCLUDED[kind] if _filter(kind, method) is not None else None
    before_excluded = _params_of(model, excluded) if excluded else None
    handle = _apply(method, model, kind)

    # filter_fn honoured: the excluded layer is untouched and owned by no method
    if excluded:
        layer = model.get_submodule(excluded)
        assert excluded not in handle.layers
        assert all(not methods_on(layer, t) for t, _ in layer.named_parameters(recurse=False))
        after = _params_of(model, excluded)
        assert after.keys() == before_excluded.keys()
        assert all(torch.equal(before_excluded[k], after[k]) for k in after)
    assert handle.layers and handle.method == method

    # summary adds up: dense = the plain model's parameters, stored = every number kept
    rows = reparam.summary(model, print_table=False)
    plain = METHODS[method].fold(copy.deepcopy(model))
    assert rows[-1].dense == sum(p.numel() for p in plain.parameters())
    assert rows[-1].stored == sum(r.stored for r in rows[:-1])
    assert {r.method for r in rows if r.tensor.split(".")[0] != "shared:"} >= {method}

    # 20 steps of a plain loop with the handle's hooks lower the loss
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR[method], momentum=0.9)
    model.train()

    def full_loss():
        with torch.no_grad():
            model.eval()
            out = F.cross_entropy(model(x), y).item()
            model.train()
            return out

    start = full_loss()
    for step in range(20):
        xb, yb = handle.before_forward(x, y)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        handle.before_step(step)
        opt.step()
        handle.after_step(step)
    end = full_loss()
    assert end < start, (start, end)

    # the applied state round-trips through the reparam file format into a freshly applied model
    model.eval()
    with torch.no_grad():
        ref = model(x)
    save_model(tmp_path / "m.safetensors", model)
    fresh = make_model(kind, method)
    _apply(method, fresh, kind)
    load_model_state(tmp_path / "m.safetensors", fresh)
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), ref)

    # fold: a plain module, the same function
    folded = METHODS[method].fold(model)
    assert not any(hasattr(m, "parametrizations") for m in folded.modules())
    assert not any(methods_on(m, t) for m in folded.modules() for t, _ in m.named_parameters(recurse=False))
    folded.eval()
    with torch.no_grad():
        torch.testing.assert_close(folded(x), ref, rtol=0, atol=1e-5)


def test_pranc_on_sequential_runs_and_keeps_no_child():
    """The issue's crash: PRANC on any nn.Sequential called its coefficient module like a layer."""
    model = _sequential()
    n_children = len(model)
    pranc.apply(model, pranc.Config(k=10))
    assert len(model) == n_children
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 4)


def test_left_dense_is_reported_when_over_ten_percent():
    model = Foreign()
    with pytest.warns(reparam.core.protocol.ReparamWarning, match=r"trp left .* parameters dense"):
        h = trp.apply(model, trp.Config())
    assert h.left_dense_numbers > 0.1 * h.dense_params
    assert any(layer == "dw" for layer, _ in h.skipped)
