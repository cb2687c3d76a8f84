"""Probe (issue 19): one 3x3 conv against its 3x1 + 1x3 split pair at TRP's ranks, batch 1 and 128, run as
NCHW, channels_last, oneDNN (mkldnn) tensors and as two GEMMs on shifted NHWC copies; times relative to the
best whole conv, alternating rounds in one process (reparam.trp.latency.time_interleaved).

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/trp_kx1_ops.py [ROUNDS]

A one-off measurement script kept so the numbers in docs/results/trp.md can be re-run; not library code.
"""
# ruff: noqa: B023, E402, E731, E501

import math
import statistics
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from reparam.trp.latency import time_interleaved

torch.set_num_threads(1)
torch.manual_seed(0)


class Gemm(nn.Module):
    """3x1 then 1x3 conv on NHWC data as two GEMMs over shifted copies (im2col along one axis)."""

    def __init__(self, a, b):
        super().__init__()
        self.w1 = a.weight.detach().permute(2, 3, 1, 0).reshape(-1, a.out_channels).contiguous()  # (3*ci, r)
        self.w2 = b.weight.detach().permute(2, 3, 1, 0).reshape(-1, b.out_channels).contiguous()  # (3*r, co)

    def forward(self, x):  # x: (B,H,W,C) contiguous
        H, W = x.shape[1], x.shape[2]
        xp = F.pad(x, (0, 0, 0, 0, 1, 1))
        y = torch.cat([xp[:, k : k + H] for k in range(3)], -1) @ self.w1
        yp = F.pad(y, (0, 0, 1, 1))
        return torch.cat([yp[:, :, k : k + W] for k in range(3)], -1) @ self.w2


rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 9
for ch, hw, r in ((16, 32, 9), (16, 32, 16), (32, 16, 12), (64, 8, 14), (64, 8, 16)):
    for B in (1, 128):
        whole = nn.Conv2d(ch, ch, 3, padding=1, bias=True).eval()
        pair = nn.Sequential(
            nn.Conv2d(ch, r, (3, 1), padding=(1, 0), bias=False), nn.Conv2d(r, ch, (1, 3), padding=(0, 1), bias=True)
        ).eval()
        x = torch.rand(B, ch, hw, hw)
        xcl = x.contiguous(memory_format=torch.channels_last)
        import copy

        wcl = copy.deepcopy(whole).to(memory_format=torch.channels_last)
        pcl = copy.deepcopy(pair).to(memory_format=torch.channels_last)
        g = Gemm(pair[0], pair[1])
        xh = x.permute(0, 2, 3, 1).contiguous()
        ref = pair(x)
        assert (g(xh).permute(0, 3, 1, 2) - ref + pair[1].bias.view(1, -1, 1, 1)).abs().max() < 1e-4
        from torch.utils import mkldnn as mk

        wm, pm = mk.to_mkldnn(nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1)).eval()), mk.to_mkldnn(copy.deepcopy(pair))
        xm = x.to_mkldnn()
        fns = {
            "whole nchw": lambda: whole(x),
            "pair nchw": lambda: pair(x),
            "whole cl": lambda: wcl(xcl),
            "pair cl": lambda: pcl(xcl),
            "whole mkldnn": lambda: wm(xm),
            "pair mkldnn": lambda: pm(xm),
            "pair gemm nhwc": lambda: g(xh),
        }
        names = list(fns)
        f = [fns[n] for n in names]
        probe = [statistics.median(s["wall"]) for s in time_interleaved(f, rounds=1, reps=1)]
        reps = max(1, min(100, math.ceil(0.005 / min(probe))))
        s = time_interleaved(f, rounds=rounds, reps=reps, warmup=0)
        med = {n: 1e3 * statistics.median(v["cpu"]) for n, v in zip(names, s)}
        base = min(med["whole nchw"], med["whole cl"], med["whole mkldnn"])
        print(
            f"{ch}ch {hw}x{hw} r={r} b{B}: best whole {base:.3f} ms; "
            + ", ".join(f"{n} {med[n] / base:.2f}" for n in names),
            flush=True,
        )
