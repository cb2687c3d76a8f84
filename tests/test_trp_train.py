"""TRP training behaviour (the hook with the shared Trainer) and the `reparam trp` commands."""

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from reparam import trp
from reparam.cli.main import main
from reparam.train import TrainConfig, Trainer
from reparam.trp import RankRule, TRPConfig, nuclear_subgradient, select_targets, to_matrix
from reparam.trp.hooks import TRPCallback, TRPHook

torch.set_num_threads(1)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 3))


def _data(n=96):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 3
    x = torch.rand(n, 1, 6, 6, generator=g) * 0.3 + y.view(-1, 1, 1, 1) / 3
    ds = TensorDataset(x, y)
    return SimpleNamespace(name="toy", train=ds, val=ds, test=ds, num_classes=3, in_channels=1,
                           image_size=(6, 6))


def _rank(w, scheme="channel"):
    return int(torch.linalg.matrix_rank(to_matrix(w.detach(), scheme)))


def _fit(cfg: TRPConfig, epochs=2, batch=32, old=False):
    """Train _net with TRP through the Trainer; `calls` counts projections from apply on (or, old=True,
    from the deprecated callback's construction on)."""
    model = _net()
    calls = []
    orig = TRPHook.project

    def counted(self):
        calls.append(1)
        return orig(self)

    TRPHook.project = counted
    try:
        if old:
            with pytest.warns(DeprecationWarning):
                cb = TRPCallback(select_targets(model), cfg)
        else:
            cb = trp.apply(model, cfg).hooks[0]
        Trainer(model, _data(), TrainConfig(epochs=epochs, batch_size=batch, lr=0.05, progress=False,
                                            select_on="last"), callbacks=[cb]).fit(resume=False)
    finally:
        TRPHook.project = orig
    return model, cb.targets, cb, calls


def test_targets_skip_the_stem_and_1x1():
    assert [n for n, _ in select_targets(_net())] == ["2", "4"]


@pytest.mark.parametrize("period,expected", [(1, 1 + 6), (2, 1 + 3), (4, 1 + 1)])
def test_projection_runs_every_m_global_steps(period, expected):
    # 2 epochs x 3 steps = 6 optimizer steps; projection in apply (before step 0) and after steps whose
    # count is a multiple of m; the Trainer's start does not project again
    _, _, cb, calls = _fit(TRPConfig(energy=0.3, period=period))
    assert len(calls) == expected == cb.projections


def test_epoch_counter_resets_each_epoch():
    _, _, cb, calls = _fit(TRPConfig(energy=0.3, period=2, counter="epoch"))
    assert len(calls) == 4 == cb.projections      # batch_idx 0 and 2 in each of 2 epochs; none in apply


@pytest.mark.parametrize("cfg", [TRPConfig(energy=0.3, period=2, nuclear=0.01),
                                 TRPConfig(energy=0.3, period=2, counter="epoch"),
                                 TRPConfig(energy=0.3, nuclear=0.01, nuclear_rank="energy",
                                           nuclear_when="projection")],
                         ids=["global+nuclear", "epoch", "code-nuclear"])
def test_apply_hook_trains_bit_identically_to_the_old_callback(cfg):
    new, _, hook, calls_new = _fit(cfg)
    old, _, cb, calls_old = _fit(cfg, old=True)
    assert len(calls_new) == len(calls_old) and hook.history == cb.history
    assert hook.state_dict() == cb.state_dict()
    for (k, a), (_, b) in zip(new.state_dict().items(), old.state_dict().items()):
        assert torch.equal(a, b), k


def test_trained_weights_are_exactly_low_rank_with_period_1():
    model, targets, cb, _ = _fit(TRPConfig(energy=0.3, period=1))
    for name, conv in targets:
        assert _rank(conv.weight) == cb.last_ranks[name] < 8
    assert [h["epoch"] for h in cb.history] == [0, 1, 2] and cb.history[-1]["ranks"] == cb.last_ranks


def test_projection_leaves_momentum_buffers_alone():
    model = _net()
    targets = select_targets(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(4, 1, 6, 6)).sum().backward()
    opt.step()
    before = {id(p): opt.state[p]["momentum_buffer"].clone() for p in model.parameters()}
    TRPHook(targets, TRPConfig(energy=0.3)).project()
    for p in model.parameters():
        assert torch.equal(opt.state[p]["momentum_buffer"], before[id(p)])


def test_nuclear_paper_variant_adds_lambda_full_subgradient_every_step():
    model = _net()
    targets = select_targets(model)
    cb = TRPHook(targets, TRPConfig(energy=0.3, nuclear=0.5))
    for _, conv in targets:
        conv.weight.grad = torch.zeros_like(conv.weight)
    cb.before_step(0)
    for _, conv in targets:
        assert torch.allclose(conv.weight.grad, 0.5 * nuclear_subgradient(conv.weight, "channel", "full"))


def test_nuclear_code_variant_uses_energy_rank_on_projection_steps_only():
    model = _net()
    targets = select_targets(model)
    cfg = TRPConfig(energy=0.3, nuclear=0.5, nuclear_rank="energy", nuclear_when="projection")
    cb = TRPHook(targets, cfg)
    w0 = {n: c.weight.detach().clone() for n, c in targets}
    cb.project()
    for _, conv in targets:
        conv.weight.grad = torch.zeros_like(conv.weight)
    cb.before_step(0)
    for name, conv in targets:
        expect = nuclear_subgradient(w0[name], "channel", RankRule("energy", 0.3))
        assert torch.allclose(conv.weight.grad, 0.5 * expect, atol=1e-6)
        assert _rank(conv.weight.grad) == cb.last_ranks[name]
        conv.weight.grad.zero_()
    cb.before_step(1)                # not a projection step: nothing added
    assert all(float(c.weight.grad.abs().sum()) == 0 for _, c in targets)


def test_nuclear_only_does_not_project():
    model = _net()
    targets = select_targets(model)
    w0 = [c.weight.detach().clone() for _, c in targets]
    cb = TRPHook(targets, TRPConfig(project=False, nuclear=3e-4))
    cb.project()
    assert all(torch.equal(w, c.weight) for w, (_, c) in zip(w0, targets))
    assert cb.last_ranks                                   # ranks are still measured


def test_hook_state_round_trip():
    _, targets, cb, _ = _fit(TRPConfig(energy=0.3), epochs=1)
    cb2 = TRPHook(targets, TRPConfig(energy=0.3))
    cb2.load_state_dict(json.loads(json.dumps(cb.state_dict())))
    assert cb2.projections == cb.projections and cb2.last_ranks == cb.last_ranks


COMMON = ["--data", "digits", "--model", "cnn", "--train-subset", "150", "--epochs", "1", "--no-progress",
          "--latency-batches", ""]


def test_cli_train_then_decompose(tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["trp", "train", *COMMON, "--energy", "0.3", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    for key in ("test_acc_before", "test_acc", "flops_speedup", "ranks", "train_ranks", "max_logit_diff"):
        assert key in m
    assert m["flops_speedup"] > 1 and m["max_logit_diff"] <= 1e-4
    assert abs(m["test_acc"] - m["test_acc_before"]) <= 1 / 359 + 1e-9   # at most one borderline example
    assert (out / "ranks.png").exists() and (out / "decomposed.safetensors").exists()

    from reparam.trp.io import load_model_file

    small, header = load_model_file(out / "decomposed.safetensors")
    assert header["trp"]["scheme"] == "channel"

    d = tmp_path / "d"
    assert main(["trp", "decompose", str(out / "model.safetensors"), "--scheme", "spatial", "--speedup", "1.5",
                 "--latency-batches", "", "--out", str(d)]) == 0
    md = json.loads((d / "metrics.json").read_text())
    assert md["flops_speedup"] >= 1.5 and md["seed"] == 0 and md["dataset"] == "digits"


@pytest.mark.parametrize("args,msg", [
    (["--energy", "1.5"], "--energy: 1.5 is not allowed; allowed: a number in (0, 1)"),
    (["--energy", "0"], "--energy: 0 is not allowed"),
    (["--period", "0"], "--period: 0 is not allowed; allowed: a positive integer"),
    (["--scheme", "diagonal"], "unknown scheme 'diagonal'"),
    (["--decompose-rule", "value"], "must look like KIND:VALUE"),
    (["--mode", "nuclear"], "--mode nuclear needs --nuclear > 0"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, msg):
    out = tmp_path / "bad"
    assert main(["trp", "train", *COMMON, *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1
    assert not out.exists() and not (tmp_path / "bad.partial").exists()


def test_cli_no_eligible_layers_and_bad_checkpoint(tmp_path, capsys):
    assert main(["trp", "train", *COMMON, "--model", "mlp", "--out", str(tmp_path / "x")]) == 2
    assert "no eligible layers" in capsys.readouterr().err
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a file")
    assert main(["trp", "decompose", str(junk), "--out", str(tmp_path / "y")]) == 2
    assert "not a reparam safetensors file" in capsys.readouterr().err
