"""Every ordered pair of methods on one tensor: a chain with a tested meaning, or a one-line refusal that
names both methods and the layer and leaves the model bit-identical. No pair may be silent.

Defined chains (first applied, then second):
    pranc -> compander   w = a * arctan(theta / b): the compander bounds the generated weights
    pranc -> tickets     w = theta * mask: a sparse generated network
    compander -> tickets w = Psi(v) * mask
Everything else, a method twice included, is refused. NOLA (an adapter over a frozen base) composes with
nothing: it goes on plain tensors only, and nothing goes on a NOLA tensor (fold it into the base first).
"""

import warnings

import pytest
import torch

from reparam import compander, mixturegrowth, nola, pranc, tickets, trp
from reparam.core.errors import ReparamError
from reparam.mixturegrowth import build_wrn

METHODS = ["pranc", "compander", "trp", "tickets", "mixturegrowth", "nola"]
CHAINS = {("pranc", "compander"), ("pranc", "tickets"), ("compander", "tickets")}
LAYER = "stage_1.0.conv2"          # a 3x3, non-stem conv every method takes by default
X = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def _model():
    torch.manual_seed(0)
    return build_wrn("wrn-10-2", num_classes=3, in_channels=1)


def _apply(method, model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # left-dense reports are not what this test is about
        if method == "pranc":
            return pranc.apply(model, pranc.Config(k=20))
        if method == "compander":
            return compander.apply(model, compander.Config(a=0.8, b=0.5, on_out_of_bound="clamp"))
        if method == "trp":
            return trp.apply(model, trp.Config(energy=0.3))
        if method == "tickets":
            return tickets.apply(model, tickets.Config(sparsity=0.5))
        if method == "nola":
            return nola.apply(model, nola.Config(k=4, rank=2))
        return mixturegrowth.apply(model, mixturegrowth.Config())


def _snapshot(model):
    model.eval()
    with torch.no_grad():
        out = model(X).clone()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    chains = {n: [type(p).__name__ for p in m.parametrizations[t]]
              for n, m in model.named_modules() if hasattr(m, "parametrizations")
              for t in m.parametrizations.keys()}
    return out, state, chains


def _weight(model):
    m = model.get_submodule(LAYER)
    with torch.no_grad():
        return m.weight.detach().clone()


@pytest.mark.parametrize("first", METHODS)
@pytest.mark.parametrize("second", METHODS)
def test_every_ordered_pair_composes_or_refuses(first, second):
    model = _model()
    _apply(first, model)
    model.eval()
    before_w = _weight(model)
    out, state, chains = _snapshot(model)
    if (first, second) not in CHAINS:
        with pytest.raises(ReparamError) as err:
            _apply(second, model)
        msg = str(err.value)
        assert "\n" not in msg and first in msg and second in msg
        assert any(part in msg for part in ("stage_", "conv_3x3", "head", "lastact", "bn")), msg
        out2, state2, chains2 = _snapshot(model)
        assert chains2 == chains
        assert state2.keys() == state.keys() and all(torch.equal(state[k], state2[k]) for k in state)
        assert torch.equal(out, out2)
        return
    _apply(second, model)
    model.eval()
    layer = model.get_submodule(LAYER)
    after = _weight(model)
    if second == "compander":
        # the compander acts on the generated weight: w = a * arctan(theta / b), bounded by a * pi / 2
        assert torch.equal(after, 0.8 * torch.atan(before_w / 0.5))
        assert after.abs().max() < 0.8 * torch.pi / 2
    else:
        mask = layer.parametrizations.weight[-1].mask
        assert torch.equal(after, before_w * mask)
        assert 0 < int(mask.sum()) < mask.numel()
    # training reaches the tensors below the chain: one step changes the weight
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    model(X).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    # fold leaves a plain model computing the same function (eval mode)
    model.eval()
    with torch.no_grad():
        ref = model(X)
    {"pranc": pranc, "compander": compander, "tickets": tickets}[first].fold(model)
    assert not any(hasattr(m, "parametrizations") for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(X), ref, rtol=0, atol=1e-6)


def test_the_two_silent_stacks_of_the_issue_are_now_defined():
    """Compander then TRP used to report a projection that changed nothing; compander then PRANC used to
    accept a compander that had no effect. Both are refused now, naming both methods."""
    for second in ("trp", "pranc"):
        model = _model()
        _apply("compander", model)
        with pytest.raises(ReparamError, match=f"cannot apply {second} to .*compander"):
            _apply(second, model)


def test_a_layer_the_other_method_did_not_take_is_free():
    """Ownership is per tensor: PRANC on the head only, the compander on everything else."""
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pranc.apply(model, pranc.Config(k=5), filter_fn=lambda m, n: n == "head")
        h = compander.apply(model, compander.Config(on_out_of_bound="clamp"), filter_fn=lambda m, n: n != "head")
    assert "head" not in h.layers and LAYER in h.layers
