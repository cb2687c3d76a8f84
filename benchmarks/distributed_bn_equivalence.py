"""How closely 2 processes with --sync-bn follow 1 process, step by step (digits; `cnn` by default).

    PYTHONPATH=src python benchmarks/distributed_bn_equivalence.py [--steps 5] [--model mlp]

Three runs of the real trainer, same seed and global batch: (a) 1 process with torch's BatchNorm kernel,
(b) 1 process whose BatchNorm computes the same formula as reparam's GlobalBatchNorm (two-pass sums),
(c) 2 processes with sync_bn=True. Prints, after every optimizer step, the largest absolute difference
of any state entry between (c) and (a), and between (c) and (b). If (c)-(b) stays at rounding level while
(c)-(a) grows, the growth comes from the BatchNorm kernel's rounding (amplified where ReLU or max-pool
switch), not from the distribution.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path


def run(out: str, variant: str, steps: int, model_name: str) -> None:
    import torch
    import torch.nn as nn

    from reparam.core import distributed as rd
    from reparam.core.fileformat import save_tensors
    from reparam.core.runtime import seed_everything
    from reparam.data import load_dataset
    from reparam.models import build_model
    from reparam.train import Callback, TrainConfig, Trainer

    class TwoPassBN(nn.BatchNorm2d):
        def forward(self, x):
            if not self.training:
                return super().forward(x)
            n = torch.tensor(float(x.numel() / x.shape[1]))
            mean = x.sum([0, 2, 3]) / n
            xc = x - mean.view(1, -1, 1, 1)
            var = (xc * xc).sum([0, 2, 3]) / n
            y = xc * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                self.running_mean.mul_(1 - self.momentum).add_(mean, alpha=self.momentum)
                self.running_var.mul_(1 - self.momentum).add_(var * n / (n - 1), alpha=self.momentum)
            return y

    class Stop(Exception):
        pass

    torch.set_num_threads(1)
    rd.init_distributed(120)
    s = load_dataset("digits", seed=0)
    seed_everything(0)
    model = build_model(model_name, num_classes=s.num_classes, in_channels=s.in_channels, image_size=s.image_size,
                        mean=s.mean, std=s.std)
    if variant == "twopass":
        for i, m in enumerate(model.body):
            if isinstance(m, nn.BatchNorm2d):
                new = TwoPassBN(m.num_features)
                new.load_state_dict(m.state_dict())
                model.body[i] = new
    snaps = {}

    class Snap(Callback):
        def after_step(self, t):
            snaps.update({f"{t.global_step}.{k}": v.clone() for k, v in t.model.state_dict().items()})
            if t.global_step == steps:
                raise Stop

    cfg = TrainConfig(epochs=1, batch_size=64, lr=0.05, progress=False, sync_bn=True)
    try:
        Trainer(model, s, cfg, [Snap()]).fit()
    except Stop:
        pass
    if rd.is_main():
        save_tensors(out, snaps, "steps", {})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--model", default="cnn", help="model name (cnn has BatchNorm, mlp has none)")
    p.add_argument("--bn-eq-run", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.bn_eq_run:
        return run(args.bn_eq_run[0], args.bn_eq_run[1], args.steps, args.model)
    from reparam.core.fileformat import load_tensors

    tmp = Path(tempfile.mkdtemp(prefix="bn-eq-"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    me = [__file__, "--steps", str(args.steps), "--model", args.model, "--bn-eq-run"]
    subprocess.run([sys.executable, *me, str(tmp / "a"), "torch"], env=env, check=True)
    subprocess.run([sys.executable, *me, str(tmp / "b"), "twopass"], env=env, check=True)
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                    str(port), *me, str(tmp / "c"), "torch"], env=env, check=True)
    a, b, c = (load_tensors(tmp / n)[0] for n in "abc")
    print("step  max|2p sync-bn - 1p torch BN|  max|2p sync-bn - 1p two-pass BN|  max|1p two-pass - 1p torch|")
    for step in range(1, args.steps + 1):
        keys = [k for k in a if k.startswith(f"{step}.")]
        d = [max((x[k].double() - y[k].double()).abs().max().item() for k in keys) for x, y in ((c, a), (c, b), (b, a))]
        print(f"{step:>4}  {d[0]:>29.3g}  {d[1]:>33.3g}  {d[2]:>27.3g}")


if __name__ == "__main__":
    main()
