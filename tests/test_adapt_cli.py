"""`reparam adapt train|eval|sweep` end to end on tiny runs: the adapter file is small and rebuilds the trained
accuracy exactly; another base is refused with one line and exit 2; bad input writes nothing."""

import json

import pytest

from reparam.cli.main import main

TINY = ["--epochs", "1", "--train-subset", "120", "--no-progress"]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    for seed in (0, 1):
        assert main(["train", "--data", "digits", "--model", "cnn", "--seed", str(seed), "--out",
                     str(root / f"base{seed}"), *TINY]) == 0
    return root


@pytest.mark.parametrize("method", ["nola", "pranc", "lora", "linear"])
def test_train_writes_an_adapter_that_eval_rebuilds(bases, tmp_path, capsys, method):
    out = tmp_path / method
    assert main(["adapt", "train", "--from", str(bases / "base0"), "--method", method, "--k", "40", "--rank", "1",
                 "--data", "digits-rotated", "--out", str(out), *TINY]) == 0
    m = json.loads((out / "metrics.json").read_text())
    for key in ("method", "model", "dataset", "seed", "test_acc", "val_acc", "params_total", "params_stored",
                "bytes_stored", "train_seconds", "epochs"):
        assert key in m
    assert m["test_acc"] == m["test_acc_from_file"]
    if method in ("nola", "pranc"):
        assert m["params_stored"] == 40 and m["bytes_stored"] == 160 and m["file_bytes"] < 4096
    capsys.readouterr()
    assert main(["adapt", "eval", str(out / "adapter.safetensors"), "--base", str(bases / "base0"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test_acc"] == m["test_acc"]


def test_eval_against_another_base_exits_2_with_one_line(bases, tmp_path, capsys):
    out = tmp_path / "a"
    assert main(["adapt", "train", "--from", str(bases / "base0"), "--method", "nola", "--k", "40",
                 "--data", "digits-rotated", "--out", str(out), *TINY]) == 0
    capsys.readouterr()
    assert main(["adapt", "eval", str(out), "--base", str(bases / "base1")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "other base weights" in err


@pytest.fixture(scope="module")
def adapter(bases, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapter") / "a"
    assert main(["adapt", "train", "--from", str(bases / "base0"), "--method", "nola", "--k", "40",
                 "--data", "digits-rotated", "--out", str(out), *TINY]) == 0
    return out / "adapter.safetensors"


TRAIN = ["adapt", "train", "--from", "{base}", "--data", "digits-rotated", "--out", "{out}", *TINY]
SWEEP = ["adapt", "sweep", "--from", "{base}", "--data", "digits-rotated", "--methods", "nola:40", "--out", "{out}",
         *TINY]


@pytest.mark.parametrize("argv, message", [
    (TRAIN + ["--method", "nola", "--k", "1"], "too small"),
    (TRAIN + ["--method", "nola", "--k", "7", "--sharing", "per-layer"], "too small"),
    (TRAIN + ["--method", "linear", "--layers", "head"], "--layers restricts"),
    (TRAIN + ["--method", "nola", "--layers", "conv("], "not a regular expression"),
    (TRAIN + ["--method", "linear", "--coef-dtype", "int4"], "is for nola and pranc"),
    (TRAIN + ["--method", "nola", "--coef-dtype", "int1"], "--coef-dtype: invalid choice"),
    (TRAIN + ["--method", "nola", "--quant-bits", "9"], "--quant-bits"),
    (TRAIN + ["--method", "nola", "--seed", "-1"], "--seed"),
    (TRAIN + ["--method", "nola", "--data-seed", "x"], "--data-seed"),
    (TRAIN + ["--method", "nola", "--lr", "nan"], "--lr"),
    (TRAIN + ["--method", "nola", "--data", "cifar-nope"], "unknown dataset"),
    (TRAIN + ["--method", "nola", "--data", "digits-0to4"], "the base has 10 classes"),
    (TRAIN + ["--method", "nola", "--from", "{out}"], "--from"),
    (TRAIN + ["--method", "nola", "--out", "{base}"], "already exists"),
    (["adapt", "eval", "{out}.safetensors", "--base", "{base}"], "file not found"),
    (["adapt", "eval", "{adapter}", "--base", "{out}"], "--base"),
    (["adapt", "eval", "{base}/model.safetensors", "--base", "{base}"], "not an adapter"),
    (SWEEP + ["--data", "digits-rotated,,digits-noisy"], "empty item"),
    (SWEEP + ["--data", "digits-rotated,digits-rotated"], "twice"),
    (SWEEP + ["--methods", "nola:40,,linear"], "empty item"),
    (SWEEP + ["--methods", "nola:40,nola:40"], "lists nola:40 twice"),
    (SWEEP + ["--methods", "nola:x"], "must be an integer"),
    (SWEEP + ["--methods", "linear:3"], "takes no size"),
    (SWEEP + ["--val-fraction", "1.5"], "--val-fraction"),
    (SWEEP + ["--resume"], "nothing to resume"),
])
def test_bad_input_is_one_line_and_writes_nothing(bases, adapter, tmp_path, capsys, argv, message):
    argv = [a.format(base=bases / "base0", out=tmp_path / "x", adapter=adapter) for a in argv]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error:") and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_missing_base_is_refused(tmp_path, capsys):
    assert main(["adapt", "train", "--from", str(tmp_path), "--method", "nola", "--data", "digits",
                 "--out", str(tmp_path / "o")]) == 2
    assert "model.safetensors" in capsys.readouterr().err


def test_sweep_writes_table_and_plot(bases, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["adapt", "sweep", "--from", str(bases / "base0"), "--data", "digits-rotated",
                 "--methods", "nola:40,linear", "--seeds", "1", "--out", str(out), *TINY]) == 0
    table = (out / "table.md").read_text()
    assert "| nola:40 | 40 | 160 | " in table and "| linear | 1,290 | 5,160 | " in table
    assert (out / "acc_vs_bytes_digits-rotated.png").stat().st_size > 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {r["label"] for r in rows} == {"nola:40", "linear"}


def test_class_split_targets_relabel_the_other_half():
    from reparam.data import load_dataset
    from reparam.experiments.adapters.targets import register_adapter_targets

    register_adapter_targets()
    full, hi = load_dataset("digits", seed=0), load_dataset("digits-5to9", seed=0)
    rot = load_dataset("digits-0to4-rotated", seed=0)
    assert hi.num_classes == rot.num_classes == 5 and hi.class_names == full.class_names[5:]
    assert set(hi.train.tensors[1].tolist()) == {0, 1, 2, 3, 4}
    n_hi = sum(len(s) for s in (hi.train, hi.val, hi.test))
    assert n_hi == int(sum((t.tensors[1] >= 5).sum() for t in (full.train, full.val, full.test)))
