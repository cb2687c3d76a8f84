"""Tickets on the one protocol: the documented own loop, exact sparsity, refusals, composition, the hooks."""

from __future__ import annotations

import copy
import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize
from torch.utils.data import TensorDataset

from docexamples import doc_path, own_loop_code
from reparam import compander, tickets
from reparam.core.errors import ReparamError
from reparam.core.runtime import derive_seed
from reparam.tickets import masks as mk
from reparam.tickets.draw import omp
from reparam.tickets.hooks import AdversarialTraining, GaussianNoiseTraining
from reparam.train import TrainConfig, Trainer

DOC = doc_path("tickets")




def toy_batches(n: int, seed: int = 0, size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        y = torch.randint(0, 4, (size,), generator=g)
        x = (torch.rand(size, 1, 6, 6, generator=g) * 0.3 + y.view(-1, 1, 1, 1) * 0.2).clamp(0, 1)
        out.append((x, y))
    return out


def run(code: str, batches) -> dict:
    torch.manual_seed(0)
    ns: dict = {"batches": batches}
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # the guide's example must not warn
        exec(compile(code, str(DOC), "exec"), ns)
    return ns


def mean_loss(model: nn.Module, batches) -> float:
    model.eval()
    with torch.no_grad():
        return sum(float(F.cross_entropy(model(x), y)) for x, y in batches) / len(batches)


def conv_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach() for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_doc_own_loop_exact_sparsity_loss_down_and_fold():
    code = own_loop_code("tickets")
    batches = toy_batches(30)
    start = run(code[:code.index("\nopt =")], [])["model"]            # the same seed: the initial model
    head, last = code[:code.rindex("tickets.fold(model)")], "tickets.fold(model)"
    ns = run(head, batches)
    model, handle = ns["model"], ns["handle"]
    total = sum(w.numel() for w in conv_weights(model))
    kept = total - round(0.9 * total)
    assert handle.layers == ["0", "3"] and handle.extra["sparsity"] == 1 - kept / total
    assert sum(int((w != 0).sum()) for w in conv_weights(model)) == kept       # after the fine-tuning steps
    assert mean_loss(model, batches) < 0.9 * mean_loss(start, batches)
    x = torch.cat([x for x, _ in batches])
    with torch.no_grad():
        trained = model(x)
        exec(last, ns)
        folded = model(x)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert sum(int((w != 0).sum()) for w in conv_weights(model)) == kept
    assert torch.equal(folded, trained)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 12, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, 12)
        self.head = nn.Linear(12, 4)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x))).mean((2, 3))
        return self.head(F.relu(self.fc(x)))


def test_apply_is_omp_exact_sparsity_and_filter_fn_is_honoured():
    torch.manual_seed(0)
    model = Net()
    ref = omp(copy.deepcopy(model), 0.7, tickets.Pattern("unstructured"), "global",
              mk.prunable(linear=True))
    h = tickets.apply(model, tickets.Config(sparsity=0.7, linear=True))
    assert h.layers == ["conv1", "conv2", "fc"]                      # the head never
    assert all(torch.equal(h.extra["masks"][k], ref[k]) for k in ref) and set(ref) == set(h.extra["masks"])
    n = 54 + 648 + 144
    assert mk.count(mk.get_masks(model)) == (n - round(0.7 * n), n)
    torch.manual_seed(0)
    model = Net()
    fc = copy.deepcopy(model.fc.state_dict())
    h = tickets.apply(model, tickets.Config(sparsity=0.5, linear=True), filter_fn=lambda m, name: name != "fc")
    assert h.layers == ["conv1", "conv2"] and not parametrize.is_parametrized(model.fc)
    assert all(torch.equal(v, fc[k]) for k, v in model.fc.state_dict().items())
    assert mk.count(h.extra["masks"]) == (351, 702)


def test_config_is_checked_when_built(tmp_path):
    for kwargs, field in ((dict(sparsity=1.0), "sparsity"), (dict(sparsity=-0.1), "sparsity"),
                          (dict(pattern="diagonal"), "pattern"), (dict(scope="model"), "scope"),
                          (dict(linear="yes"), "linear"), (dict(masks=[1, 2]), "masks"),
                          (dict(masks=tmp_path / "none.mask.safetensors"), "not found")):
        with pytest.raises(ReparamError, match=field):
            tickets.Config(**kwargs)
    assert tickets.Config(pattern="nm:2:4").pattern == tickets.Pattern("nm", 2, 4)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, repr(model)


def _unchanged(model, before):
    state, structure = before
    now = model.state_dict()
    assert set(now) == set(state) and all(torch.equal(now[k], state[k]) for k in state)
    assert repr(model) == structure


def test_apply_twice_or_bad_masks_is_refused_with_the_model_unchanged():
    torch.manual_seed(0)
    model = Net()
    tickets.apply(model, tickets.Config(sparsity=0.5))
    before = _state(model)
    with pytest.raises(ReparamError, match=r"tickets is already applied to conv1\.weight"):
        tickets.apply(model, tickets.Config(sparsity=0.8))
    _unchanged(model, before)
    plain = Net()
    before = _state(plain)
    bad = {"conv1.weight": torch.ones(6, 1, 3, 3), "conv2.weight": torch.ones(3, 3)}
    with pytest.raises(ReparamError, match="conv2.weight"):
        tickets.apply(plain, tickets.Config(masks=bad))
    _unchanged(plain, before)


def test_given_masks_from_a_file_and_the_transfer_path(tmp_path):
    from reparam.experiments.tickets.transfer import ticket_model

    torch.manual_seed(0)
    model = Net()
    masks = omp(model, 0.8, tickets.Pattern("channel"), "layer")
    mk.save_masks(tmp_path / "t.mask.safetensors", masks)
    a = copy.deepcopy(model)
    h = tickets.apply(a, tickets.Config(masks=str(tmp_path / "t.mask.safetensors")))
    assert h.layers == ["conv1", "conv2"] and all(torch.equal(mk.get_masks(a)[k], masks[k]) for k in masks)
    net = ticket_model(model, masks, num_classes=3)                  # the experiments' ticket
    assert all(torch.equal(mk.get_masks(net)[k], masks[k]) for k in masks)
    assert [type(p).__name__ for p in net.conv1.parametrizations.weight] == ["MaskParam"]


def test_masks_after_the_compander_mask_psi_of_v_and_fold_exactly():
    torch.manual_seed(0)
    model = Net()
    compander.apply(model, compander.Config(a=0.8, b=0.5))
    psi_w = model.conv2.weight.detach().clone()
    h = tickets.apply(model, tickets.Config(sparsity=0.6))           # drawn from |Psi(v)|
    assert [type(p).__name__ for p in model.conv2.parametrizations.weight] == ["Compander", "MaskParam"]
    mask = h.extra["masks"]["conv2.weight"]
    assert torch.equal(model.conv2.weight, psi_w * mask)
    assert h.stored == 54 + 648                                      # the masks (v is the compander's)
    x = torch.rand(5, 1, 6, 6)
    model.eval()
    with torch.no_grad():
        out = model(x)
        tickets.fold(model)                                          # bakes the whole chain
        assert not parametrize.is_parametrized(model.conv2) and torch.equal(model(x), out)
    assert int((model.conv2.weight == 0).sum()) == int((mask == 0).sum())


def _trainer_batches(data, cfg: TrainConfig):
    """The batches reparam's Trainer draws in epoch 0 (its seeded shuffle)."""
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, 0))
    x_all, y_all = data.train.tensors
    order = torch.randperm(len(y_all), generator=g)
    return [(x_all[order[i:i + cfg.batch_size]], y_all[order[i:i + cfg.batch_size]])
            for i in range(0, len(order), cfg.batch_size)]


@pytest.mark.parametrize("kind", ["pgd", "noise"])
def test_own_loop_with_the_hook_equals_the_trainer_bit_for_bit(kind):
    batches = toy_batches(3, seed=5)
    ds = TensorDataset(torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]))
    data = SimpleNamespace(name="toy", train=ds, val=ds, test=ds, num_classes=4)
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.05, momentum=0.9, weight_decay=0.0, schedule="constant",
                      seed=0, progress=False, checkpoint=False)
    torch.manual_seed(0)
    base = Net()
    tickets.apply(base, tickets.Config(sparsity=0.5))                 # train a ticket, as after drawing
    mine, theirs = copy.deepcopy(base), copy.deepcopy(base)

    def hook(model=None):
        if kind == "pgd":
            return AdversarialTraining(tickets.PGDConfig(eps=0.1, steps=2), seed=7, model=model)
        return GaussianNoiseTraining(0.2, seed=7)

    Trainer(theirs, data, cfg, callbacks=[hook()]).fit()
    h = hook(mine)
    opt = torch.optim.SGD(mine.parameters(), lr=0.05, momentum=0.9)
    mine.train()
    for x, y in _trainer_batches(data, cfg):
        x, y = h.before_forward(x, y)
        loss = F.cross_entropy(mine(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    a, b = mine.state_dict(), theirs.state_dict()
    assert any(not torch.equal(a[k], base.state_dict()[k]) for k in a)      # training happened
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
