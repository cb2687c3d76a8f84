"""Measuring convolutions on this machine: interleaved timing, a per-machine cost table cached on disk, and
the peak memory of a forward pass.

A latency plan (`reparam.trp.plan`) asks the table how long a layer and its decompositions take at the
deployment batch and input size. Each time is the median over interleaved rounds of a forward pass of a
module built from random weights (only the shapes matter), measured once on this machine and kept under
the user cache directory (`REPARAM_CACHE_DIR`, else `$XDG_CACHE_HOME/reparam`, else `~/.cache/reparam`),
one JSON file per machine (CPU model, torch version, thread count, device, clock). The layer and every
candidate for it are measured in the same rounds, so their ratio is not skewed by load that changes between
them.

Clock: with one CPU thread the default is the calling thread's CPU time, which does not count the time
other processes take the core away (a shared machine); with more threads or on CUDA it is the wall clock
(CUDA synchronised). Wall-clock and CPU times are both recorded by `time_interleaved`.
An entry is a whole group (a layer and its candidate splits), so a ratio never mixes two measurements.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import statistics
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from reparam.core.errors import ReparamError

DEVICES = ("cpu", "cuda")
CLOCKS = ("auto", "cpu", "wall")
LAYOUTS = ("nchw", "channels_last")

# One option = a list of branches summed together (one branch except network decoupling); a branch = a list
# of convs applied in turn; a conv = [c_in, c_out, kh, kw, sh, sw, ph, pw, dh, dw, groups, bias].
ConvSpec = list
Option = list


def check_device(device: str) -> torch.device:
    if device not in DEVICES:
        raise ReparamError(f"unknown latency device {device!r}; allowed: {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ReparamError("latency device 'cuda' was asked for but torch sees no CUDA GPU; use cpu")
    return torch.device(device)


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ReparamError(f"unknown memory layout {layout!r}; allowed: {', '.join(LAYOUTS)}")
    return layout


def resolve_clock(clock: str, device: str) -> str:
    if clock not in CLOCKS:
        raise ReparamError(f"unknown clock {clock!r}; allowed: {', '.join(CLOCKS)}")
    if clock != "auto":
        return clock
    return "cpu" if device == "cpu" and torch.get_num_threads() == 1 else "wall"


def user_cache_dir() -> Path:
    """Where reparam keeps per-machine measurements."""
    if os.environ.get("REPARAM_CACHE_DIR"):
        return Path(os.environ["REPARAM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "reparam"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def allocator_setting() -> str:
    """The memory allocator settings of this process that change CPU timings ('' = glibc's defaults).

    glibc returns large freed blocks to the OS, so each forward pass page-faults its activations in again;
    how much depends on the allocation history, and a layer's time can double from one measurement to the
    next (docs/results/trp.md). GLIBC_TUNABLES (e.g. a high mmap and trim threshold) or an LD_PRELOADed
    allocator (jemalloc, tcmalloc) change that, so they are part of what a measurement depends on."""
    parts = []
    if os.environ.get("GLIBC_TUNABLES"):
        parts.append(f"GLIBC_TUNABLES={os.environ['GLIBC_TUNABLES']}")
    pre = [Path(x).name for x in os.environ.get("LD_PRELOAD", "").split() if "alloc" in Path(x).name]
    if pre:
        parts.append("LD_PRELOAD=" + ",".join(pre))
    return ";".join(parts)


def machine_key(device: str = "cpu") -> dict[str, Any]:
    """What a measurement depends on besides the layer: the processor, torch, threads, device."""
    key = {"cpu": _cpu_name(), "torch": torch.__version__, "threads": torch.get_num_threads(), "device": device}
    alloc = allocator_setting()
    if alloc:            # only when set, so the default key (and its cached file) stays what it was
        key["allocator"] = alloc
    if device == "cuda":
        key["gpu"] = torch.cuda.get_device_name()
    return key


def conv_spec(conv: nn.Conv2d) -> ConvSpec:
    """The numbers that decide a conv's speed (the weights do not)."""
    if isinstance(conv.padding, str):
        raise ReparamError("a conv with string padding cannot be described for the cost table")
    kh, kw = conv.kernel_size
    return [conv.in_channels, conv.out_channels, kh, kw, *conv.stride, *conv.padding, *conv.dilation, conv.groups,
            conv.bias is not None]


def option_of(module: nn.Module) -> Option:
    """The option (branches of convs) a layer or its decomposition is, for the cost table."""
    if isinstance(module, nn.Conv2d):
        return [[conv_spec(module)]]
    paths = getattr(module, "paths", None)
    if paths is not None:                                    # MultiPathConv
        return [option_of(p)[0] for p in paths]
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ReparamError(f"{type(module).__name__} has no convolution to time")
    return [[conv_spec(c) for c in convs]]


class _Sum(nn.Module):
    def __init__(self, branches: list[nn.Module]):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for b in self.branches[1:]:
            out = out + b(x)
        return out


def build_option(option: Option, device: torch.device, layout: str) -> nn.Module:
    """A module with random weights that computes what `option` costs."""
    branches = []
    for branch in option:
        convs = [nn.Conv2d(ci, co, (kh, kw), stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw), groups=g,
                           bias=bool(b)) for ci, co, kh, kw, sh, sw, ph, pw, dh, dw, g, b in branch]
        branches.append(nn.Sequential(*convs))
    mod = (branches[0] if len(branches) == 1 else _Sum(branches)).to(device).eval()
    return mod.to(memory_format=torch.channels_last) if layout == "channels_last" else mod


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: Sequence[Callable[[], Any]], rounds: int = 5, reps: int = 2, warmup: int = 1,
                     device: torch.device | str = "cpu") -> list[dict[str, list[float]]]:
    """Time each fn in alternating rounds (A, B, C, then B, C, A, ...), `reps` calls per round.

    Returns per fn {'cpu': [...], 'wall': [...]}: seconds per call in each round (thread CPU time and wall
    clock). Rotating the order keeps a fn from always running first (cold) or after a heavy one."""
    device = torch.device(device)
    out = [{"cpu": [], "wall": []} for _ in fns]
    with torch.no_grad():
        for fn in fns:
            for _ in range(warmup):
                fn()
        _sync(device)
        k = len(fns)
        for r in range(rounds):
            for j in range(k):
                i = (r + j) % k
                c0, w0 = time.thread_time(), time.perf_counter()
                for _ in range(reps):
                    fns[i]()
                _sync(device)
                out[i]["wall"].append((time.perf_counter() - w0) / reps)
                out[i]["cpu"].append((time.thread_time() - c0) / reps)
    return out


def medians(samples: list[dict[str, list[float]]], clock: str) -> list[float]:
    return [statistics.median(s[clock]) for s in samples]


def measure_options(options: Sequence[Option], batch: int, in_hw: tuple[int, int], *, layout: str = "nchw",
                    device: str = "cpu", clock: str = "auto", rounds: int = 7, min_round_s: float = 2e-3
                    ) -> list[float]:
    """Median seconds per forward pass of each option at (batch, c_in, *in_hw), measured in the same rounds;
    each round calls an option often enough to last about min_round_s (short calls are otherwise noise)."""
    dev = check_device(device)
    clock = resolve_clock(clock, device)
    mods = [build_option(o, dev, layout) for o in options]
    c_in = options[0][0][0][0]
    x = torch.rand((batch, c_in, *in_hw), device=dev)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    fns = [(lambda m=m: m(x)) for m in mods]
    probe = medians(time_interleaved(fns, rounds=1, reps=1, device=dev), "wall")
    reps = max(1, min(100, math.ceil(min_round_s / max(1e-7, min(probe)))))
    samples = time_interleaved(fns, rounds=rounds, reps=reps, warmup=0, device=dev)
    return medians(samples, clock)


Measure = Callable[..., list[float]]


class CostTable:
    """Seconds per forward pass of groups of conv options on this machine, measured once and cached.

    `times(options, batch, in_hw, layout)` returns one time per option. A group (a layer and its candidate
    splits) is measured together in interleaved rounds and stored as a whole: ratios inside a group always
    come from the same rounds, never from measurements taken at different machine loads. `path`: None = the
    user cache dir, False = memory only. `measure` replaces the timing (tests use a cost model)."""

    def __init__(self, path: str | Path | None | bool = None, *, device: str = "cpu", clock: str = "auto",
                 rounds: int = 7, min_round_s: float = 2e-3, measure: Measure | None = None):
        check_device(device)
        self.device = device
        self.clock = resolve_clock(clock, device)
        self.rounds, self.min_round_s = int(rounds), float(min_round_s)
        self.measure = measure or measure_options
        self.machine = machine_key(device)
        self.machine["clock"] = self.clock
        tag = hashlib.sha1(json.dumps(self.machine, sort_keys=True).encode()).hexdigest()[:12]
        if path is None:
            path = user_cache_dir() / f"trp-cost-{tag}.json"
        self.path = Path(path) if path is not False else None
        self.entries: dict[str, list[float]] = {}
        self.measured = 0                      # groups measured by this object (not read from the file)
        if self.path is not None and self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                if data.get("machine") == self.machine:
                    self.entries = {k: [float(t) for t in v] for k, v in data.get("entries", {}).items()}
            except (OSError, ValueError, AttributeError, TypeError):
                self.entries = {}            # a broken cache is re-measured, not an error

    @staticmethod
    def key(options: Sequence[Option], batch: int, in_hw: tuple[int, int], layout: str) -> str:
        return json.dumps([list(options), int(batch), [int(in_hw[0]), int(in_hw[1])], layout], separators=(",", ":"))

    def times(self, options: Sequence[Option], batch: int, in_hw: tuple[int, int], layout: str = "nchw"
              ) -> list[float]:
        check_layout(layout)
        key = self.key(options, batch, in_hw, layout)
        if key not in self.entries:
            got = self.measure(list(options), int(batch), tuple(in_hw), layout=layout, device=self.device,
                               clock=self.clock, rounds=self.rounds, min_round_s=self.min_round_s)
            self.entries[key] = [float(t) for t in got]
            self.measured += 1
            self.save()
        return list(self.entries[key])

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # merge with what another process may have written meanwhile, then replace atomically
        merged: dict[str, Any] = {}
        try:
            old = json.loads(self.path.read_text())
            if old.get("machine") == self.machine:
                merged = dict(old.get("entries", {}))
        except (OSError, ValueError, AttributeError):
            pass
        merged.update(self.entries)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"machine": self.machine, "entries": merged}))
        os.replace(tmp, self.path)


class _LiveBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the bytes of tensor storages created by ops while they are alive (views share a storage)."""

    def __init__(self):
        super().__init__()
        self.refs: dict[int, int] = {}
        self.size: dict[int, int] = {}
        self.live = self.peak = 0

    def _drop(self, key: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            self.live -= self.size.pop(key)
            del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                key = st.data_ptr()
                if key not in self.refs:
                    self.refs[key] = 0
                    self.size[key] = st.nbytes()
                    self.live += st.nbytes()
                    self.peak = max(self.peak, self.live)
                self.refs[key] += 1
                weakref.finalize(t, self._drop, key)
        return out


def peak_forward_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Largest number of bytes held at once by tensors a forward pass creates (activations and scratch
    tensors of torch ops; the input and the weights are not counted). On CUDA: the allocator's peak."""
    with torch.no_grad():
        if x.device.type == "cuda":
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            model(x)
            torch.cuda.synchronize()
            return int(torch.cuda.max_memory_allocated() - base)
        mode = _LiveBytes()
        with mode:
            model(x)
        return int(mode.peak)
