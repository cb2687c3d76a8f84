"""Robust tickets CLI: pretrain -> draw -> transfer end to end on digits (tiny), and bad-input errors."""

from __future__ import annotations

import json

import torch

from reparam.cli.main import main

torch.set_num_threads(1)


def test_cli_pretrain_draw_transfer(tmp_path):
    pre, draw, tr = tmp_path / "PRE", tmp_path / "DRAW", tmp_path / "TR"
    assert main(["tickets", "pretrain", "--classes", "0-4", "--eps", "0,0.1", "--steps", "1", "--epochs", "1",
                 "--model", "mlp", "--out", str(pre), "--no-progress"]) == 0
    meta = json.loads((pre / "pretrain.json").read_text())
    assert [m["eps"] for m in meta["models"]] == [0.0, 0.1]
    m = json.loads((pre / "eps_0.1" / "metrics.json").read_text())
    assert m["objective"] == "pgd" and 0 <= m["source_robust_acc"] <= 1
    assert main(["tickets", "draw", "--from", str(pre), "--scheme", "omp", "--sparsity", "0.5,0.9",
                 "--prune-linear", "--out", str(draw)]) == 0
    assert (draw / "eps_0" / "sp_0.9.mask.safetensors").is_file()
    assert main(["tickets", "transfer", "--from", str(draw), "--target", "digits-inverted", "--target-classes",
                 "5-9", "--protocol", "linear", "--linear-steps", "20", "--eval-limit", "10",
                 "--out", str(tr)]) == 0
    res = json.loads((tr / "transfer.json").read_text())
    assert len(res) == 4
    for r in res:
        assert {"test_acc", "sparsity", "eps", "scheme", "pattern", "robust_acc"} <= set(r)
    assert any(abs(r["sparsity"] - 0.9) < 1e-3 for r in res)


def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    assert main(["tickets", "draw", "--from", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert main(["tickets", "draw", "--from", str(tmp_path), "--pattern", "nm:9:4",
                 "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert all(line.startswith("error: ") for line in err)
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()
