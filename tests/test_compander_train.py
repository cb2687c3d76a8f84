"""The compander inside the shared Trainer and the CLI: decay plumbing, instrumentation, fold/export."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn as nn

from reparam.cli.main import main
from reparam.compander import (
    CompanderConfig,
    apply,
    compander_layers,
    dpsi,
    learned_scales,
    param_groups,
    psi,
)
from reparam.compander.callbacks import PsiDecay, WeightStatsCallback  # the old module, kept as an alias
from reparam.core.errors import ReparamError
from reparam.core.fileformat import load_model_state
from reparam.data import load_dataset
from reparam.experiments.compander.runs import grid_select, grid_values
from reparam.experiments.compander.variants import parse_variant
from reparam.metrics.stats import paired
from reparam.train import TrainConfig, Trainer

torch.set_num_threads(1)


def small_data():
    return load_dataset("synthetic", seed=0)


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 4))


def test_trainer_step_applies_decay_on_psi_not_on_v():
    """One full-batch SGD step through the Trainer equals v - lr * (dL/dv + wd * Psi(v) * Psi'(v))."""
    data = small_data()
    wd, lr = 1e-2, 0.1
    cfg = TrainConfig(epochs=1, batch_size=len(data.train), lr=lr, momentum=0.0, weight_decay=wd,
                      schedule="constant", progress=False, checkpoint=False)
    model = small_model()
    wc = CompanderConfig()
    apply(model, wc)
    ref = copy.deepcopy(model)
    x, y = data.train.tensors
    ref.train()
    nn.functional.cross_entropy(ref(x), y).backward()
    expected = {}
    for name, m, _ in compander_layers(ref):
        v = m.parametrizations.weight.original
        expected[name] = v.detach() - lr * (v.grad + wd * psi(v.detach(), 0.8, 0.5) * dpsi(v.detach(), 0.8, 0.5))
    # the trainer shuffles the single batch; the loss is a mean, so order does not change the gradient
    Trainer(model, data, cfg, callbacks=[PsiDecay(wd)], param_groups=param_groups(model, wd, wc)).fit()
    for name, m, _ in compander_layers(model):
        assert torch.allclose(m.parametrizations.weight.original.detach(), expected[name], rtol=1e-5,
                              atol=1e-7), name


def test_psi_decay_loss_mode_equals_grad_mode():
    data = small_data()
    cfg = TrainConfig(epochs=1, batch_size=128, lr=0.1, weight_decay=5e-2, progress=False, checkpoint=False)
    outs = []
    for mode in ("grad", "loss"):
        model = small_model()
        apply(model, CompanderConfig())
        Trainer(model, data, cfg, callbacks=[PsiDecay(5e-2, mode=mode)],
                param_groups=param_groups(model, 5e-2, CompanderConfig())).fit()
        outs.append([m.parametrizations.weight.original.detach().clone() for _, m, _ in
                     compander_layers(model)])
    for a, b in zip(*outs):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_learnable_training_moves_ab_and_stats_are_logged():
    data = small_data()
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.1, weight_decay=5e-4, progress=False, checkpoint=False)
    model = small_model()
    wc = CompanderConfig(a=0.5, b=1.0, learnable="fine")
    apply(model, wc)
    stats = WeightStatsCallback(check_every_step=True)
    res = Trainer(model, data, cfg, callbacks=[stats], param_groups=param_groups(model, 5e-4, wc)).fit()
    scales = learned_scales(model)
    assert any(abs(a - 0.5) > 1e-4 or abs(b - 1.0) > 1e-4 for a, b in scales.values())
    rec = res.history[-1]
    assert set(rec["wstats"]["layers"]) == {"0", "5"}
    assert rec["wstats"]["layers"]["5"]["a"] == pytest.approx(scales["5"][0], rel=1e-6)
    assert 0 < rec["w_worst_bound_ratio"] < 1
    hist = stats.history(res.history)
    assert hist[0]["epoch"] == 0 and len(hist) == 3


def test_parse_variant_and_errors():
    v = parse_variant("wc-fine")
    assert v.kind == "wc" and v.options == {"learnable": "fine", "a": 0.5, "b": 1.0}
    assert parse_variant("pp:alpha=3").options == {"alpha": 3.0}
    for bad in ("wx", "wc:q=1", "wc:a=abc", "plain:opt=madam", "wc:opt=rmsprop"):
        with pytest.raises(ReparamError):
            parse_variant(bad)


def test_statistics_helpers():
    d = paired([0.9, 0.95, 0.97], [0.9, 0.93, 0.96])
    assert d["mean"] == pytest.approx(0.01) and (d["wins"], d["ties"], d["losses"]) == (2, 1, 0)
    assert 0 < d["p"] < 1
    assert grid_values("0.5:1.0:0.1") == [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert grid_values("0.5,1") == [0.5, 1.0]
    for bad in ("1:0.5:0.1", "a,b", "0:1:0.5"):
        with pytest.raises(ReparamError):
            grid_values(bad)
    runs = [{"variant": "wc:a=0.5:b=1", "val_acc": 0.9, "test_acc": 0.8},
            {"variant": "wc:a=0.8:b=0.5", "val_acc": 0.95, "test_acc": 0.7}]
    assert grid_select(runs, [0.5, 0.8], [0.5, 1.0])["best"] == (0.8, 0.5)


def test_cli_train_writes_folded_plain_model(tmp_path, capsys):
    out = tmp_path / "wc"
    rc = main(["compander", "train", "--data", "synthetic", "--model", "mlp", "--epochs", "1", "--batch-size",
               "128", "--out", str(out), "--no-progress"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["fold_max_abs_diff"] == 0.0
    assert m["params_folded"] == m["params_plain"] and m["flops_folded"] == m["flops_plain"]
    assert m["w_worst_bound_ratio"] < 1 and m["variant"] == "wc:a=0.8:b=0.5"
    assert (out / "percentiles.png").exists() and (out / "model.safetensors").exists()
    from reparam.core.fileformat import read_header
    from reparam.models import build_from_spec

    plain = build_from_spec(read_header(out / "model.safetensors")["model_spec"])
    load_model_state(out / "model.safetensors", plain)  # loads into the un-reparameterized architecture
    bound = 0.8 * math.pi / 2
    assert all(float(p.detach().abs().max()) < bound for n, p in plain.named_parameters() if n.endswith("weight")
               and p.ndim > 1)


def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "bad"
    # argparse rejects it: one line, exit code 2
    assert main(["compander", "train", "--data", "synthetic", "--a", "-1", "--out", str(out)]) == 2
    assert main(["compander", "train", "--data", "synthetic", "--model", "mlp", "--fn", "erf", "--a", "0.01",
                 "--out", str(out), "--no-progress"]) == 2  # initial weights beyond the erf bound a
    assert "bound" in capsys.readouterr().err
    assert main(["compander", "compare", "--data", "synthetic", "--variants", "plain,wx", "--out",
                 str(out)]) == 2
    assert "unknown variant 'wx'" in capsys.readouterr().err
    assert main(["compander", "grid", "--data", "synthetic", "--a", "1:0.5:0.1", "--out", str(out)]) == 2
    assert not out.exists() and not (tmp_path / "bad.partial").exists()


def test_cli_compare_pairs_seeds(tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(["compander", "compare", "--data", "synthetic", "--model", "mlp", "--epochs", "1", "--seeds", "2",
               "--variants", "plain,wc,wc-fine", "--batch-size", "128", "--out", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["summary"]["paired"]) == {"wc - plain", "wc-fine - plain"}
    assert res["summary"]["paired"]["wc - plain"]["n"] == 2
    assert (out / "summary.md").exists() and (out / "percentiles_wc.png").exists()


def test_reproduce_section_smoke(tmp_path, monkeypatch):
    from reparam.experiments.compander.runs import DataSpec
    from reparam.reproduce import compander as reproduce
    from reparam.reproduce.claims import ReproduceContext

    monkeypatch.setitem(reproduce.EPOCHS, "quick", 1)
    monkeypatch.setattr(reproduce, "SPEC", DataSpec(data="synthetic", model="mlp"))
    rep = reproduce.run(ReproduceContext(out_dir=tmp_path, quick=True, seeds=2, work_dir=tmp_path / "cache"))
    ids = {c.claim_id: c for c in rep.claims}
    assert ids["wc-exact-init-and-gradient"].verdict == "holds"
    assert ids["wc-bounded-weights"].verdict == "holds"
    assert ids["wc-zero-inference-overhead"].verdict == "holds"
    assert all(c.verdict in ("holds", "does not hold", "inconclusive") for c in rep.claims)
    assert (tmp_path / "compander_percentiles.png").exists()


def test_alias_options_and_ab_learning_rate_group():
    v = parse_variant("wc-fine:positivity=softplus:ablr=0.1")
    assert v.options == {"learnable": "fine", "a": 0.5, "b": 1.0, "positivity": "softplus", "ablr": 0.1}
    from reparam.experiments.compander.variants import compander_config

    assert compander_config(parse_variant("wc-fine")).positivity == "softplus"
    assert compander_config(parse_variant("wc-fine:positivity=abs")).positivity == "abs"
    model = small_model()
    wc = CompanderConfig(a=0.5, b=1.0, learnable="fine", ab_lr_scale=0.1)
    apply(model, wc)
    groups = {g["name"]: g for g in param_groups(model, 5e-4, wc, lr=0.2)}
    assert groups["compander_ab"]["lr"] == pytest.approx(0.02) and "lr" not in groups["compander_v"]
    with pytest.raises(ReparamError):
        param_groups(model, 5e-4, wc)
