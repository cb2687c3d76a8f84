"""Running a (decomposed) model the way it is fastest here, and measuring that.

A decomposed model is a plain nn.Module of Conv2d/Sequential layers (saved and loaded as plain convs by
`reparam.trp.io`). How it runs is a separate choice, made by measurement: a runtime is the memory layout
(NCHW or channels_last) and whether it runs under `torch.compile` (Inductor; compiled per input shape).
`compare` times two models (original, decomposed) under each runtime in alternating rounds in one process
and reports each model's fastest runtime, so the speed-up is best-against-best, never a fast runtime for one
model against a slow one for the other.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from reparam.core.errors import ReparamError
from reparam.trp.latency import check_device, medians, peak_forward_bytes, resolve_clock, time_interleaved

RUNTIMES = ("eager", "channels_last", "compile", "compile+channels_last")


def check_runtimes(runtimes: Sequence[str]) -> tuple[str, ...]:
    bad = [r for r in runtimes if r not in RUNTIMES]
    if bad or not runtimes:
        raise ReparamError(f"unknown runtime {bad[0] if bad else '(none)'!r}; allowed: {', '.join(RUNTIMES)}")
    return tuple(runtimes)


def cxx_compiler() -> str | None:
    """The C++ compiler Inductor would use on the CPU ($CXX, else c++/g++/clang++ on PATH), or None."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def usable_runtimes(runtimes: Sequence[str], device: str = "cpu") -> tuple[tuple[str, ...], list[str]]:
    """(the runtimes that can run here, the ones left out): compiled runtimes on the CPU need a C++ compiler."""
    runtimes = check_runtimes(runtimes)
    if device != "cpu" or cxx_compiler() is not None:
        return runtimes, []
    keep = tuple(r for r in runtimes if not r.startswith("compile"))
    if not keep:
        raise ReparamError("every runtime asked for is compiled, and torch.compile on the CPU needs a C++ "
                           "compiler (none found: set CXX or install g++); add eager or channels_last")
    return keep, [r for r in runtimes if r.startswith("compile")]


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """(a copy of `model` with each BatchNorm2d folded into the Conv2d whose output only it reads, the number
    folded). The copy computes the same function in eval mode (up to float rounding) with one op less per
    pair; a split conv (Sequential of two convs) gets its BatchNorm folded into the second conv. Found by
    tracing the forward (torch.fx); a model that cannot be traced is returned unfolded (count 0). The folded
    BatchNorm becomes nn.Identity, so the copy is still a plain module of convs (saved like any other)."""
    m = copy.deepcopy(model).eval()
    try:
        graph = torch.fx.symbolic_trace(m).graph
    except Exception:            # noqa: BLE001 - any tracing failure: keep the model as it is
        return m, 0
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    folded = 0
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(m.get_submodule(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0] if node.args else None
        if not isinstance(src, torch.fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        conv, bn = m.get_submodule(src.target), m.get_submodule(node.target)
        if (not isinstance(conv, nn.Conv2d) or parametrize.is_parametrized(conv) or calls[src.target] != 1
                or calls[node.target] != 1 or bn.running_mean is None or conv.out_channels != bn.num_features):
            continue
        fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
        _set(m, src.target, fused)
        _set(m, node.target, nn.Identity())
        folded += 1
    return m, folded


def _set(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def layout_of(runtime: str) -> str:
    return "channels_last" if runtime.endswith("channels_last") else "nchw"


def prepare(model: nn.Module, runtime: str, example: torch.Tensor) -> tuple[Callable[[], Any], torch.Tensor]:
    """(a call running `model` on the example under `runtime`, the example in that layout). The model is
    copied (BatchNorm folded into the convs), never changed; a compiled model is compiled here (one warm-up
    call, dynamic shapes off)."""
    check_runtimes([runtime])
    m, _ = fold_batchnorm(model)
    x = example
    if layout_of(runtime) == "channels_last":
        m = m.to(memory_format=torch.channels_last)
        x = example.contiguous(memory_format=torch.channels_last)
    if runtime.startswith("compile"):
        # freezing: weights become constants, so Inductor folds BatchNorm into the convs and prepacks them
        m = torch.compile(m, dynamic=False, options={"freezing": True})
    with torch.no_grad():
        m(x)
    return (lambda: m(x)), x


def compare(original: nn.Module, decomposed: nn.Module, input_shape: tuple[int, ...], batches: Sequence[int],
            *, runtimes: Sequence[str] = ("eager", "channels_last"), rounds: int = 11, device: str = "cpu",
            clock: str = "auto", memory: bool = False, seed: int = 0, min_round_s: float = 0.02) -> dict[str, Any]:
    """Median time per forward pass of both models at each batch size under each runtime.

    Metrics per batch B: latency_bB_before_ms / _after_ms (medians, each model under its fastest runtime, by
    the chosen clock), latency_speedup_bB (median over rounds of the two models' time ratio in that round),
    the same with _wall (wall clock, same runtimes), the runtime each
    model ran fastest under, every runtime's times (latency_runtimes), the compiled runtimes left out for want
    of a C++ compiler (latency_runtimes_skipped), the BatchNorms folded per model (latency_bn_folded), and with
    memory=True the peak bytes of tensors a forward pass creates (peak_mb_bB_before / _after, eager NCHW,
    unfolded)."""
    runtimes, skipped = usable_runtimes(runtimes, device)
    dev = check_device(device)
    clock = resolve_clock(clock, device)
    original = copy.deepcopy(original).to(dev).eval()       # the caller's models stay where they are
    decomposed = copy.deepcopy(decomposed).to(dev).eval()
    g = torch.Generator().manual_seed(seed)
    out: dict[str, Any] = {"latency_clock": clock, "latency_device": device, "latency_rounds": rounds,
                           "latency_min_round_s": min_round_s, "latency_runtimes_skipped": skipped,
                           "latency_runtimes": {},
                           # BatchNorms folded into convs in each model as timed (every runtime folds them)
                           "latency_bn_folded": {"before": fold_batchnorm(original)[1],
                                                 "after": fold_batchnorm(decomposed)[1]}}
    for b in batches:
        x = torch.rand((b, *input_shape), generator=g).to(dev)
        if any(rt.startswith("compile") for rt in runtimes):
            # each model copy is a new module for dynamo; past its cache limit (8) it would silently run
            # eager, so start each batch afresh (the previous batch's compiled copies are not used again)
            torch._dynamo.reset()
        fns, keys = [], []
        for rt in runtimes:
            for which, model in (("before", original), ("after", decomposed)):
                fns.append(prepare(model, rt, x)[0])
                keys.append((rt, which))
        # every (runtime, model) pair in the same alternating rounds: load drift hits all alike; each round
        # repeats a call to last about min_round_s (a single short call is mostly timer and scheduler noise)
        probe = medians(time_interleaved(fns, rounds=1, reps=1, warmup=1, device=dev), "wall")
        reps = max(1, min(100, math.ceil(min_round_s / max(1e-7, min(probe)))))
        samples = time_interleaved(fns, rounds=rounds, reps=reps, warmup=0, device=dev)
        table = {k: {c: statistics.median(s[c]) for c in ("cpu", "wall")} for k, s in zip(keys, samples)}
        out["latency_runtimes"][f"b{b}"] = {f"{rt}/{w}": {c: 1e3 * v for c, v in t.items()}
                                            for (rt, w), t in table.items()}
        best = {}
        for which in ("before", "after"):
            best[which] = min(runtimes, key=lambda rt: table[(rt, which)][clock])
            out[f"latency_b{b}_{which}_runtime"] = best[which]
            out[f"latency_b{b}_{which}_ms"] = 1e3 * table[(best[which], which)][clock]
            out[f"latency_b{b}_{which}_wall_ms"] = 1e3 * table[(best[which], which)]["wall"]
        # the speed-up is the median of per-round ratios: the two passes of a round ran close together, under
        # about the same machine load, so slow drifts in load cancel
        s_b = samples[keys.index((best["before"], "before"))]
        s_a = samples[keys.index((best["after"], "after"))]
        for c, suffix in ((clock, ""), ("wall", "_wall")):
            out[f"latency_speedup_b{b}{suffix}"] = statistics.median(x / y for x, y in zip(s_b[c], s_a[c]))
        if memory:
            out[f"peak_mb_b{b}_before"] = peak_forward_bytes(original, x) / 2**20
            out[f"peak_mb_b{b}_after"] = peak_forward_bytes(decomposed, x) / 2**20
    return out


def module_times(model: nn.Module, x: torch.Tensor, *, rounds: int = 5, clock: str = "cpu") -> dict[str, float]:
    """Seconds per forward pass spent in each leaf module of `model` (the model as given: fold or convert it
    first), median over `rounds` passes after one warm-up, by forward hooks around each leaf; key "" is the
    whole pass, so time outside the leaves (residual additions, functional ops) is "" minus their sum. For
    explaining where a model's time goes (docs/results/trp.md), not for planning: the hooks add a few
    microseconds per module, which matters at batch 1 only."""
    if clock not in ("cpu", "wall"):
        raise ReparamError(f"unknown clock {clock!r}; allowed: cpu, wall")
    now = time.thread_time if clock == "cpu" else time.perf_counter
    leaves = {n: m for n, m in model.named_modules() if n and not any(True for _ in m.children())}
    samples: dict[str, list[float]] = {n: [] for n in ["", *leaves]}
    acc: dict[str, float] = {}
    start: dict[str, float] = {}
    handles = []
    for n, m in leaves.items():
        handles.append(m.register_forward_pre_hook(lambda _m, _a, n=n: start.__setitem__(n, now())))
        handles.append(m.register_forward_hook(
            lambda _m, _a, _o, n=n: acc.__setitem__(n, acc.get(n, 0.0) + now() - start[n])))
    try:
        with torch.no_grad():
            model(x)
            for _ in range(rounds):
                acc.clear()
                t0 = now()
                model(x)
                samples[""].append(now() - t0)
                for n in leaves:
                    samples[n].append(acc.get(n, 0.0))
    finally:
        for h in handles:
            h.remove()
    return {n: statistics.median(v) for n, v in samples.items()}
