"""Training steps per second of PRANC (streamed basis) with 1 and N processes, through the real trainer.

    PYTHONPATH=src python benchmarks/distributed_pranc.py                    # k=10,000, ResNet-20, 1 and 2
    PYTHONPATH=src python benchmarks/distributed_pranc.py --k 2000 --steps 3 --nprocs 1,2 --out bench.json

Each configuration runs in fresh processes (gloo, one thread each) launched like torchrun would (RANK,
WORLD_SIZE, MASTER_ADDR/PORT): the Trainer shards each global batch, wraps the model in DDP and switches
PRANC to its distributed mode (each process generates only its rows of the basis). The run stops right
after the last timed step (no evaluation: the exact reconstruction would dominate). Reported per process
count: wall seconds per step (median) and CPU seconds per step of the busiest process, which shows how
the work divides even when other programs share the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


class _Stop(Exception):
    pass


def worker(args: argparse.Namespace) -> None:
    from types import SimpleNamespace

    import torch
    from torch.utils.data import TensorDataset

    from reparam.core import distributed as rd
    from reparam.models import build_model
    from reparam.pranc import PrancConfig, apply_pranc
    from reparam.train import Callback, TrainConfig, Trainer

    torch.set_num_threads(1)
    rd.init_distributed(timeout_s=3600)
    g = torch.Generator().manual_seed(0)
    n = args.batch_size * args.steps
    x, y = torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    one = TensorDataset(x[:1], y[:1])
    data = SimpleNamespace(name="random", train=TensorDataset(x, y), val=one, test=one)
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=10, in_channels=3, image_size=(32, 32))
    core = apply_pranc(model, PrancConfig(k=args.k, mode="streamed", chunk=args.chunk))

    class Timer(Callback):
        def __init__(self):
            self.wall, self.cpu = [], []

        def on_train_start(self, t):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def after_step(self, t):
            now, cpu = time.perf_counter(), time.process_time()
            self.wall.append(now - self.t0)
            self.cpu.append(cpu - self.c0)
            self.t0, self.c0 = now, cpu
            if t.global_step >= args.steps:
                raise _Stop

    timer = Timer()
    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, lr=0.01, progress=False, checkpoint=False)
    try:
        Trainer(model, data, cfg, [timer]).fit()
    except _Stop:
        pass
    result = {"rank": rd.get_rank(), "world": rd.get_world_size(), "k": core.k, "d": core.d,
              "wall": timer.wall, "cpu": timer.cpu}
    Path(args.result).with_suffix(f".{rd.get_rank()}.json").write_text(json.dumps(result))
    rd.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_config(args: argparse.Namespace, world: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-dist-"))
    port = str(_free_port())
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS="1")
        argv = [sys.executable, __file__, "--worker", "--result", str(tmp / "r"), "--k", str(args.k),
                "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--model", args.model,
                "--chunk", str(args.chunk)]
        procs.append(subprocess.Popen(argv, env=env))
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"a worker failed (exit {p.returncode})")
    ranks = [json.loads((tmp / f"r.{r}.json").read_text()) for r in range(world)]
    # the first step includes one-time costs (DDP buckets, first generation); report the others
    skip = 1 if args.steps > 1 else 0
    wall = [max(r["wall"][i] for r in ranks) for i in range(skip, args.steps)]
    cpu = [max(r["cpu"][i] for r in ranks) for i in range(skip, args.steps)]
    return {"processes": world, "k": ranks[0]["k"], "d": ranks[0]["d"], "steps_timed": len(wall),
            "wall_s_per_step": statistics.median(wall), "steps_per_s": 1 / statistics.median(wall),
            "cpu_s_per_step_busiest": statistics.median(cpu), "wall_all": wall, "cpu_all": cpu}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--k", type=int, default=10_000)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--steps", type=int, default=3, help="training steps per configuration (first not timed)")
    p.add_argument("--batch-size", type=int, default=64, help="global batch, split across processes")
    p.add_argument("--chunk", type=int, default=256, help="basis rows generated at a time")
    p.add_argument("--nprocs", default="1,2")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    rows = []
    for world in [int(v) for v in args.nprocs.split(",")]:
        t0 = time.perf_counter()
        rows.append(run_config(args, world))
        r = rows[-1]
        print(f"{world} process(es): {r['steps_per_s']:.4f} steps/s ({r['wall_s_per_step']:.1f} s/step wall, "
              f"{r['cpu_s_per_step_busiest']:.1f} CPU s/step busiest process; {time.perf_counter() - t0:.0f} s)",
              flush=True)
    base = rows[0]
    for r in rows:
        r["speedup_wall"] = base["wall_s_per_step"] / r["wall_s_per_step"]
        r["speedup_cpu"] = base["cpu_s_per_step_busiest"] / r["cpu_s_per_step_busiest"]
    print(json.dumps([{k: v for k, v in r.items() if not k.endswith("_all")} for r in rows], indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps({"argv": sys.argv, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
