"""TRP on the one protocol: Config checks, apply -> Applied (chooses, claims, projects once), the hook in a
plain loop (the own-loop example of docs/trp.md, run as written) and in the Trainer, decompose, fold."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize
from torch.utils.data import TensorDataset

import reparam
from docexamples import doc_path, own_loop_code
from reparam import trp
from reparam.core.errors import ReparamError
from reparam.core.protocol import Applied, ReparamWarning, methods_on
from reparam.train import Callback, TrainConfig, Trainer
from reparam.trp.flops import conv_shapes

DOC = doc_path("trp")
DOC_CONFIG = trp.Config(scheme="channel", energy=0.1, period=2, nuclear=3e-4)   # the example's settings




def _net(seed=0, linear=False):
    torch.manual_seed(seed)
    head = [nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3)] if linear else [nn.Linear(16, 3)]
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), *head)


def _data(n=80):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 3
    x = torch.rand(n, 1, 6, 6, generator=g) * 0.3 + y.view(-1, 1, 1, 1) / 3
    ds = TensorDataset(x, y)
    return SimpleNamespace(name="toy", train=ds, val=ds, test=ds, num_classes=3, in_channels=1, image_size=(6, 6))


def _rank(w: torch.Tensor, scheme: str = "channel") -> int:
    return int(torch.linalg.matrix_rank(trp.to_matrix(w.detach(), scheme)))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(model, state) -> bool:
    now = model.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[k], v) for k, v in state.items())


class _Record(Callback):
    """Keeps the batches the Trainer feeds, so a plain loop can replay them."""

    def __init__(self):
        self.batches = []

    def before_forward(self, trainer, x, y):
        self.batches.append((x.clone(), y.clone()))
        return x, y


def test_own_loop_example_from_the_docs_matches_the_trainer_bit_for_bit():
    # reparam's Trainer: the same hook, SGD and constant learning rate; 2 epochs x 10 batches = 20 steps
    data = _data()
    ref = _net()
    ref_hook = trp.apply(ref, DOC_CONFIG).hooks[0]
    rec = _Record()
    Trainer(ref, data, TrainConfig(epochs=2, batch_size=8, lr=0.05, schedule="constant", select_on="last",
                                   progress=False),
            callbacks=[rec, ref_hook], optimizer=torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
            ).fit(resume=False)
    assert len(rec.batches) == 20

    # the docs' example, as written, on a fresh copy of the same model and the Trainer's batches
    model = _net()
    x_all, y_all = data.train.tensors
    ns: dict = {"model": model}
    seen = {"checked": 0, "losses": []}

    def full_loss() -> float:
        model.eval()                                  # BatchNorm's running statistics stay as they are
        with torch.no_grad():
            loss = float(F.cross_entropy(model(x_all), y_all))
        model.train()
        return loss

    def check_low_rank():
        hook = ns["handle"].hooks[0]
        for name, layer in hook.targets:
            assert _rank(layer.weight) == hook.last_ranks[name] <= trp.max_rank(layer.weight.shape, "channel")
        seen["checked"] += 1

    def loader():
        check_low_rank()                              # apply projected: low-rank before the first step
        seen["losses"].append(full_loss())
        for step, batch in enumerate(rec.batches):
            yield batch
            # the example has run after_step(step)
            if (step + 1) % DOC_CONFIG.period == 0:
                check_low_rank()
        seen["losses"].append(full_loss())

    ns["loader"] = loader()
    exec(compile(own_loop_code("trp"), str(DOC), "exec"), ns)
    handle = ns["handle"]
    assert isinstance(handle, Applied) and handle.method == "trp" and handle.config == DOC_CONFIG
    assert handle.layers == ["3", "6"] and seen["checked"] == 1 + 10
    assert any(r < 16 for r in ns["ranks"].values())           # the rank check above could fail
    assert seen["losses"][1] < 0.8 * seen["losses"][0]         # 20 plain-loop steps learn
    assert _same(model, _state(ref))                           # bit-identical to the Trainer run
    assert handle.hooks[0].last_ranks == ref_hook.last_ranks and handle.hooks[0].projections == 11
    small, plans = ns["small"], ns["plans"]
    assert [p.name for p in plans if p.decompose] == ["3", "6"] and not trp.layers(small)
    model.eval(), small.eval()
    with torch.no_grad():
        assert (small(x_all) - model(x_all)).abs().max() <= 1e-5


def test_config_checks_every_field():
    assert trp.TRPConfig is trp.Config
    bad = [({"scheme": "xy"}, "scheme"), ({"energy": 1.0}, "energy"), ({"energy": "0.1"}, "energy"),
           ({"period": 0}, "period"), ({"period": 1.5}, "period"), ({"nuclear": -1.0}, "nuclear"),
           ({"nuclear_rank": "half"}, "nuclear_rank"), ({"nuclear_when": "never"}, "nuclear_when"),
           ({"counter": "batch"}, "counter"), ({"project": 1}, "project"), ({"skip_stem": "no"}, "skip_stem"),
           ({"only_stride1": None}, "only_stride1"), ({"decompose_rule": "value"}, "KIND:VALUE"),
           ({"project": False}, "nuclear is 0")]
    for kwargs, word in bad:
        with pytest.raises(ReparamError, match=re.escape(word)):
            trp.Config(**kwargs)


def test_apply_projects_once_tags_and_reports():
    model = _net()
    x = torch.rand(4, 1, 6, 6)
    model.eval()
    handle = trp.apply(model, trp.Config(energy=0.3))
    hook = handle.hooks[0]
    assert handle.layers == ["3", "6"] and handle.tensors == ["3.weight", "6.weight"] and not handle.skipped
    assert isinstance(hook, trp.TRPHook) and hook.projections == 1 and hook.history[0]["step"] == 0
    for name in handle.layers:
        layer = model.get_submodule(name)
        assert methods_on(layer, "weight") == ["trp"] and _rank(layer.weight) == hook.last_ranks[name] < 16
    assert methods_on(model[0], "weight") == [] and dict(handle.left_dense)["0.weight"] == 72
    assert handle.dense_params == sum(p.numel() for p in model.parameters())
    assert handle.stored == 16 * 8 * 9 + 16 * 16 * 9 == handle.dense_params - handle.left_dense_numbers
    rows = {r.tensor: r for r in reparam.summary(model, print_table=False)}
    assert rows["3.weight"].method == "trp" and rows["0.weight"].method == "dense"
    hook.start(0)                                        # the Trainer's start: no second projection
    assert hook.projections == 1
    with torch.no_grad():
        before = model(x)
    assert trp.fold(model) is model and not trp.layers(model)
    assert methods_on(model[3], "weight") == []
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_epoch_counter_does_not_project_in_apply():
    model = _net()
    state = _state(model)
    handle = trp.apply(model, trp.Config(energy=0.3, counter="epoch"))
    assert _same(model, state) and handle.hooks[0].projections == 0
    handle.before_forward(torch.zeros(1), torch.zeros(1))          # batch 0 of the epoch: projects
    assert handle.hooks[0].projections == 1 and not _same(model, state)


def test_applying_twice_is_refused_and_changes_nothing():
    model = _net()
    trp.apply(model, trp.Config(energy=0.3))
    state = _state(model)
    with pytest.raises(ReparamError, match=r"trp is already applied to 3\.weight"):
        trp.apply(model, trp.Config(energy=0.1))
    assert _same(model, state) and [n for n, _ in trp.layers(model)] == ["3", "6"]


def test_a_weight_held_by_another_method_is_refused():
    model = _net()
    parametrize.register_parametrization(model[6], "weight", nn.Identity())
    state = _state(model)
    with pytest.raises(ReparamError, match=r"cannot apply trp to 6\.weight: it already has parametrization"):
        trp.apply(model, trp.Config(energy=0.3))
    assert _same(model, state) and not trp.layers(model)


def test_the_old_projection_refuses_a_parametrized_weight():
    model = _net()
    parametrize.register_parametrization(model[3], "weight", nn.Identity())
    state = _state(model)
    with pytest.raises(ReparamError, match="cannot project a parametrized weight"):
        trp.project_model_([("3", model[3])], "channel", trp.RankRule("energy", 0.3))
    assert _same(model, state)


def test_the_hook_refuses_to_project_through_a_parametrization_added_later():
    model = _net()
    handle = trp.apply(model, trp.Config(energy=0.3))
    parametrize.register_parametrization(model[3], "weight", nn.Identity())
    with pytest.raises(ReparamError, match=r"cannot project 3\.weight"):
        handle.after_step(0)


def _steps(model, handle, n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    for step in range(n):
        x, y = torch.rand(8, 1, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        handle.before_step(step)
        opt.step()
        handle.after_step(step)


def test_a_layer_filter_fn_excludes_stays_bit_identical():
    cfg = trp.Config(energy=0.3, nuclear=0.01)
    model = _net()
    model[6].weight.requires_grad_(False)      # only TRP could change it now
    w4, w2 = model[6].weight.clone(), model[3].weight.clone()
    with pytest.warns(ReparamWarning, match=r"left .* dense"):
        handle = trp.apply(model, cfg, filter_fn=lambda m, name: isinstance(m, nn.Conv2d) and name != "6")
    assert handle.layers == ["3"] and methods_on(model[6], "weight") == []
    _steps(model, handle)
    assert torch.equal(model[6].weight, w4) and not torch.equal(model[3].weight, w2)
    control = _net()                           # the same layer, taken: TRP changes it
    control[6].weight.requires_grad_(False)
    _steps(control, trp.apply(control, cfg))
    assert not torch.equal(control[6].weight, w4)


@pytest.mark.parametrize("scheme", ["channel", "spatial", "nd"])
def test_linear_and_conv_targets_decompose_to_the_projected_outputs(scheme):
    model = _net(linear=True)
    handle = trp.apply(model, trp.Config(scheme=scheme, energy=0.3, period=1, only_stride1=False),
                       filter_fn=lambda m, name: isinstance(m, (nn.Conv2d, nn.Linear)))
    assert handle.layers == ["3", "6", "11", "13"]                    # the stem stays out
    _steps(model, handle, n=3)
    hook = handle.hooks[0]
    assert _rank(model[11].weight) == hook.last_ranks["11"] < 12         # a Linear is exactly low-rank too
    x = torch.rand(16, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    model.eval()
    small, plans = trp.decompose(model)
    assert all(p.decompose for p in plans) and not trp.layers(small) and trp.layers(model)
    head = small[11]
    assert isinstance(head, nn.Sequential) and head[0].bias is None and head[1].bias is not None
    assert head[0].weight.shape == (hook.last_ranks["11"], 16) and head[1].weight.shape == (12, hook.last_ranks["11"])
    with torch.no_grad():
        assert (small(x) - model(x)).abs().max() <= 1e-5
    rebuilt = trp.skeleton(trp.fold(model), scheme, plans)
    rebuilt.load_state_dict(small.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(x), small(x))


def test_layers_trp_cannot_take_are_listed_and_nothing_taken_is_an_error():
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 8, 3),
                          nn.Conv1d(8, 8, 1), nn.Embedding(5, 8))
    with pytest.warns(ReparamWarning) as caught:
        handle = trp.apply(model, trp.Config(energy=0.3))
    assert "did not take 1 layer(s): 1 (grouped conv (groups=8)" in str(caught[0].message)
    assert handle.layers == ["2"] and handle.skipped[0][0] == "1"
    other = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Conv2d(8, 8, 3, groups=8), nn.Embedding(5, 8))
    state = _state(other)
    with pytest.raises(ReparamError, match=r"no eligible layers.*not taken: 1 \(grouped.*2 \(Embedding"):
        trp.apply(other, filter_fn=lambda m, name: True)
    assert _same(other, state) and not trp.layers(other)


def test_decompose_needs_an_applied_model_and_the_old_names_still_work():
    with pytest.raises(ReparamError, match="no TRP layers; call trp.apply first"):
        trp.decompose(_net())
    model = _net()
    trp.apply(model, trp.Config(energy=0.3))
    new, plans_new = trp.decompose(model, "energy:0.3")
    old, plans_old = trp.decompose_model(model, "channel", "energy:0.3")
    assert [p.to_dict() for p in plans_new] == [p.to_dict() for p in plans_old]
    assert _same(new, _state(old))
    with pytest.warns(DeprecationWarning):
        trp.TRPCallback(trp.select_targets(model), trp.Config())


def test_conv_macs_is_the_one_counter_and_equals_the_per_layer_count():
    from reparam.metrics import count_macs
    from reparam.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=1, image_size=(8, 8))
    trp.apply(model, trp.Config(energy=0.5))
    for scheme in ("channel", "spatial", "nd"):
        small, plans = trp.decompose(model, scheme=scheme, only_stride1=False)
        for m in (model, small):
            per_layer = sum(v["macs"] for v in conv_shapes(m, (1, 8, 8)).values())
            assert trp.conv_macs(m, (1, 8, 8)) == count_macs(m, (1, 1, 8, 8), ops="conv") == per_layer
        assert trp.formula_macs(model, plans, scheme, (1, 8, 8)) == trp.conv_macs(small, (1, 8, 8))
