"""Regression tests of docs/reliability.md: the CIFAR exploit, resume drift, reproduce's OUT.partial."""

import json
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reparam.cli.main import main
from reparam.core.errors import ReparamError

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct


class _PointerDtype:
    """Pickles as a structured dtype whose one field is a Python object, with flags that make numpy
    decref the field on deallocation but not refuse raw bytes: the bytes of the file become pointers."""

    def __reduce__(self):
        return (np.dtype, ("V8", False, True), (3, "|", None, ("a",), {"a": (np.dtype(object), 0)}, 8, 1, 1))


class _PointerArray:
    def __reduce__(self):
        return (_reconstruct, (np.ndarray, (0,), b"b"), (1, (10,), _PointerDtype(), False, b"\x41" * 80))


def test_cifar_exploit_is_refused_not_a_segfault(tmp_path):
    """Before: numpy's own array constructors were allowed, this batch file built an array of pointers
    0x4141... and `reparam train --data cifar10` died with SIGSEGV (exit 139). Run in a child process so
    a regression fails this test instead of killing the test run (forked: no second interpreter start)."""
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    good = {b"data": np.zeros((10, 3072), np.uint8), b"labels": list(range(10))}
    for name in [f"data_batch_{i}" for i in range(2, 6)] + ["test_batch"]:
        (d / name).write_bytes(pickle.dumps(good, protocol=2))
    (d / "data_batch_1").write_bytes(pickle.dumps({b"data": good[b"data"], b"labels": _PointerArray()},
                                                  protocol=2))
    err = tmp_path / "stderr.txt"
    rc = _in_child(lambda: main(["train", "--data", "cifar10", "--data-root", str(tmp_path), "--out",
                                 str(tmp_path / "run"), "--epochs", "1", "--no-progress"]), err)
    stderr = err.read_text()
    assert rc == 2, (rc, stderr)
    assert stderr.count("\n") == 1 and "refusing this CIFAR batch file" in stderr and "'V8'" in stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


def _in_child(fn, stderr: Path) -> int:
    """fn() in a forked child (its stderr to a file); its return value or -signal if it crashed."""
    pid = os.fork()
    if pid == 0:   # child: never return into pytest
        code = 70
        try:
            fd = os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 2)
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
            code = int(fn())
            sys.stderr.flush()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_cifar_reader_builds_only_integer_arrays(tmp_path):
    """Object arrays, float arrays and a byte count that does not match the shape are all refused."""
    from reparam.data.cifar import load_pickle

    for bad in (np.array([object()] * 2, dtype=object), np.zeros(3, np.float32)):
        p = tmp_path / "b"
        p.write_bytes(pickle.dumps({b"data": bad}, protocol=2))
        with pytest.raises(ReparamError, match="element type"):
            load_pickle(p)
    blob = pickle.dumps({b"data": np.arange(6, dtype=np.uint8)}, protocol=2)
    p.write_bytes(blob.replace(b"\x00\x01\x02\x03\x04\x05", b"\x00\x01\x02\x03\x04"))   # 5 bytes for 6
    with pytest.raises(ReparamError):
        load_pickle(p)
    p.write_bytes(blob)
    assert load_pickle(p)["data"].tolist() == list(range(6))


# ---------------------------------------------------------------------------------------------- resume
TRAIN = ["train", "--data", "digits", "--model", "mlp", "--epochs", "2", "--lr", "0.05", "--batch-size", "256",
         "--no-progress"]


def _killed_run(tmp_path, monkeypatch) -> Path:
    """A run killed after its first epoch: OUT.partial holds the checkpoint and the run's settings."""
    from reparam.train.trainer import Trainer

    save = Trainer._save

    def save_then_die(self):
        save(self)
        raise KeyboardInterrupt

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(Trainer, "_save", save_then_die)
        assert main([*TRAIN, "--out", str(out)]) == 130
    assert (tmp_path / "run.partial" / "checkpoint.safetensors").exists() and not out.exists()
    return out


def test_resume_refuses_a_changed_configuration_and_force_keeps_the_stored_one(tmp_path, monkeypatch, capsys):
    out = _killed_run(tmp_path, monkeypatch)
    partial = tmp_path / "run.partial"
    before = {p.name: p.read_bytes() for p in partial.iterdir()}
    capsys.readouterr()
    rc = main([*TRAIN, "--lr", "0.1", "--seed", "7", "--out", str(out), "--resume"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "--lr 0.05 (now 0.1)" in err and "--seed 0 (now 7)" in err and "--force" in err
    assert {p.name: p.read_bytes() for p in partial.iterdir()} == before   # nothing touched
    # --force: continue with the stored settings; the record says what the run used
    assert main([*TRAIN, "--lr", "0.1", "--seed", "7", "--out", str(out), "--resume", "--force"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["lr"] == 0.05 and metrics["seed"] == 0 and metrics["epochs"] == 2
    assert not partial.exists() and not (out / "resume.json").exists()


def test_resume_with_the_same_options_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    out = _killed_run(tmp_path, monkeypatch)
    assert main([*TRAIN, "--out", str(out), "--resume"]) == 0
    assert main([*TRAIN, "--out", str(tmp_path / "ref")]) == 0
    a, b = (json.loads((p / "metrics.json").read_text()) for p in (out, tmp_path / "ref"))
    assert (a["test_acc"], a["val_acc"], a["best_epoch"]) == (b["test_acc"], b["val_acc"], b["best_epoch"])


def test_trainer_refuses_a_checkpoint_of_other_settings(tmp_path):
    """The library's own check, under the CLI's: a checkpoint resumes only the run that wrote it."""
    from reparam.data import load_dataset
    from reparam.models import build_model
    from reparam.train import TrainConfig, Trainer

    data = load_dataset("synthetic", seed=0)

    def model():
        torch.manual_seed(0)
        return build_model("mlp", num_classes=data.num_classes, in_channels=data.in_channels,
                           image_size=data.image_size, hidden=[8])

    cfg = dict(epochs=1, batch_size=64, lr=0.05, progress=False)
    Trainer(model(), data, TrainConfig(**cfg), out_dir=tmp_path).fit()
    with pytest.raises(ReparamError, match=r"batch_size 64 \(now 32\).*lr 0.05 \(now 0.1\)"):
        Trainer(model(), data, TrainConfig(**{**cfg, "lr": 0.1, "batch_size": 32}), out_dir=tmp_path).fit()
    Trainer(model(), data, TrainConfig(**{**cfg, "progress": True, "device": "cpu"}), out_dir=tmp_path).fit()


def test_select_on_last_keeps_the_final_epoch(tmp_path):
    assert main([*TRAIN, "--out", str(tmp_path / "last"), "--select-on", "last"]) == 0
    m = json.loads((tmp_path / "last" / "metrics.json").read_text())
    assert m["best_epoch"] == 2 and m["config"]["select_on"] == "last"


# ---------------------------------------------------------------------------------------------- reproduce
def test_reproduce_writes_through_out_partial_and_resume_checks_settings(tmp_path, monkeypatch, capsys):
    from reparam.reproduce import dense
    from reparam.reproduce.claims import MethodReport, MethodSummary

    out = tmp_path / "rep"
    seen = []

    def killed(ctx):
        seen.append(Path(ctx.out_dir))
        raise KeyboardInterrupt

    monkeypatch.setattr(dense, "run", killed)
    assert main(["reproduce", "--tiny", "--methods", "dense", "--out", str(out), "--no-progress"]) == 130
    assert seen == [tmp_path / "rep.partial"] and not out.exists()
    capsys.readouterr()
    assert main(["reproduce", "--tiny", "--methods", "dense", "--seed", "3", "--resume", str(out),
                 "--no-progress"]) == 2
    assert "--seed 0 (now 3)" in capsys.readouterr().err

    def finished(ctx):
        return MethodReport(MethodSummary("dense", "all weights", 0.5, 0.5, 1.0), [])

    monkeypatch.setattr(dense, "run", finished)
    assert main(["reproduce", "--tiny", "--methods", "dense", "--resume", str(out), "--no-progress"]) == 0
    assert (out / "report.md").exists() and not (tmp_path / "rep.partial").exists()
    assert main(["reproduce", "--tiny", "--methods", "dense", "--out", str(out), "--no-progress"]) == 2
