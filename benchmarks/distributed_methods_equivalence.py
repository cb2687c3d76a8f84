"""Every method's training command with 1 and with 2 processes (torchrun, gloo, --sync-bn): how far apart
the saved weights end, and whether the logged accuracies agree. Next to each, the same command's sensitivity
to rounding in ONE process (initial weights changed by a relative 1e-7): where 2 processes end further from
1 process than rounding alone, that is rounding amplified by the method, not a difference in what is computed.

    PYTHONPATH=src python benchmarks/distributed_methods_equivalence.py [--subset 150] [--epochs 1] [--out DIR]

Prints a markdown table and writes DIR/equivalence.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

COMMANDS = {   # name: (argv, file whose tensors are compared)
    "dense (cnn)": (["train", "--model", "cnn"], "model.safetensors"),
    "trp": (["trp", "train", "--model", "cnn"], "model.safetensors"),
    "trp --mode none": (["trp", "train", "--model", "cnn", "--mode", "none"], "model.safetensors"),
    "compander": (["compander", "train", "--model", "cnn"], "model.safetensors"),
    "grow (wrn-10-2)": (["grow", "--model", "wrn-10-2", "--budget", "1.0", "--epochs", "3"], "model.safetensors"),
    "tickets pretrain eps 0": (["tickets", "pretrain", "--classes", "0-4", "--eps", "0"], "eps_0/model.safetensors"),
    "tickets pretrain eps 0.1 (PGD)": (["tickets", "pretrain", "--classes", "0-4", "--eps", "0.1"],
                                       "eps_0.1/model.safetensors"),
}


def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _run(argv: list[str], nproc: int, env: dict[str, str]) -> None:
    head = [sys.executable, "-m", "reparam"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port", _port(),
        "-m", "reparam"]
    p = subprocess.run(head + argv, env=env, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"failed: {' '.join(argv)}\n{p.stderr[-2000:]}")


def sensitivity(argv: list[str], out: Path, rel: float = 1e-7) -> Path:
    """Run `argv` in this process with the initial weights multiplied by (1 + rel * noise): the first Trainer
    built perturbs its model once. Comparing with the plain 1-process run gives the rounding sensitivity."""
    import torch

    from reparam.cli.main import main as cli
    from reparam.train import trainer as T

    orig, done = T.Trainer.__init__, []

    def init(self, model, *a, **k):
        if not done:
            g = torch.Generator().manual_seed(1)
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1 + rel * torch.randn(p.shape, generator=g))
            done.append(True)
        orig(self, model, *a, **k)

    T.Trainer.__init__ = init
    try:
        if cli(argv + ["--out", str(out)]) != 0:
            raise SystemExit(f"failed: {' '.join(argv)}")
    finally:
        T.Trainer.__init__ = orig
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subset", type=int, default=150, help="digits training images")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--out", default=None, help="folder for the runs (default: a temporary one)")
    args = ap.parse_args()
    from safetensors.torch import load_file

    root = Path(args.out or tempfile.mkdtemp(prefix="dist-equiv-"))
    root.mkdir(parents=True, exist_ok=True)
    os.environ["REPARAM_THREADS"] = "1"   # the perturbed runs happen in this process
    env = dict(os.environ, OMP_NUM_THREADS="1")
    common = ["--data", "digits", "--train-subset", str(args.subset), "--no-progress", "--sync-bn",
              "--dist-timeout", "120"]
    rows = []
    for i, (name, (argv, rel)) in enumerate(COMMANDS.items()):
        argv = argv + ([] if "--epochs" in argv else ["--epochs", str(args.epochs)]) + common
        outs = {n: root / f"{i}-{n}p" for n in (1, 2)}
        for n, out in outs.items():
            _run(argv + ["--out", str(out)], n, env)
        a, b = (load_file(out / rel) for out in outs.values())
        diff = max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())
        c = load_file(sensitivity(argv, root / f"{i}-1p-perturbed") / rel)
        sens = max(float((a[k] - c[k]).abs().max()) for k in a if a[k].is_floating_point())
        logs = [[json.loads(x).get("val_acc") for x in ((out / rel).parent / "log.jsonl").read_text().splitlines()]
                for out in outs.values()]
        rows.append({"command": "reparam " + " ".join(argv), "name": name, "max_weight_diff": diff,
                     "one_process_sensitivity_1e-7": sens, "val_acc_equal": logs[0] == logs[1]})
        print(f"{name}: {diff:.2e} (1 process, perturbed: {sens:.2e})", flush=True)
    result = {"rows": rows, "subset": args.subset, "epochs": args.epochs}
    (root / "equivalence.json").write_text(json.dumps(result, indent=2))
    print("\n| command | largest weight difference, 2 vs 1 process | 1 process, initial weights x (1 + 1e-7 noise) "
          "| same val accuracy every epoch, 2 vs 1 process |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['name']} | {r['max_weight_diff']:.1e} | {r['one_process_sensitivity_1e-7']:.1e} | "
              f"{'yes' if r['val_acc_equal'] else 'no'} |")
    print(f"results: {root / 'equivalence.json'}")


if __name__ == "__main__":
    main()
