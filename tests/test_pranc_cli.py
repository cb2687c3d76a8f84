"""`reparam pranc ...` end to end on digits (tiny model, one or two epochs)."""

from __future__ import annotations

import json

import torch

from reparam.cli.main import main

torch.set_num_threads(1)


def test_train_eval_decode_inspect(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["pranc", "train", "--model", "mlp", "--model-options", '{"hidden": [16]}', "--k", "40",
               "--epochs", "2", "--mode", "streamed", "--chunk", "16", "--out", str(out), "--no-progress"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "pranc" and metrics["k"] == 40
    assert metrics["params_stored"] == 40 + 2          # k + the normalisation buffers (mean, std)
    assert metrics["params_total"] == 64 * 16 + 16 + 16 * 10 + 10
    assert metrics["test_acc_from_file"] == metrics["test_acc"]
    capsys.readouterr()
    assert main(["pranc", "eval", str(out / "model.prnc"), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["test_acc"] == metrics["test_acc"]
    assert main(["pranc", "inspect", str(out / "model.prnc"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["k"] == 40 and info["generator"].startswith("reparam-splitmix64")
    dense = tmp_path / "dense.safetensors"
    assert main(["pranc", "decode", str(out / "model.prnc"), "--out", str(dense)]) == 0
    from reparam.core.fileformat import load_tensors

    tensors, header = load_tensors(dense, "model")
    assert tensors["head.weight"].shape == (10, 16) and header["method"] == "pranc"
    capsys.readouterr()
    assert main(["pranc", "eval", str(out / "model.prnc"), "--json", "--basis-seed", "12345"]) == 0
    assert json.loads(capsys.readouterr().out)["basis_seed"] == 12345


def test_bad_input_exit_code_2(tmp_path, capsys):
    assert main(["pranc", "train", "--k", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--k: 0 is not allowed; allowed: a positive integer" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    junk = tmp_path / "junk.prnc"
    junk.write_bytes(b"not a file at all")
    assert main(["pranc", "inspect", str(junk)]) == 2
    assert main(["pranc", "eval", str(tmp_path / "missing.prnc")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["pranc", "sweep", "--k", "10", "--baselines", "nope", "--out", str(tmp_path / "s")]) == 2
