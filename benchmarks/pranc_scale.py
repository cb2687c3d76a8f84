"""PRANC at scale (issue 21): the Fastfood basis and the i.i.d. generator, one thread, ratios in one process.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/pranc_scale.py rate --rounds 20
    ... step --model resnet20 --batch 128 --kinds dense,fastfood:10000,fastfood:100000 --rounds 6
    ... step --model lenet5 --batch 128 --kinds iid-materialized:1000,iid-streamed:1000 --rounds 6
    ... rss --model resnet20 --batch 128 --kinds dense,fastfood:10000,fastfood:100000
    ... rebuild --model resnet20 --kinds iid:10000,fastfood:1000,fastfood:262144
    ... apply --model resnet20 --k 100000

rate:    basis entries per second of the i.i.d. generator (scaled entries into a reused buffer, the way
         training and decoding use it) against torch.rand into a reused buffer of the same shape, alternating;
         --backends: the generator's backends to time in the same rounds (c = compiled kernel, numba, torch =
         its torch code; REPARAM_KERNEL is switched per call).
step:    training steps (forward, backward, Adam) of several variants of one model built in ONE process
         (a kind may end with @c, @numba or @torch: the generator backend its steps run with),
         their steps alternating (A B C, then C B A, ...) so the machine's load hits all alike; reports
         the median s/step and the median of the per-round ratios to the first kind, with its IQR.
rss:     peak RSS of a few steps of each kind, each in its own process (peak RSS is per process).
rebuild: `fold` of a model from alpha (what decoding a .prnc does), each in its own process; for kinds
         `file:fastfood:K` a .prnc is written first and the timed part is `decode_prnc(path)` (read the file,
         build the architecture from its header, apply, fold) in a fresh process.
apply:   `pranc.apply(model, Config(k, basis="fastfood"))` wall time and the first forward pass.
profile: where a streamed i.i.d. step goes (--model, --k): CPU seconds (median over --rounds, alternating) of
         a dense, a materialized and a streamed step, the streamed forward product (alpha @ B) and backward
         product (B @ g) alone, generating every tile of the block into a buffer with nothing else
         (tile path), and the materialized forward gemv. Uses only APIs that predate the fused kernel, so
         it also runs against older code (PYTHONPATH pointing at its src).
Every JSON line printed is also written to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def _model(name: str):
    from reparam.models import build_model

    torch.manual_seed(0)
    return build_model(name, num_classes=10, in_channels=1, image_size=(28, 28))


_ENV = {"c": "c", "numba": "numba", "torch": "0"}


def _with_backend(backend: str | None, fn):
    """fn run with REPARAM_KERNEL set for `backend` (None: as the environment has it)."""
    if backend is None:
        return fn

    def run(*a):
        old = os.environ.get("REPARAM_KERNEL")
        os.environ["REPARAM_KERNEL"] = _ENV[backend]
        try:
            return fn(*a)
        finally:
            if old is None:
                os.environ.pop("REPARAM_KERNEL")
            else:
                os.environ["REPARAM_KERNEL"] = old
    return run


def _variant(name: str, kind: str):
    """(model, step) for 'dense', 'fastfood:K', 'iid-materialized:K', 'iid-streamed:K[:chunk]', each optionally
    with '@c', '@numba' or '@torch' (the generator backend)."""
    import warnings

    from reparam.pranc import PrancConfig, apply_pranc

    kind, _, backend = kind.partition("@")
    model = _model(name)
    if kind != "dense":
        basis, k, *rest = kind.split(":")
        cfg = {"fastfood": dict(basis="fastfood"), "iid-materialized": dict(mode="materialized"),
               "iid-streamed": dict(mode="streamed", chunk=int(rest[0]) if rest else 64)}[basis]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            apply_pranc(model, PrancConfig(k=int(k), **cfg))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 1e-3)
    model.train()

    def step(x, y):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, _with_backend(backend or None, step)


def _data(batch: int):
    g = torch.Generator().manual_seed(0)
    return torch.rand(batch, 1, 28, 28, generator=g), torch.randint(0, 10, (batch,), generator=g)


def cmd_rate(args) -> list[dict]:
    from reparam.core import generator

    backends = args.backends.split(",") if args.backends else [None]
    out = []
    for rows, cols in [(64, 268058), (256, 4096)]:
        buf = torch.empty(rows, cols)
        scale = torch.full((cols,), 0.05)
        factor = generator.uniform_factor(scale)
        names = [f"generator@{b}" if b else "generator" for b in backends] + ["torch.rand"]
        def gen(buf=buf, rows=rows, cols=cols, scale=scale, factor=factor):
            generator.fill_block(buf, 0, 0, 0, rows, 0, cols, "uniform", scale, factor=factor)

        fns = {name: _with_backend(b, gen) for name, b in zip(names, backends)}
        fns["torch.rand"] = lambda buf=buf: torch.rand(buf.shape, out=buf)
        used = {name: _with_backend(b, lambda: getattr(generator.genkernel.kernel(), "name", "torch"))()
                for name, b in zip(names, backends)}
        times: dict[str, list[float]] = {n: [] for n in names}
        cpu: dict[str, list[float]] = {n: [] for n in names}
        for r in range(args.rounds + 1):      # round 0: warm-up (JIT compile, first-use setup)
            for name in (names if r % 2 else names[::-1]):
                t, c = time.perf_counter(), time.process_time()
                fns[name]()
                if r:
                    times[name].append(time.perf_counter() - t)
                    cpu[name].append(time.process_time() - c)
        n = rows * cols
        for name in names[:-1]:
            ratios = [a / b for a, b in zip(times["torch.rand"], times[name])]
            cratios = [a / b for a, b in zip(cpu["torch.rand"], cpu[name])]
            out.append({"bench": "rate", "shape": [rows, cols], "backend": used[name],
                        "generator_M_per_s": n / statistics.median(times[name]) / 1e6,
                        "rand_M_per_s": n / statistics.median(times["torch.rand"]) / 1e6,
                        "ratio_median": statistics.median(ratios), "ratio_iqr": _iqr(ratios),
                        "cpu_ratio_median": statistics.median(cratios),
                        "cpu_generator_M_per_s": n / statistics.median(cpu[name]) / 1e6,
                        "cpu_rand_M_per_s": n / statistics.median(cpu["torch.rand"]) / 1e6})
    return out


def _iqr(v: list[float]) -> list[float]:
    q = statistics.quantiles(v, n=4) if len(v) > 1 else [v[0]] * 3
    return [q[0], q[2]]


def cmd_step(args) -> list[dict]:
    kinds = args.kinds.split(",")
    x, y = _data(args.batch)
    variants = {k: _variant(args.model, k)[1] for k in kinds}
    for k in kinds:          # warm-up (first-use setup: Fastfood diagonals, allocator)
        variants[k](x, y)
    times: dict[str, list[float]] = {k: [] for k in kinds}
    cpu: dict[str, list[float]] = {k: [] for k in kinds}      # this process's CPU time (the machine is shared)
    for r in range(args.rounds):
        for k in (kinds if r % 2 == 0 else kinds[::-1]):
            t, c = time.perf_counter(), time.process_time()
            variants[k](x, y)
            times[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    base = kinds[0]
    out = []
    for k in kinds:
        ratios = [a / b for a, b in zip(times[k], times[base])]
        cratios = [a / b for a, b in zip(cpu[k], cpu[base])]
        out.append({"bench": "step", "model": args.model, "batch": args.batch, "kind": k,
                    "s_per_step": statistics.median(times[k]), "ratio_to": base,
                    "ratio_median": statistics.median(ratios), "ratio_iqr": _iqr(ratios), "rounds": args.rounds,
                    "cpu_s_per_step": statistics.median(cpu[k]), "cpu_ratio_median": statistics.median(cratios)})
    return out


def _subprocess(mode: str, cfg: dict) -> dict:
    p = subprocess.run([sys.executable, __file__, "_one", json.dumps({"mode": mode, **cfg})], capture_output=True,
                       text=True, timeout=3600)
    if p.returncode:
        return {**cfg, "error": (p.stderr.strip().splitlines() or [f"rc {p.returncode}"])[-1]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def _one(cfg: dict) -> dict:
    from reparam.metrics.timing import peak_rss_mb

    torch.set_num_threads(1)
    if cfg["mode"] == "rss":
        x, y = _data(cfg["batch"])
        rss0 = peak_rss_mb()
        t = time.perf_counter()
        _, step = _variant(cfg["model"], cfg["kind"])
        setup = time.perf_counter() - t
        times = []
        for _ in range(cfg["steps"]):
            t = time.perf_counter()
            step(x, y)
            times.append(time.perf_counter() - t)
        return {"bench": "rss", **cfg, "peak_rss_mb": peak_rss_mb(), "rss_before_mb": rss0, "setup_s": setup,
                "best_step_s": min(times)}
    # rebuild: alpha -> plain weights (what load_prnc + fold / decode_prnc do)
    import warnings

    from reparam.pranc import PrancConfig, apply_pranc, fold

    if cfg["kind"].startswith("file:"):
        from reparam.pranc.fileio import decode_prnc

        rss0 = peak_rss_mb()
        t, c = time.perf_counter(), time.process_time()
        dense, header = decode_prnc(cfg["path"])
        return {"bench": "rebuild-file", **cfg, "rebuild_s": time.perf_counter() - t,
                "rebuild_cpu_s": time.process_time() - c,
                "file_bytes": Path(cfg["path"]).stat().st_size, "peak_rss_mb": peak_rss_mb(), "rss_before_mb": rss0}
    basis, k = cfg["kind"].split(":")
    model = _model(cfg["model"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        core = apply_pranc(model, PrancConfig(k=int(k), basis=basis, mode="streamed", init="l1-randn"))
    rss0 = peak_rss_mb()
    t, c = time.perf_counter(), time.process_time()
    fold(model)
    return {"bench": "rebuild", **cfg, "rebuild_s": time.perf_counter() - t, "rebuild_cpu_s": time.process_time() - c,
            "entries": int(k) * core.d,
            "peak_rss_mb": peak_rss_mb(), "rss_before_mb": rss0}


def cmd_rss(args) -> list[dict]:
    return [_subprocess("rss", {"model": args.model, "kind": k, "batch": args.batch, "steps": args.steps})
            for k in args.kinds.split(",")]


def cmd_rebuild(args) -> list[dict]:
    import tempfile
    import warnings

    from reparam.pranc import PrancConfig, apply_pranc
    from reparam.pranc.fileio import save_prnc

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds.split(","):
            cfg = {"model": args.model, "kind": kind}
            if kind.startswith("file:"):
                _, basis, k = kind.split(":")
                model = _model(args.model)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    core = apply_pranc(model, PrancConfig(k=int(k), basis=basis, init="l1-randn", mode="streamed"))
                cfg["path"] = str(Path(tmp) / f"{basis}{k}.prnc")
                save_prnc(cfg["path"], model, architecture=model.build_args)
                del core, model
            out.append(_subprocess("rebuild", cfg))
    return out


def cmd_apply(args) -> list[dict]:
    from reparam.pranc import Config, apply

    model = _model(args.model)
    t = time.perf_counter()
    handle = apply(model, Config(k=args.k, basis="fastfood"))
    t_apply = time.perf_counter() - t
    model.eval()
    t = time.perf_counter()
    with torch.no_grad():
        model(torch.rand(1, 1, 28, 28))
    return [{"bench": "apply", "model": args.model, "k": args.k, "apply_s": t_apply,
             "first_forward_s": time.perf_counter() - t, "d": handle.extra["core"].d}]


def cmd_profile(args) -> list[dict]:
    from reparam.pranc.core import pranc_core

    x, y = _data(args.batch)
    k = args.k
    steps = {kind: _variant(args.model, kind) for kind in ("dense", f"iid-materialized:{k}", f"iid-streamed:{k}")}
    core_s = pranc_core(steps[f"iid-streamed:{k}"][0])
    core_m = pranc_core(steps[f"iid-materialized:{k}"][0])
    basis = core_s.basis
    alpha = core_s.alpha.detach()
    g = torch.randn(core_s.d, generator=torch.Generator().manual_seed(0))

    def gen_only():
        for r0, r1, c0, c1 in basis.tiles(0):
            basis.rows(0, r0, r1, c0, c1)

    parts = {"dense step": lambda: steps["dense"][1](x, y),
             "materialized step": lambda: steps[f"iid-materialized:{k}"][1](x, y),
             "streamed step": lambda: steps[f"iid-streamed:{k}"][1](x, y),
             "streamed forward product": lambda: basis.streamed_theta(alpha, 0),
             "streamed backward product": lambda: basis.streamed_grad(0, g),
             "generate all tiles only": gen_only,
             "materialized forward gemv": lambda: alpha @ core_m.basis.materialized[0]}
    for f in parts.values():
        f()
    cpu: dict[str, list[float]] = {n: [] for n in parts}
    names = list(parts)
    for r in range(args.rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            c = time.process_time()
            parts[n]()
            cpu[n].append(time.process_time() - c)
    base = statistics.median(cpu["materialized step"])
    return [{"bench": "profile", "model": args.model, "k": k, "part": n, "cpu_s": statistics.median(v),
             "vs_materialized_step": statistics.median(v) / base, "tiles": len(list(basis.tiles(0))), "d": core_s.d}
            for n, v in cpu.items()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["rate", "step", "rss", "rebuild", "apply", "profile", "_one"])
    ap.add_argument("cfg", nargs="?", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--kinds", default="dense,fastfood:10000,fastfood:100000")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--k", type=int, default=100_000)
    ap.add_argument("--out", default=None)
    ap.add_argument("--backends", default="", help="rate: comma-separated c, numba, torch (default: as configured)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.what == "_one":
        print(json.dumps(_one(json.loads(args.cfg))))
        return
    cmds = {"rate": cmd_rate, "step": cmd_step, "rss": cmd_rss, "rebuild": cmd_rebuild, "apply": cmd_apply,
            "profile": cmd_profile}
    rows = cmds[args.what](args)
    for r in rows:
        print(json.dumps(r), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
