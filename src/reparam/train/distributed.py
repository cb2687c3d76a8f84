"""What the trainer does differently when several processes train one model (launched by torchrun).

Data: every process draws the same seeded per-epoch permutation and the same global batches of
`batch_size` examples; process r takes its contiguous share of each global batch. Its loss is scaled by
world * n_r / n so that DistributedDataParallel's gradient average equals the gradient of the mean loss over
the global batch: N processes with the same global batch follow the 1-process run to floating-point
tolerance (exactly in distribution; BatchNorm needs --sync-bn for that, see docs/distributed.md).

Model: `trainer.model` stays the plain module (callbacks and methods see it); a DDP wrapper is used for the
training forward pass only. Evaluation is sharded and summed, so every process gets the same numbers and
selects the same best epoch. Checkpoints hold the unwrapped state, are written by process 0 and sent to
the others on resume, so a run can resume with a different number of processes.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from reparam.core import distributed as rd
from reparam.core.fileformat import atomic_write_bytes
from reparam.train.config import resolve_sync_bn

if TYPE_CHECKING:
    from reparam.train.trainer import Trainer


class DistributedRun:
    """Per-trainer distributed state; created only when more than one process runs."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.rank, self.world = rd.get_rank(), rd.get_world_size()
        if trainer.config.batch_size < self.world:
            from reparam.core.errors import ReparamError

            raise ReparamError(f"--batch-size {trainer.config.batch_size} is smaller than the {self.world} "
                               "processes; the global batch is split across processes, so use at least one "
                               "example per process")
        self.ddp: nn.Module | None = None
        self._sync_bn: list[tuple[nn.Module, str, nn.Module]] = []
        self._outside: list[torch.nn.Parameter] = []
        self._dummy = False
        self._sharded: list[nn.Module] = []

    @classmethod
    def maybe(cls, trainer: Trainer) -> DistributedRun | None:
        return cls(trainer) if rd.is_distributed() else None

    # -- model --------------------------------------------------------------------------------------
    def wrap(self) -> None:
        """After any checkpoint was restored: SyncBatchNorm (if asked), DDP, and parameters DDP cannot see."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        if self.ddp is not None:
            return
        model, cfg = self.trainer.model, self.trainer.config
        if resolve_sync_bn(cfg.sync_bn):
            from reparam.train.sync_bn import convert_sync_batchnorm

            self._sync_bn = convert_sync_batchnorm(model)
        # Modules that split their own work across processes (PRANC's basis rows) switch it on here.
        self._sharded = [m for m in model.modules() if callable(getattr(m, "distributed_start", None))]
        for m in self._sharded:
            m.distributed_start(self.rank, self.world)
        trainable = [p for p in model.parameters() if p.requires_grad]
        ids = {id(p) for p in model.parameters()}
        self._outside = [p for g in self.trainer.optimizer.param_groups for p in g["params"]
                         if p.requires_grad and id(p) not in ids]
        with rd.guard("broadcasting the initial weights"):
            for p in self._outside:
                rd.broadcast_(p.data)
            if trainable:
                # A conv with one input channel gets a gradient whose size-1 dimension has another stride
                # than its parameter; DDP compares strides literally and warns at every backward, harmlessly.
                warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
                cuda = next(iter(trainable)).is_cuda
                self.ddp = DDP(model, device_ids=[torch.cuda.current_device()] if cuda else None,
                               find_unused_parameters=cfg.find_unused_parameters,
                               static_graph=not cfg.find_unused_parameters)
            else:
                rd.broadcast_buffers(model)

    @property
    def forward_model(self):
        """The training forward pass: DDP's, with a placeholder batch kept out of --sync-bn statistics."""
        return self._forward

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        model = self.ddp if self.ddp is not None else self.trainer.model
        if not self._dummy:
            return model(x)
        from reparam.train.sync_bn import local_batch_excluded

        with local_batch_excluded():
            return model(x)

    def after_backward(self) -> None:
        """Average the gradients of optimizer parameters that live outside the model (DDP cannot see them)."""
        for p in self._outside:
            if p.grad is not None:
                rd.all_reduce_(p.grad, "averaging gradients").div_(self.world)

    def sync_buffers(self) -> None:
        """DDP sends process 0's buffers at each forward; after the last one, make them agree again."""
        rd.broadcast_buffers(self.trainer.model)

    def finish(self) -> None:
        for m in self._sharded:
            m.distributed_end()
        self._sharded = []
        if self._sync_bn:
            from reparam.train.sync_bn import revert_sync_batchnorm

            revert_sync_batchnorm(self._sync_bn)
            self._sync_bn = []
        self.ddp = None

    # -- data ---------------------------------------------------------------------------------------
    def local_slice(self, n: int) -> tuple[slice, float, bool]:
        """This process's share of a global batch of n: (slice, loss scale, is_dummy).

        A global batch smaller than the number of processes (only the epoch's last one can be) leaves some
        processes without examples; they run the first example with loss scale 0 so that every process
        takes part in the gradient all-reduce.
        """
        start, stop = rd.shard_range(n, self.rank, self.world)
        self._dummy = stop == start
        if stop > start:
            return slice(start, stop), self.world * (stop - start) / n, False
        return slice(0, 1), 0.0, True

    def reduce_stats(self, loss_sum: float, correct: int, seen: int) -> tuple[float, int, int]:
        t = torch.tensor([loss_sum, float(correct), float(seen)], dtype=torch.float64)
        rd.all_reduce_(t, "summing the training loss")
        return float(t[0]), int(round(float(t[1]))), int(round(float(t[2])))

    # -- evaluation -----------------------------------------------------------------------------------
    def eval_range(self, n: int) -> tuple[int, int]:
        return rd.shard_range(n, self.rank, self.world)

    def reduce_eval(self, correct: int, loss_sum: float) -> tuple[int, float]:
        t = torch.tensor([float(correct), loss_sum], dtype=torch.float64)
        rd.all_reduce_(t, "summing evaluation results")
        return int(round(float(t[0]))), float(t[1])

    # -- checkpoints ----------------------------------------------------------------------------------
    def fetch_checkpoint(self, path: Path | None) -> tuple[Path | None, bool]:
        """Process 0's checkpoint, readable by this process: (path, is_temporary). (None, False) if none."""
        data = None
        if self.rank == 0 and path is not None and path.exists():
            data = path.read_bytes()
        data = rd.broadcast_bytes(data, what="receiving the checkpoint from process 0")
        if not data:
            return None, False
        if self.rank == 0:
            return path, False
        fd, name = tempfile.mkstemp(suffix=".safetensors", prefix=f"reparam-ckpt-rank{self.rank}-")
        os.close(fd)
        atomic_write_bytes(name, data)
        return Path(name), True
