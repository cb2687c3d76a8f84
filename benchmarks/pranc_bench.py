"""PRANC training-step time and peak RSS: streamed vs materialized vs the official algorithm vs dense.

Every configuration runs in its own subprocess (peak RSS is per process). Prints a table and writes JSON.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/pranc_bench.py --out runs/pranc/bench.json
    ... --models lenet5 --ks 1000,10000 --chunks 64,256,1024 --steps 2

Reference ("official algorithm", UCDvision/PRANC utils.py): the k x d basis materialized once (plain
torch.rand, not our portable generator), then every step: dense forward/backward, g = flat grads,
grad alpha = B @ g, Adam step, theta = alpha @ B copied into the net.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def _one(cfg: dict) -> dict:
    import torch
    import torch.nn.functional as F

    from reparam.metrics.timing import peak_rss_mb
    from reparam.models import build_model
    from reparam.pranc import PrancConfig, apply_pranc

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(cfg["model"], num_classes=10, in_channels=1, image_size=(28, 28))
    x = torch.rand(cfg["batch"], 1, 28, 28)
    y = torch.randint(0, 10, (cfg["batch"],))
    d_all = sum(p.numel() for p in model.parameters())
    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    kind = cfg["kind"]
    if kind == "dense":
        opt = torch.optim.Adam(model.parameters(), 1e-3)

        def step():
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    elif kind == "reference":
        from pranc_paired import reference_step  # the official algorithm, shared with pranc_paired.py

        ref = reference_step(model, cfg["k"])

        def step():
            ref(x, y)
    else:
        apply_pranc(model, PrancConfig(k=cfg["k"], mode=kind, chunk=cfg.get("chunk", 256)))
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 1e-3)

        def step():
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    setup = time.perf_counter() - t0
    model.train()
    times = []
    for i in range(cfg["steps"] + (1 if cfg["warmup"] else 0)):
        t = time.perf_counter()
        step()
        if i or not cfg["warmup"]:
            times.append(time.perf_counter() - t)
    return {**cfg, "setup_s": setup, "step_s": min(times), "peak_rss_mb": peak_rss_mb(),
            "rss_before_mb": rss0, "params": d_all}


def _decode(cfg: dict) -> dict:
    import torch

    from reparam.metrics.timing import peak_rss_mb
    from reparam.models import build_model
    from reparam.pranc import PrancConfig, apply_pranc, fold_pranc

    torch.set_num_threads(1)
    model = build_model(cfg["model"], num_classes=10, in_channels=1, image_size=(28, 28))
    core = apply_pranc(model, PrancConfig(k=cfg["k"], mode="streamed", init="l1-randn"))
    rss0 = peak_rss_mb()
    t = time.perf_counter()
    fold_pranc(model)
    return {**cfg, "decode_s": time.perf_counter() - t, "peak_rss_mb": peak_rss_mb(), "rss_before_mb": rss0,
            "d": core.d}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="lenet5,resnet20")
    ap.add_argument("--ks", default="1000,10000,100000")
    ap.add_argument("--chunks", default="64,256,1024")
    ap.add_argument("--kinds", default="dense,reference,materialized,streamed")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-basis-gb", type=float, default=6.0, help="skip materialized/reference above this")
    ap.add_argument("--max-entries", type=float, default=3e9, help="skip streamed runs generating more "
                                                                   "basis entries per step than this")
    ap.add_argument("--decode", default="resnet20:10000", help="model:k decode benchmarks, comma-separated")
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--out", default="runs/pranc/bench.json")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        cfg = json.loads(args.one)
        print(json.dumps(_decode(cfg) if cfg["kind"] == "decode" else _one(cfg)))
        return
    d_of = {"lenet5": 61706, "resnet20": 269722}
    cfgs = []
    for m in args.models.split(","):
        cfgs.append({"model": m, "kind": "dense", "k": 0})
        for k in map(int, args.ks.split(",")):
            basis_gb = k * d_of.get(m, 1e5) * 4 / 1e9
            for kind in args.kinds.split(","):
                if kind == "dense":
                    continue
                if kind in ("reference", "materialized") and basis_gb > args.max_basis_gb:
                    cfgs.append({"model": m, "kind": kind, "k": k, "skipped": f"basis {basis_gb:.1f} GB"})
                    continue
                chunks = map(int, args.chunks.split(",")) if kind == "streamed" else [None]
                for c in chunks:
                    if kind == "streamed" and 2 * k * d_of.get(m, 1e5) > args.max_entries:
                        cfgs.append({"model": m, "kind": kind, "k": k, "chunk": c,
                                     "skipped": f"{2 * k * d_of.get(m, 1e5):.1e} entries/step"})
                        continue
                    cfgs.append({"model": m, "kind": kind, "k": k, **({"chunk": c} if c else {})})
    for spec in filter(None, args.decode.split(",")):
        m, k = spec.split(":")
        cfgs.append({"model": m, "kind": "decode", "k": int(k)})
    results = []
    for cfg in cfgs:
        if "skipped" in cfg:
            results.append(cfg)
            print(f"skip {cfg}", flush=True)
            continue
        cfg = {**cfg, "steps": args.steps, "batch": args.batch, "warmup": cfg["kind"] in ("dense",)}
        try:
            p = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)], capture_output=True,
                               text=True, timeout=args.timeout)
            r = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else \
                {**cfg, "error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"rc {p.returncode}"}
        except subprocess.TimeoutExpired:
            r = {**cfg, "error": f"timeout {args.timeout}s"}
        results.append(r)
        print(json.dumps(r), flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    dense = {r["model"]: r["step_s"] for r in results if r.get("kind") == "dense" and "step_s" in r}
    ref = {(r["model"], r["k"]): r["step_s"] for r in results if r.get("kind") == "reference" and "step_s" in r}
    print(f"\n{'model':9} {'kind':13} {'k':>7} {'chunk':>6} {'s/step':>9} {'x dense':>8} {'x ref':>7} "
          f"{'peak RSS MB':>11}")
    for r in results:
        if "step_s" in r:
            xd = r["step_s"] / dense[r["model"]] if r["model"] in dense else float("nan")
            xr = r["step_s"] / ref[(r["model"], r["k"])] if (r["model"], r["k"]) in ref else float("nan")
            r["ratio_dense"], r["ratio_reference"] = xd, xr
            print(f"{r['model']:9} {r['kind']:13} {r['k']:>7} {str(r.get('chunk', '')):>6} {r['step_s']:>9.3f} "
                  f"{xd:>8.1f} {xr:>7.2f} {r['peak_rss_mb']:>11.0f}")
        elif "decode_s" in r:
            print(f"{r['model']:9} {'decode':13} {r['k']:>7} {'':>6} {r['decode_s']:>9.1f} {'':>8} {'':>7} "
                  f"{r['peak_rss_mb']:>11.0f}")
        else:
            print(f"{r['model']:9} {r['kind']:13} {r['k']:>7} {str(r.get('chunk', '')):>6} "
                  f"{r.get('skipped') or r.get('error')}")
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
