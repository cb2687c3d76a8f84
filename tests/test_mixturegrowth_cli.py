"""The MixtureGrowth pipeline and `reparam grow` end to end at toy size, plus its bad-input errors."""

from __future__ import annotations

import json

import pytest
import torch

from reparam.cli.main import main
from reparam.experiments.mixturegrowth.compare import Job, _normalize, plan_jobs
from reparam.experiments.mixturegrowth.pipeline import GrowSettings

torch.set_num_threads(1)

TINY = ["--data", "digits", "--train-subset", "150", "--model", "wrn-10-1", "--full-epochs", "3",
        "--batch-size", "64", "--no-progress"]


def test_grow_cli_writes_metrics_and_ledger(tmp_path):
    out = tmp_path / "run"
    # also exercises the official code's grown phase: momentum carried over, cosine restarts
    rc = main(["grow", *TINY, "--budget", "0.45", "--fraction", "1.0", "--coef-init", "zero", "--keep-momentum",
               "--grown-schedule", "restarts", "--grown-lr", "0.001",
               "--out", str(out), "--cache", str(tmp_path / "cache")])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    for k in ("method", "model", "dataset", "seed", "test_acc", "val_acc", "params_total", "params_stored",
              "bytes_stored", "train_seconds", "epochs"):
        assert k in m
    # planned in optimizer steps (150 images x 0.9 train split, batch 64: 3 steps per epoch)
    pe = m["phase_epochs"]
    assert (pe["net2_steps"], pe["net2"]) == (9, 3.0)
    small, big = m["small_target_macs"]
    assert abs(m["flops_norm"] - (3 * small + pe["grown"] * big) / (3 * big)) < 1e-12
    # equal FLOPs: the spend is within half a grown-network step of the budget
    assert abs(m["flops_norm"] - 0.45) <= 0.5 * (64 / 135) / 3 + 1e-12
    # zero init: the grown network right after growth IS the logit-sum ensemble
    assert abs(m["grown_test_acc_at_growth"] - m["ensemble_test_acc"]) < 1e-6
    assert (out / "model.safetensors").exists() and (out / "cka_epochs.png").exists()
    assert (out / "cka_layers_net1_vs_net2.png").exists()
    n_conv = 1 + 3 * 3 - 1                                           # stem + 3 blocks x (2 convs + shortcut) - 1
    assert len(m["cka_layers"]["grown_vs_net1"]) == n_conv
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 4 and log[-1]["phase"] == "grown" and log[-1]["lr"] <= 0.001


@pytest.mark.parametrize("argv, msg", [
    (["--budget", "0.2", "--fraction", "1.0"], "already spends"),
    (["--model", "resnet20"], "wrn-D-K"),
    (["--augment", "blur3"], "augmentation"),
])
def test_grow_cli_bad_input(tmp_path, capsys, argv, msg):
    out = tmp_path / "bad"
    rc = main(["grow", *TINY, *argv, "--out", str(out)])
    assert rc == 2
    assert msg in capsys.readouterr().err
    assert not out.exists()


def test_compare_plan_dedupes_shared_runs():
    base = GrowSettings(budget=0.45, fraction=1.0)
    jobs = plan_jobs([0], ["1", "4", "2", "6"], ["mixturegrowth", "large"], ["orthogonal", "copy"],
                     [0.4, 1.0], 0.35, ["vertical", "horizontal"])
    keys = {Job(j.table, j.method, j.seed, _normalize(base, j)).key for j in jobs}
    # table-4 orthogonal == table-1 mixturegrowth; table-6 vertical == table-2 x=1.0
    assert len(keys) == len(jobs) - 2


def _rec(method, seed, acc, **over):
    from dataclasses import asdict, replace

    s = replace(GrowSettings(budget=0.45, fraction=1.0), seed=seed, **over)
    extra = {"grown_test_acc_at_growth": acc - 0.1, "grown_val_acc_at_growth": acc - 0.1,
             "ensemble_test_acc": acc + 0.01}
    hist = [{"phase": "net2", "val_acc": 0.5}, {"phase": "grown", "val_acc": acc}]
    return {"key": f"{method}{seed}{over}", "method": method, "seed": seed, "test_acc": acc, "val_acc": acc,
            "flops_norm": 0.45, "settings": asdict(s), "extra": extra, "history": hist,
            "cka_epochs": [[1.0, 0.5], [0.5, 1.0]], "snapshot_phases": ["net2", "grown"]}


def test_summarize_tables(tmp_path):
    from reparam.experiments.mixturegrowth.compare import cka_plots, growth_curves, summarize

    base = GrowSettings(budget=0.45, fraction=1.0)
    recs = []
    for seed in (0, 1):
        recs += [_rec("mixturegrowth", seed, 0.9 + seed / 100), _rec("wo-fusion", seed, 0.8),
                 _rec("mixturegrowth", seed, 0.7, coef_init="copy"),
                 _rec("wo-fusion", seed, 0.6, budget=0.35),
                 _rec("mixturegrowth", seed, 0.85, budget=0.35, fraction=0.4),
                 _rec("mixturegrowth", seed, 0.86, budget=0.35),
                 _rec("mixturegrowth", seed, 0.84, budget=0.35, layout="horizontal")]
    text, numbers = summarize(recs, base)
    assert "| mixturegrowth | 90.50 ± 0.71 | 0.450X |" in text
    assert numbers["table4"]["copy"]["test_acc"] == [0.7, 0.7]
    assert list(numbers["table2"]["0.35"]) == ["0.0", "0.4", "1.0"]
    assert numbers["table6"]["horizontal"] == [0.84, 0.84]
    assert numbers["cka"]["mixturegrowth"]["growth_step"] == [0.5] * 2
    assert growth_curves(recs, base, tmp_path / "g.png").exists()
    assert "cka_epochs_mixturegrowth.png" in cka_plots(recs, base, tmp_path)
