"""The one training loop. Methods add behaviour through callbacks, never by copying this loop.

Determinism: each epoch's shuffling, augmentation and global RNG are seeded from (seed, epoch), so a run
resumed from the checkpoint of its last completed epoch ends exactly like an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from reparam.core import distributed as rd
from reparam.core.errors import ReparamError, TrainingDiverged
from reparam.core.fileformat import atomic_write_text
from reparam.core.runtime import derive_seed
from reparam.train.callbacks import Callback
from reparam.train.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from reparam.train.config import TrainConfig, resolve_device, resolve_select_on
from reparam.train.distributed import DistributedRun
from reparam.train.hooks import Hook, as_callback
from reparam.train.optim import default_param_groups, make_optimizer, make_scheduler


@dataclass
class TrainResult:
    val_acc: float
    test_acc: float
    best_epoch: int
    epochs: int
    train_seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[info]}"), disable=not enabled,
                    transient=True)


class Trainer:
    def __init__(self, model: torch.nn.Module, data, config: TrainConfig | None = None,
                 callbacks: list[Callback | Hook] | tuple = (), out_dir: str | Path | None = None,
                 param_groups: list[dict] | None = None, optimizer: torch.optim.Optimizer | None = None,
                 loss_fn=None):
        self.config = (config or TrainConfig()).validate()
        # Training runs on config.device; data stays on the CPU and moves one batch at a time, and fit()
        # hands the model back on the device it came on (the methods' post-processing runs on the CPU).
        self.device = resolve_device(self.config.device)
        self._home = next(iter(model.parameters()), torch.empty(0)).device
        if self._home != self.device:
            model.to(self.device)
        self.model = model
        self.batch_rows: tuple[slice, int] | None = None   # set per training step, see _train_epoch
        self.data = data
        self.callbacks = [as_callback(c) for c in callbacks]   # a method's Hook runs through an adapter
        self.out_dir = Path(out_dir) if out_dir is not None else None
        for split in ("train", "val", "test"):
            if len(getattr(data, split)) == 0:
                raise ReparamError(f"the {split} split of dataset {getattr(data, 'name', '?')!r} is empty")
        groups = param_groups if param_groups is not None else default_param_groups(
            model, self.config.weight_decay)
        self.optimizer = optimizer or make_optimizer(groups, self.config)
        n = len(data.train)
        self.steps_per_epoch = math.ceil(n / self.config.batch_size)
        self.scheduler = make_scheduler(self.optimizer, self.steps_per_epoch, self.config)
        self.loss_fn = loss_fn or (lambda logits, y: F.cross_entropy(
            logits, y, label_smoothing=self.config.label_smoothing))
        self.augment = None
        if self.config.augment:
            from reparam.data import make_augment

            self.augment = make_augment(self.config.augment)
        self.global_step = 0
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_val = -1.0
        self.best_epoch = 0
        self.train_seconds = 0.0
        self.stop_training = False
        # Several processes (torchrun): sharded batches, DDP forward, rank-0 files. None in one process.
        self.dist = DistributedRun.maybe(self)

    # -- evaluation ---------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: str = "val", model: torch.nn.Module | None = None) -> dict[str, float]:
        model = model or self.model
        x_all, y_all = getattr(self.data, split).tensors
        n_total = len(y_all)
        if self.dist is not None:   # each process evaluates its share; the sums are added up
            a, b = self.dist.eval_range(n_total)
            x_all, y_all = x_all[a:b], y_all[a:b]
        was_training = model.training
        model.eval()
        correct, loss_sum = 0, 0.0
        for i in range(0, len(y_all), self.config.eval_batch_size):
            x, y = x_all[i:i + self.config.eval_batch_size], y_all[i:i + self.config.eval_batch_size]
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
        model.train(was_training)
        if self.dist is not None:
            correct, loss_sum = self.dist.reduce_eval(correct, loss_sum)
        n = max(1, n_total)
        return {"acc": correct / n, "loss": loss_sum / n}

    # -- checkpoints --------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path | None:
        return self.out_dir / CHECKPOINT if self.out_dir is not None else None

    def _save(self) -> None:
        if self.checkpoint_path is None or not self.config.checkpoint or not rd.is_main():
            return
        info = {"epoch": self.epoch, "global_step": self.global_step, "best_val": self.best_val,
                "best_epoch": self.best_epoch, "history": self.history, "train_seconds": self.train_seconds,
                "config": self.config.to_dict(), "callbacks": [cb.state_dict() for cb in self.callbacks]}
        save_checkpoint(self.checkpoint_path, self.model, self.best_state, self.optimizer, self.scheduler,
                        info)

    def _try_resume(self) -> None:
        path, temporary = self.checkpoint_path, False
        if self.dist is not None:   # process 0's checkpoint, whatever the others' out_dir holds
            path, temporary = self.dist.fetch_checkpoint(path)
        if path is None or not path.exists():
            return
        try:
            self.best_state, h = load_checkpoint(path, self.model, self.optimizer, self.scheduler,
                                                 check=self._check_resume_config)
        finally:
            if temporary:
                path.unlink(missing_ok=True)
        self.epoch, self.global_step = h["epoch"], h["global_step"]
        self.best_val, self.best_epoch = h["best_val"], h["best_epoch"]
        self.history, self.train_seconds = h["history"], h["train_seconds"]
        for cb, state in zip(self.callbacks, h.get("callbacks", [])):
            cb.load_state_dict(state)

    # Settings that do not change what is computed: a run may resume on another device or process count.
    RESUME_FREE = ("progress", "checkpoint", "device", "sync_bn", "find_unused_parameters", "eval_batch_size")

    def _check_resume_config(self, header: dict[str, Any]) -> None:
        """A checkpoint continues only the run it came from: refuse one written with other settings."""
        stored = header.get("config")
        if not isinstance(stored, dict):
            raise ReparamError(f"checkpoint {self.checkpoint_path} records no training settings; start a new run")
        now = json.loads(json.dumps(self.config.to_dict(), default=str))
        stored = json.loads(json.dumps(stored, default=str))
        diff = [k for k in sorted(set(now) | set(stored)) if k not in self.RESUME_FREE
                and stored.get(k) != now.get(k)]
        if diff:
            listed = ", ".join(f"{k} {stored.get(k)!r} (now {now.get(k)!r})" for k in diff)
            raise ReparamError(f"cannot resume from {self.checkpoint_path}: it was written with other training "
                               f"settings: {listed}; resume with the same settings or start a new run")

    def _write_log(self) -> None:
        if self.out_dir is not None and rd.is_main():
            atomic_write_text(self.out_dir / "log.jsonl", "".join(json.dumps(r) + "\n" for r in self.history))

    # -- training -----------------------------------------------------------------------------------
    def _train_epoch(self, progress, task) -> dict[str, float]:
        cfg = self.config
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, self.epoch))
        torch.manual_seed(derive_seed(cfg.seed, self.epoch, 1))
        x_all, y_all = self.data.train.tensors
        order = torch.randperm(len(y_all), generator=g)
        self.model.train()
        forward = self.dist.forward_model if self.dist is not None else self.model
        loss_sum, correct, seen = 0.0, 0, 0
        for i in range(0, len(order), cfg.batch_size):
            if cfg.max_steps is not None and self.global_step >= cfg.max_steps:
                self.stop_training = True      # a partial last epoch: the step budget is spent
                break
            idx = order[i:i + cfg.batch_size]
            x, y = x_all[idx], y_all[idx]
            if self.augment is not None:
                x = self.augment(x, g)
            # Which rows of the global batch this process holds: callbacks that draw random numbers per
            # example (PGD's random start, noise) draw for the global batch and keep these rows, so N
            # processes see the numbers 1 process would.
            self.batch_rows = (slice(0, len(y)), len(y))
            if self.dist is not None:   # the global batch was drawn (and augmented) identically everywhere
                part, scale, dummy = self.dist.local_slice(len(y))
                self.batch_rows = (part, len(y))
                x, y = x[part], y[part]
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            for cb in self.callbacks:
                x, y = cb.before_forward(self, x, y)
            logits = forward(x)
            loss = self.loss_fn(logits, y)
            for cb in self.callbacks:
                extra = cb.extra_loss(self, logits, x, y)
                if extra is not None:
                    loss = loss + extra
            batch_loss, batch_correct, batch_n = (loss.item() * len(y),
                                                  (logits.detach().argmax(1) == y).sum().item(), len(y))
            if self.dist is not None:   # global numbers, so every process agrees on divergence too
                batch_loss, batch_correct, batch_n = self.dist.reduce_stats(
                    *((0.0, 0, 0) if dummy else (batch_loss, batch_correct, batch_n)))
            if not math.isfinite(batch_loss):
                where = (f"; last good checkpoint: {self.checkpoint_path} (epoch {self.epoch})"
                         if self.checkpoint_path is not None and self.checkpoint_path.exists() else "")
                raise TrainingDiverged(f"loss became {batch_loss / max(1, batch_n)} at epoch {self.epoch + 1}, "
                                       f"step {self.global_step + 1}; try a lower learning rate{where}")
            self.optimizer.zero_grad(set_to_none=True)
            if self.dist is not None:
                # DDP averages gradients over processes; the scale makes that the global batch's mean.
                with rd.guard("averaging gradients"):
                    (loss * scale).backward()
                self.dist.after_backward()
            else:
                loss.backward()
            for cb in self.callbacks:
                cb.after_backward(self)
            self.optimizer.step()
            self.scheduler.step()
            self.global_step += 1
            for cb in self.callbacks:
                cb.after_step(self)
            loss_sum += batch_loss
            correct += batch_correct
            seen += batch_n
            progress.update(task, advance=1, info=f"loss {loss_sum / seen:.4f}")
        if cfg.max_steps is not None and self.global_step >= cfg.max_steps:
            self.stop_training = True
        return {"train_loss": loss_sum / max(1, seen), "train_acc": correct / max(1, seen)}

    def fit(self, resume: bool = True) -> TrainResult:
        # Under torchrun a lost peer (DDP's own collectives included) ends in one clear line, not a hang.
        try:
            with rd.guard("training"):
                return self._fit(resume)
        finally:
            if self.dist is not None:
                self.dist.finish()

    def _fit(self, resume: bool) -> TrainResult:
        cfg = self.config
        if resume:
            self._try_resume()
        if cfg.max_steps is not None and self.global_step >= cfg.max_steps:
            self.stop_training = True          # resumed after the step budget was spent
        if self.dist is not None:
            self.dist.wrap()
        for cb in self.callbacks:
            cb.on_train_start(self)
        with _progress(cfg.progress and rd.is_main()) as progress:
            while self.epoch < cfg.epochs and not self.stop_training:
                task = progress.add_task(f"epoch {self.epoch + 1}/{cfg.epochs}", total=self.steps_per_epoch,
                                         info="")
                t0 = time.perf_counter()
                record: dict[str, Any] = {"epoch": self.epoch + 1}
                record.update(self._train_epoch(progress, task))
                seconds = time.perf_counter() - t0
                self.train_seconds += seconds
                if self.dist is not None:
                    self.dist.sync_buffers()
                val = self.evaluate("val")
                record.update(val_acc=val["acc"], val_loss=val["loss"], lr=self.optimizer.param_groups[0]["lr"],
                              seconds=seconds)
                self.epoch += 1
                if resolve_select_on(cfg.select_on) == "last" or val["acc"] > self.best_val:
                    self.best_val, self.best_epoch = val["acc"], self.epoch
                    self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                for cb in self.callbacks:
                    cb.on_epoch_end(self, self.epoch, record)
                self.history.append(record)
                progress.remove_task(task)
                if cfg.progress and rd.is_main():
                    progress.console.print(
                        f"epoch {self.epoch:>3}/{cfg.epochs}  loss {record['train_loss']:.4f}  "
                        f"train {record['train_acc']:.4f}  val {val['acc']:.4f}  {seconds:.1f}s")
                self._write_log()
                self._save()
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        test = self.evaluate("test")
        if self.dist is not None:
            self.dist.finish()
        for cb in self.callbacks:
            cb.on_train_end(self)
        if self._home != self.device:
            self.model.to(self._home)
        return TrainResult(val_acc=self.best_val, test_acc=test["acc"], best_epoch=self.best_epoch,
                           epochs=self.epoch, train_seconds=self.train_seconds, history=self.history)
