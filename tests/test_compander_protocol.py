"""The compander on the one protocol: the documented own loop, refusals, Embedding/MHA, the chain after PRANC."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

import reparam
from docexamples import doc_path, own_loop_code
from reparam import compander
from reparam.compander import Config, PsiDecay, param_groups, psi
from reparam.core.errors import ReparamError
from reparam.core.protocol import ReparamWarning
from reparam.core.runtime import derive_seed
from reparam.train import TrainConfig, Trainer

DOC = doc_path("compander")




def toy_batches(n: int = 20, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        y = torch.randint(0, 4, (16,), generator=g)
        x = torch.rand(16, 1, 6, 6, generator=g) * 0.3 + y.view(-1, 1, 1, 1) * 0.25
        out.append((x, y))
    return out


def run_doc(batches, fold: bool = True) -> dict:
    """Execute the guide's own-loop block (optionally without its last line, the fold); it must not warn."""
    code = own_loop_code("compander")
    if not fold:
        code = code[:code.rindex("compander.fold(model)")]
    torch.manual_seed(0)
    ns: dict = {"batches": batches}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exec(compile(code, str(DOC), "exec"), ns)
    return ns


def mean_loss(model: nn.Module, batches) -> float:
    model.eval()
    with torch.no_grad():
        return sum(float(F.cross_entropy(model(x), y)) for x, y in batches) / len(batches)


def test_doc_own_loop_trains_and_folds_to_the_same_function():
    batches = toy_batches()
    start = run_doc([])["model"]                      # the same seed, no step: the initial function
    ns = run_doc(batches, fold=False)
    model, handle = ns["model"], ns["handle"]
    assert handle.layers == ["0", "5"] and [type(h).__name__ for h in handle.hooks] == ["PsiDecay"]
    assert mean_loss(model, batches) < 0.9 * mean_loss(start, batches)
    x = torch.cat([x for x, _ in batches])
    model.eval()
    with torch.no_grad():
        trained = model(x)
        exec("compander.fold(model)", ns)             # the block's last line
        folded = model(x)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert torch.equal(folded, trained)


def test_filter_excluded_layer_is_bit_identical_and_applied_counts_add_up():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 4))
    head = copy.deepcopy(model[5].state_dict())
    h = compander.apply(model, Config(), filter_fn=lambda m, name: name != "5")
    assert not parametrize.is_parametrized(model[5])
    assert all(torch.equal(v, head[k]) for k, v in model[5].state_dict().items())
    assert h.tensors == ["0.weight"] and h.stored == 72 + 2        # v + the shared (a, b)
    assert dict(h.left_dense) == {"0.bias": 8, "1.weight": 8, "1.bias": 8, "5.weight": 128, "5.bias": 4}
    assert h.dense_params == 80 + 16 + 132                          # the plain model's parameters
    rows = reparam.summary(model, print_table=False)
    assert rows[-1].dense == 228 and rows[-1].stored == 228 + 2    # the shared a, b counted once


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(model: nn.Module, before: dict[str, torch.Tensor], structure: str) -> None:
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert repr(model) == structure


def test_apply_twice_is_refused_and_leaves_the_model_unchanged():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    compander.apply(model, Config())
    before, structure = _state(model), repr(model)
    with pytest.raises(ReparamError, match=r"compander is already applied to 0\.weight"):
        compander.apply(model, Config())
    _same(model, before, structure)


def test_out_of_bound_refusal_changes_nothing_even_in_earlier_layers():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[2].weight[0, 0] = 2.0                     # beyond a*pi/2 = 1.257 for a = 0.8
    before, structure = _state(model), repr(model)
    with pytest.raises(ReparamError, match=r"layer 2: initial weight"):
        compander.apply(model, Config(a=0.8))
    _same(model, before, structure)
    assert not parametrize.is_parametrized(model[0])


def test_refused_on_masks_with_the_order_that_works():
    from reparam import tickets

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    tickets.apply(model, tickets.Config(sparsity=0.5))
    before, structure = _state(model), repr(model)
    with pytest.raises(ReparamError, match="apply the compander first, then the masks"):
        compander.apply(model, Config())
    _same(model, before, structure)


class TokenNet(nn.Module):
    def __init__(self, kdim: int | None = None):
        super().__init__()
        self.emb = nn.Embedding(11, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True, kdim=kdim, vdim=kdim)
        self.kv = nn.Linear(8, kdim) if kdim else nn.Identity()
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens):
        h = self.emb(tokens)
        kv = self.kv(h)
        a, _ = self.attn(h, kv, kv, need_weights=False)
        return self.head(self.norm(h + a).mean(1))


@pytest.mark.parametrize("kdim", [None, 6])
def test_embedding_and_attention_projections_are_compandered(kdim):
    torch.manual_seed(0)
    plain = TokenNet(kdim)
    model = copy.deepcopy(plain)
    with pytest.warns(ReparamWarning):       # the LayerNorm and biases stay dense (> 10% of this tiny model)
        h = compander.apply(model, Config(a=3.0, b=1.0))   # Embedding init is N(0, 1): a*pi/2 above 3.4
    proj = ["in_proj_weight"] if kdim is None else ["q_proj_weight", "k_proj_weight", "v_proj_weight"]
    assert set(h.tensors) >= {"emb.weight", "attn.out_proj.weight", *(f"attn.{t}" for t in proj)}
    assert all(parametrize.is_parametrized(model.attn, t) for t in proj)
    tokens = torch.randint(0, 11, (5, 7), generator=torch.Generator().manual_seed(1))
    for mode in (False, True):                      # eval (fast path allowed) and train
        plain.train(mode)
        model.train(mode)
        with torch.no_grad():
            assert torch.allclose(model(tokens), plain(tokens), atol=1e-6, rtol=0)
    loss = F.cross_entropy(model(tokens), torch.arange(5) % 3)
    loss.backward()
    assert model.attn.parametrizations[proj[0]].original.grad.abs().sum() > 0
    assert model.emb.parametrizations.weight.original.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        weights = {(m, t): getattr(m, t).clone() for _, m, t, _ in compander.compander_tensors(model)}
        out = model(tokens)
        compander.fold(model)
        folded = model(tokens)
    assert all(torch.equal(getattr(m, t), w) for (m, t), w in weights.items())     # fold keeps every bit
    if kdim is None:
        assert torch.equal(folded, out)
    else:
        # torch's F.linear takes another kernel for the transposed 3-d key/value input when the weight
        # requires grad (the folded Parameter does, the generated weight under no_grad does not), even
        # with equal weights and inputs: the outputs then differ by float rounding.
        assert torch.allclose(folded, out, atol=1e-6, rtol=0)


class StandInPranc(nn.Module):
    """A tiny stand-in for PRANC on one tensor: the weight is generated from theta (nothing stored densely)."""

    reparam_method = "pranc"

    def __init__(self, theta: torch.Tensor):
        super().__init__()
        self.theta = nn.Parameter(theta)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return self.theta * 1.0

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        return value.new_empty(0)


def test_after_pranc_the_compander_bounds_the_generated_weight():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    theta = torch.randn(4, 5) * 3                   # far beyond the bound: no inverse is taken
    parametrize.register_parametrization(model[0], "weight", StandInPranc(theta), unsafe=True)
    h = compander.apply(model, Config(a=0.8, b=0.5), filter_fn=lambda m, name: name == "0")
    assert [type(p).__name__ for p in model[0].parametrizations.weight] == ["StandInPranc", "Compander"]
    assert h.extra["after_pranc"] == ["0.weight"] and h.stored == 2          # only (a, b)
    expected = psi(theta, torch.tensor(0.8), torch.tensor(0.5))
    assert torch.equal(model[0].weight, expected)
    assert float(model[0].weight.abs().max()) < 0.8 * torch.pi / 2
    # the decay on Psi(theta) reaches theta through the chain
    PsiDecay(0.1, model=model).before_step(0)
    t = theta.clone().requires_grad_(True)
    (0.05 * psi(t, 0.8, 0.5).pow(2).sum()).backward()
    assert torch.allclose(model[0].parametrizations.weight[0].theta.grad, t.grad, rtol=1e-6, atol=0)
    x = torch.randn(3, 5)
    with torch.no_grad():
        out = model(x)
        compander.fold(model)
        assert not parametrize.is_parametrized(model[0]) and torch.equal(model(x), out)


def _trainer_batches(data, cfg: TrainConfig):
    """The batches reparam's Trainer draws in epoch 0 (its seeded shuffle)."""
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, 0))
    x_all, y_all = data.train.tensors
    order = torch.randperm(len(y_all), generator=g)
    return [(x_all[order[i:i + cfg.batch_size]], y_all[order[i:i + cfg.batch_size]])
            for i in range(0, len(order), cfg.batch_size)]


@pytest.mark.parametrize("learnable", [None, "fine"])
def test_own_loop_equals_trainer_bit_for_bit(learnable):
    from types import SimpleNamespace

    from torch.utils.data import TensorDataset

    batches = toy_batches(4, seed=3)
    ds = TensorDataset(torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]))
    data = SimpleNamespace(name="toy", train=ds, val=ds, test=ds, num_classes=4)
    wd = 5e-3
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.1, momentum=0.9, weight_decay=wd, schedule="constant",
                      seed=0, progress=False, checkpoint=False)
    wc = Config(a=0.5, b=1.0, learnable=learnable, wd=wd) if learnable else Config(wd=wd)
    torch.manual_seed(0)
    base = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(16, 4))
    mine, theirs = copy.deepcopy(base), copy.deepcopy(base)
    h_mine, h_theirs = compander.apply(mine, wc), compander.apply(theirs, wc)
    assert len(h_mine.hooks) == (1 if learnable is None else 0)   # learnable WC decays v through the groups
    Trainer(theirs, data, cfg, callbacks=h_theirs.hooks, param_groups=param_groups(theirs, config=wc)).fit()
    opt = torch.optim.SGD(param_groups(mine, config=wc), lr=0.1, momentum=0.9, weight_decay=wd)
    mine.train()
    for step, (x, y) in enumerate(_trainer_batches(data, cfg)):
        loss = F.cross_entropy(mine(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        h_mine.before_step(step)
        opt.step()
        h_mine.after_step(step)
    a, b = mine.state_dict(), theirs.state_dict()
    moved = [k for k in a if not torch.equal(a[k], base.state_dict().get(k, a[k]))]
    assert moved                                                   # training happened
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
