"""Foundation check: a dense ResNet-20 on Fashion-MNIST reaches >= 91% test accuracy with the shared trainer.

Run:  python benchmarks/dense_fashion_resnet20.py [--epochs 4] [--threads 1] [--out runs/bench-dense-fmnist]
Writes OUT/metrics.json (the standard training output) and prints the command and the result. One epoch is
422 steps of 128 images at about 1 s each on one free CPU thread, so 4 epochs take 30-40 minutes;
`--resume` continues a killed run from its last completed epoch.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from reparam.cli.main import main as reparam_main


def run() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/bench-dense-fmnist")
    p.add_argument("--resume", action="store_true")
    a = p.parse_args()
    argv = ["train", "--method", "dense", "--data", "fashion-mnist", "--model", "resnet20", "--epochs", str(a.epochs),
            "--batch-size", "128", "--lr", "0.1", "--weight-decay", "5e-4", "--schedule", "cosine",
            "--augment", "flip", "--seed", "0", "--threads", str(a.threads), "--out", a.out, "--overwrite"]
    if a.resume:
        argv.append("--resume")
    print("command: reparam " + " ".join(shlex.quote(x) for x in argv), flush=True)
    rc = reparam_main(argv)
    if rc:
        return rc
    m = json.loads(open(f"{a.out}/metrics.json").read())
    print(json.dumps({k: m[k] for k in ("test_acc", "val_acc", "epochs", "train_seconds", "params_total")}))
    print("target >= 0.91:", "met" if m["test_acc"] >= 0.91 else "NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(run())
