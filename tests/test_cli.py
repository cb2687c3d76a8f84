import json

import pytest

from reparam.cli.main import main

REQUIRED = {"method", "model", "dataset", "seed", "test_acc", "val_acc", "params_total", "params_stored",
            "bytes_stored", "train_seconds", "epochs"}


def run(argv, capsys):
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse exits on its own errors
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_help_lists_commands(capsys):
    rc, out, _ = run(["--help"], capsys)
    assert rc == 0 and "train" in out and "reproduce" in out


def test_train_writes_output_contract(tmp_path, capsys):
    out = tmp_path / "run"
    rc, stdout, _ = run(["train", "--data", "synthetic", "--model", "mlp", "--epochs", "2", "--out", str(out),
                         "--no-progress"], capsys)
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert REQUIRED <= metrics.keys() and metrics["epochs"] == 2 and metrics["method"] == "dense"
    assert len((out / "log.jsonl").read_text().splitlines()) == 2
    assert (out / "curves.png").exists() and (out / "model.safetensors").exists()
    assert not (tmp_path / "run.partial").exists() and "test accuracy" in stdout
    # the output folder is not silently overwritten
    rc, _, err = run(["train", "--data", "synthetic", "--model", "mlp", "--epochs", "1", "--out", str(out)], capsys)
    assert rc == 2 and "already exists" in err


@pytest.mark.parametrize("argv, words", [
    (["--data", "nope"], ["dataset", "'nope'", "digits"]),
    (["--model", "nope"], ["model", "'nope'", "mlp"]),
    (["--method", "nope"], ["method", "'nope'", "dense"]),
    (["--epochs", "0"], ["--epochs", "positive"]),
    (["--epochs", "-3"], ["--epochs"]),
    (["--data", "cifar10", "--data-root", "/nonexistent/cifar"], ["/nonexistent/cifar"]),
    (["--train-subset", "0"], ["--train-subset"]),
    (["--device", "tpu"], ["device", "'tpu'", "cpu"]),
])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, argv, words):
    out = tmp_path / "run"
    rc, _, err = run(["train", "--out", str(out), "--no-progress", "--epochs", "1", *argv], capsys)
    assert rc == 2
    line = err.strip()
    assert "\n" not in line and line.startswith("error:"), err
    for w in words:
        assert w in line, (w, line)
    assert not out.exists() and not (tmp_path / "run.partial").exists()
