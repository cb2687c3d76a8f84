"""Probe (issue 19): per split layer of a trained TRP run, its time inside the model before and after the
latency plan's split (forward hooks, reparam.trp.export.module_times), beside the cost table's prediction
and the MACs ratio.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/trp_stage_times.py RUN SIZE BATCH nchw|channels_last fold|nofold

RUN is a `reparam trp train` output folder (model.safetensors, metrics.json). A one-off measurement script
kept so the numbers in docs/results/trp.md can be re-run; not library code.
"""
# ruff: noqa: B023, E402, E731, E501

import json
import sys
from pathlib import Path

import torch

from reparam.trp.decompose import decompose_model
from reparam.trp.export import fold_batchnorm, module_times
from reparam.trp.io import load_model_file
from reparam.trp.latency import CostTable
from reparam.trp.plan import make_plan
from reparam.trp.project import select_targets

torch.set_num_threads(1)
run = Path(sys.argv[1])
size = int(sys.argv[2])
b = int(sys.argv[3])
lay = sys.argv[4]
fold = sys.argv[5] == "fold"
model, _ = load_model_file(run / "model.safetensors")
model.eval()
meta = json.loads((run / "metrics.json").read_text())
shape = (1, size, size)
ranks, rows = make_plan(
    model,
    select_targets(model),
    meta["scheme"],
    meta["decompose_rule"],
    input_shape=shape,
    plan="latency",
    batches=(1, 128),
    layouts=("nchw", "channels_last"),
    table=CostTable(),
)
small, plans = decompose_model(model, meta["scheme"], ranks)
small.eval()
fm, fs = (fold_batchnorm(model)[0], fold_batchnorm(small)[0]) if fold else (model, small)
x = torch.rand(b, *shape)
if lay == "channels_last":
    fm = fm.to(memory_format=torch.channels_last)
    fs = fs.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
A = []
B = []
for _ in range(7):
    A.append(module_times(fm, x, rounds=1))
    B.append(module_times(fs, x, rounds=1))
med = lambda L, n: sorted(d[n] for d in L)[len(L) // 2]
for r in rows:
    if r.decision != "split":
        continue
    n = r.layer
    tb = med(A, n)
    ta = med(B, n + ".0") + med(B, n + ".1")
    key = f"b{b}/{lay}"
    print(
        f"{n:16s} rank {r.rank:3d}/{r.max_rank:3d} in-model {1e3 * tb:7.3f} -> {1e3 * ta:7.3f} ms ({tb / ta:.2f}x)  table {r.ms_before[key]:7.3f} -> {r.ms_after[key]:7.3f} ({r.ms_before[key] / r.ms_after[key]:.2f}x)  MACs {r.macs_before / r.macs_after:.2f}x"
    )
