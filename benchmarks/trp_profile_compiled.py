"""Probe (issue 19): torch.profiler op shares of the trained and the decomposed model under
compile+channels_last (hooks do not work in compiled models), batch 1 and 128.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/trp_profile_compiled.py RUN LATENCY_JSON SIZE

RUN is a `reparam trp train` output folder; LATENCY_JSON the `--json` file benchmarks/trp_latency.py wrote
(its ranks and decomposed layers). A one-off measurement script kept so the numbers in docs/results/trp.md can
be re-run; not library code.
"""
# ruff: noqa: B023, E402, E731, E501

import collections
import json
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from reparam.trp.export import prepare
from reparam.trp.io import load_model_file

torch.set_num_threads(1)
# the models as trp_latency planned them (its --json has ranks); rebuild the decomposed model from the ranks
from reparam.trp.decompose import decompose_model

run = Path(sys.argv[1])
rows = json.load(open(sys.argv[2]))
size = int(sys.argv[3])
row = next(r for r in rows if r["run"].endswith(run.name) and r["size"] == size)
model, _ = load_model_file(run / "model.safetensors")
model.eval()
ranks = {k: (v if k in row["decomposed_layers"] else None) for k, v in row["ranks"].items()}
small, _ = decompose_model(model, row["scheme"], ranks)
small.eval()
for b in (1, 128):
    x = torch.rand(b, 1, size, size)
    torch._dynamo.reset()
    for name, m in (("trained", model), ("decomposed", small)):
        fn, _ = prepare(m, "compile+channels_last", x)
        n = 50 if b == 1 else 3
        with torch.no_grad():
            fn()
            fn()
            with profile(activities=[ProfilerActivity.CPU]) as p:
                for _ in range(n):
                    fn()
        cat = collections.Counter()
        for e in p.key_averages():
            k = e.key
            if e.self_cpu_time_total <= 0:
                continue
            if "conv" in k.lower():
                c = "conv (oneDNN, fused post-ops)"
            elif "cpp_fused" in k or "kernel" in k.lower():
                c = "Inductor C++ kernels (add, pad, pool, ...)"
            elif "addmm" in k or "linear" in k.lower():
                c = "FC"
            else:
                c = "other (" + k[:30] + ")"
            cat[c] += e.self_cpu_time_total / n / 1e3
        tot = sum(cat.values())
        print(
            f"{run.name} {size} b{b} {name}: total {tot:.2f} ms (profiled) ",
            "; ".join(f"{k} {v:.2f} ms {v / tot:.0%}" for k, v in cat.most_common(6)),
            flush=True,
        )
