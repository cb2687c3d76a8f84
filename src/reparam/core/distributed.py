"""torch.distributed plumbing: process-group setup from torchrun's environment, rank helpers, collectives
that fail with one clear line instead of hanging, and rank-0-only output folders.

Every function here is a no-op (or the single-process answer) when the process group is not initialized,
so code written once runs the same with and without `torchrun`.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import torch
import torch.distributed as dist

from reparam.core.errors import ReparamError

DEFAULT_TIMEOUT_S = 300.0
BACKENDS = ("auto", "gloo", "nccl")
T = TypeVar("T")

_timeout_s: float = DEFAULT_TIMEOUT_S


class DistributedFailure(ReparamError):
    """A peer process died or stopped answering; this process gives up (exit code 1, one line)."""

    exit_code = 1


def env_world_size() -> int:
    """WORLD_SIZE as set by torchrun (1 when not launched by it)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return get_rank() == 0


def timeout_seconds() -> float:
    return _timeout_s


def auto_backend() -> str:
    """gloo for CPU tensors; with CUDA present, NCCL for CUDA tensors and gloo for CPU ones."""
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def init_distributed(timeout_s: float | None = None, backend: str = "auto") -> bool:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR/PORT, LOCAL_RANK).

    Returns True when running with more than one process. Safe to call more than once. `timeout_s` bounds
    every collective (and the rendezvous): a peer that died or hangs makes the others fail after at most
    that long with a DistributedFailure instead of waiting forever.
    """
    global _timeout_s
    if timeout_s is not None:
        if not timeout_s > 0:
            raise ReparamError(f"--dist-timeout {timeout_s} is not allowed; must be > 0 seconds")
        _timeout_s = float(timeout_s)
    if backend not in BACKENDS:
        raise ReparamError(f"unknown distributed backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if dist.is_available() and dist.is_initialized():
        return is_distributed()
    if env_world_size() <= 1:
        return False
    if not dist.is_available():
        raise ReparamError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise ReparamError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {var} is not set; launch with "
                               "torchrun --nproc-per-node N -m reparam ...")
    chosen = auto_backend() if backend == "auto" else backend
    if "nccl" in chosen and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    try:
        dist.init_process_group(chosen, timeout=datetime.timedelta(seconds=_timeout_s))
    except (RuntimeError, ValueError, dist.DistError) as e:
        raise DistributedFailure(
            f"process {os.environ['RANK']} of {os.environ['WORLD_SIZE']} could not join the process group at "
            f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within {_timeout_s:g} s (--dist-timeout); "
            f"were all processes started? [{_short(str(e))}]") from None
    return is_distributed()


def exit_process(code: int, leave_group: bool = True) -> NoReturn:
    """End a torchrun process without the interpreter's teardown: Gloo's threads may still hold objects with
    Python references, and finalizing them while the interpreter shuts down sometimes aborts (exit -6 after
    the run finished or after our one-line error; pytorch#190489). Every file is written atomically before.

    leave_group=False after a failure: once a peer is gone the group cannot be left cleanly.
    """
    if leave_group:
        try:
            shutdown()
        except (RuntimeError, ValueError, dist.DistError):
            pass   # leaving anyway
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def shutdown() -> None:
    """Leave the process group (after a failure the group is simply abandoned; the process exits)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# Errors the c10d backends raise when a peer is gone or silent. Anything else is a real bug and passes.
_PEER_LOST = re.compile(r"timed out|timeout|connection (reset|closed|refused)|broken pipe|peer|"
                        r"nccl (error|communicator was aborted)|socket|recv|send", re.IGNORECASE)


def _short(msg: str) -> str:
    msg = re.sub(r"\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", msg.strip().splitlines()[0] if msg.strip() else msg)
    return msg.split(". This is typically")[0].strip()[:200]


@contextmanager
def guard(what: str) -> Iterator[None]:
    """Turn a lost peer (closed connection, timeout) during `what` into a one-line DistributedFailure."""
    try:
        yield
    except DistributedFailure:
        raise
    except (RuntimeError, dist.DistError) as e:
        if not (dist.is_available() and dist.is_initialized()) or not _PEER_LOST.search(str(e)):
            raise
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else "?"
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else "?"
        raise DistributedFailure(
            f"process {rank} of {world} gave up while {what}: another process exited or did not answer "
            f"within the {_timeout_s:g} s collective timeout (--dist-timeout); see that process's output "
            f"for the cause [{_short(str(e))}]") from None


# -- small collectives (all no-ops in one process) -----------------------------------------------------

def barrier(what: str = "waiting for the other processes") -> None:
    if is_distributed():
        with guard(what):
            dist.barrier()


def all_reduce_(t: torch.Tensor, what: str = "summing a value over processes") -> torch.Tensor:
    """Sum `t` over processes in place and return it."""
    if is_distributed():
        with guard(what):
            dist.all_reduce(t)
    return t


def broadcast_(t: torch.Tensor, src: int = 0, what: str = "receiving from process 0") -> torch.Tensor:
    if is_distributed():
        with guard(what):
            dist.broadcast(t, src)
    return t


def broadcast_bytes(data: bytes | None, src: int = 0, what: str = "receiving data from process 0") -> bytes:
    """Send bytes from `src` to every process (length first, then a uint8 tensor; no pickling)."""
    if not is_distributed():
        return data or b""
    n = torch.tensor([len(data) if get_rank() == src and data is not None else 0], dtype=torch.int64)
    broadcast_(n, src, what)
    buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8) if get_rank() == src and n.item()
           else torch.empty(int(n.item()), dtype=torch.uint8))
    if n.item():
        broadcast_(buf, src, what)
    return buf.numpy().tobytes()


def broadcast_text(text: str | None, src: int = 0, what: str = "receiving data from process 0") -> str:
    return broadcast_bytes(text.encode() if text is not None else None, src, what).decode()


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Make every process hold process `src`'s buffers (e.g. BatchNorm running statistics)."""
    if not is_distributed():
        return
    for b in module.buffers():
        if b.numel():
            broadcast_(b.data, src, "synchronising buffers")


def run_on_main(fn: Callable[[], T], what: str) -> T | None:
    """Run fn on process 0 only; if it raises ReparamError, every process raises the same error.

    The other processes return None. Used for file-system steps (creating the output folder) that must
    happen once and whose failure must stop everyone, not leave them waiting.
    """
    if not is_distributed():
        return fn()
    result, error = None, ""
    if is_main():
        try:
            result = fn()
        except ReparamError as e:
            error = str(e) or type(e).__name__
    error = broadcast_text(error if is_main() else None, what=what)
    if error:
        raise ReparamError(error)
    return result


@contextmanager
def distributed_output_dir(out: str | Path, overwrite: bool = False, resume: bool = False) -> Iterator[Path]:
    """`reparam.core.outdir.output_dir` for several processes.

    Process 0 owns OUT.partial (creates it, renames it to OUT at the end, after every process finished);
    the others get a private scratch folder that is deleted afterwards, so method code that writes into
    the yielded folder needs no rank checks and never writes twice.
    """
    from reparam.core import outdir

    output_dir = outdir.local_output_dir
    if not is_distributed():
        with output_dir(out, overwrite=overwrite, resume=resume) as work:
            yield work
        return
    if is_main():
        ctx = output_dir(out, overwrite=overwrite, resume=resume)
        work = run_on_main(ctx.__enter__, "creating the output folder")
        try:
            yield work
            barrier("waiting for every process to finish before renaming the output folder")
        except BaseException as e:
            ctx.__exit__(type(e), e, e.__traceback__)
            raise
        ctx.__exit__(None, None, None)
    else:
        run_on_main(lambda: None, "creating the output folder")
        scratch = Path(tempfile.mkdtemp(prefix=f"reparam-rank{get_rank()}-"))
        try:
            yield scratch
            barrier("waiting for every process to finish before renaming the output folder")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    barrier("waiting for process 0 to rename the output folder")


def shard_range(n: int, rank: int | None = None, world: int | None = None) -> tuple[int, int]:
    """Contiguous, balanced [start, stop) of n items for `rank` (sizes differ by at most one)."""
    rank = get_rank() if rank is None else rank
    world = get_world_size() if world is None else world
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def describe() -> dict[str, Any]:
    """What to record in metrics.json: world size and backend."""
    if not is_distributed():
        return {"world_size": 1}
    return {"world_size": get_world_size(), "backend": str(dist.get_backend())}
