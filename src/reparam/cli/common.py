"""What every training command shares: arguments, data+model preparation, the run, the report."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# The argument types live in the validation layer; commands import them from here too.
from reparam.cli.validate import (  # noqa: F401, E402
    finite_float,
    float_list,
    fraction_0_1,
    fraction_open,
    fraction_upto_1,
    int_list,
    list_of,
    nonneg_float,
    nonneg_int,
    number,
    positive_float,
    positive_int,
    run_folder,
    seed_int,
    sparsity,
)
from reparam.core import distributed as rd
from reparam.core.errors import ReparamError
from reparam.core.fileformat import save_model
from reparam.core.outdir import write_json
from reparam.core.runtime import default_threads, set_threads
from reparam.train import Callback, TrainConfig, Trainer

MIN_VAL_FOR_BEST = 100   # fewer validation images make "best epoch" selection mostly noise


def add_select_on(p: argparse.ArgumentParser) -> None:
    p.add_argument("--select-on", default="best", choices=["best", "last"],
                   help="which epoch's weights a training run keeps: best = the best validation accuracy "
                        "(default), last = the final epoch")


def json_object(text: str, flag: str) -> dict[str, Any]:
    """A JSON object given on the command line (e.g. --model-options); one line naming the flag otherwise."""
    import json

    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        obj = None
    if not isinstance(obj, dict):
        raise ReparamError(f"{flag} {text!r} is not a JSON object")
    return obj


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads for torch (default: $REPARAM_THREADS or 1)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--device", default=None,
                   help="where training runs: cpu, cuda, cuda:N, or auto (cuda when available); default "
                        "$REPARAM_DEVICE or cpu. Data stays on the CPU and moves one batch at a time")
    add_distributed_args(p)


def add_distributed_args(p: argparse.ArgumentParser) -> None:
    """Options that matter only under `torchrun --nproc-per-node N -m reparam ...` (docs/distributed.md)."""
    g = p.add_argument_group("distributed (only under torchrun)")
    g.add_argument("--dist-timeout", type=positive_float, default=rd.DEFAULT_TIMEOUT_S,
                   help="seconds a process waits for the others in a collective before failing with a "
                        f"clear message (default {rd.DEFAULT_TIMEOUT_S:g})")
    g.add_argument("--dist-backend", default="auto", choices=list(rd.BACKENDS),
                   help="process-group backend; auto = gloo for CPU tensors, NCCL for CUDA tensors")
    g.add_argument("--sync-bn", action="store_true",
                   help="BatchNorm statistics over the global batch of all processes, so N processes train "
                        "like 1 (default: each process normalizes with its own share of the batch)")


def add_data_args(p: argparse.ArgumentParser, data: str = "digits") -> None:
    p.add_argument("--data", default=data, help=f"dataset name (default {data}); see docs for the list")
    p.add_argument("--data-root", default=None, help="folder holding the dataset files")
    p.add_argument("--train-subset", type=positive_float, default=None,
                   help="keep this many training examples (a count > 1) or this fraction (<= 1), stratified")
    p.add_argument("--val-fraction", type=fraction_open, default=0.1,
                   help="fraction of train held out for validation, in (0, 1)")


def add_train_args(p: argparse.ArgumentParser, *, model: str = "cnn", data: str = "digits", epochs: int = 20,
                   lr: float = 0.05, optimizer: str = "sgd", weight_decay: float = 5e-4,
                   batch_size: int = 128, out_required: bool = True, resume: bool = True) -> None:
    add_data_args(p, data)
    p.add_argument("--model", default=model, help=f"model name (default {model})")
    p.add_argument("--epochs", type=positive_int, default=epochs)
    p.add_argument("--batch-size", type=positive_int, default=batch_size)
    p.add_argument("--lr", type=positive_float, default=lr)
    p.add_argument("--optimizer", default=optimizer, choices=["sgd", "adam", "adamw"])
    p.add_argument("--schedule", default="cosine", choices=["constant", "step", "multistep", "cosine"])
    p.add_argument("--milestones", type=milestone_list, default=[],
                   help="increasing epochs for the multistep schedule, e.g. 30,60")
    p.add_argument("--weight-decay", type=nonneg_float, default=weight_decay)
    p.add_argument("--momentum", type=number(float, 0, 1, hi_open=True), default=0.9)
    p.add_argument("--warmup", type=nonneg_float, default=0.0, help="linear warmup epochs")
    p.add_argument("--augment", default=None, help="batch augmentation, e.g. crop4+flip, shift1 (default none)")
    p.add_argument("--seed", type=seed_int, default=0)
    add_select_on(p)
    p.add_argument("--out", required=out_required, help="output folder (written as OUT.partial, then renamed)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    if resume:
        add_resume_args(p)
    add_runtime_args(p)


def add_resume_args(p: argparse.ArgumentParser, what: str = "continue from OUT.partial's last completed epoch"
                    ) -> None:
    p.add_argument("--resume", action="store_true",
                   help=f"{what}; refused when the options differ from the run's")
    p.add_argument("--force", action="store_true",
                   help="with --resume: continue with the settings the run was started with")


def milestone_list(text: str) -> list[int]:
    values = list_of(positive_int, what="epochs")(text)
    if values != sorted(values):
        raise argparse.ArgumentTypeError(f"{text!r} is not increasing; give epochs like 30,60,80")
    return values


def setup_runtime(args: argparse.Namespace) -> None:
    set_threads(args.threads if getattr(args, "threads", None) else default_threads())
    setup_device(args)
    setup_distributed(args)


def setup_device(args: argparse.Namespace) -> None:
    """--device, else the default ($REPARAM_DEVICE or cpu), checked before any output folder is opened."""
    from reparam.train.config import default_device, set_default_device

    set_default_device(getattr(args, "device", None) or default_device())


def setup_distributed(args: argparse.Namespace) -> bool:
    """Join torchrun's process group when launched by it (no-op otherwise, and when already joined).

    Processes other than 0 stop printing to stdout (tables, progress), so a command's report appears once;
    their stderr (errors, warnings) stays.
    """
    from reparam.train.config import set_default_sync_bn

    joined = rd.init_distributed(getattr(args, "dist_timeout", None), getattr(args, "dist_backend", "auto"))
    set_default_sync_bn(bool(getattr(args, "sync_bn", False)))  # also for methods that build their own configs
    if joined and not rd.is_main() and not getattr(sys.stdout, "_reparam_silenced", False):
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
        sys.stdout._reparam_silenced = True
    return joined


def config_from_args(args: argparse.Namespace, **overrides: Any) -> TrainConfig:
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                      momentum=args.momentum, weight_decay=args.weight_decay, schedule=args.schedule,
                      milestones=tuple(args.milestones), warmup_epochs=args.warmup, seed=args.seed,
                      augment=args.augment, progress=not getattr(args, "no_progress", False))
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg.validate()


def load_splits(args: argparse.Namespace, **options: Any):
    from reparam.data import load_dataset

    subset = args.train_subset
    if subset is not None:
        if subset <= 0:
            raise ReparamError(f"--train-subset {subset} is not allowed; use a count > 1 or a fraction in (0, 1]")
        if subset > 1 and not float(subset).is_integer():
            raise ReparamError(f"--train-subset {subset} is not allowed; use a whole count > 1 or a fraction "
                               "in (0, 1]")
        subset = int(subset) if subset > 1 else subset  # 1 (or 1.0) means all of it
    if not 0 < args.val_fraction < 1:
        raise ReparamError(f"--val-fraction {args.val_fraction} is not allowed; must be in (0, 1)")
    return load_dataset(args.data, seed=args.seed, root=args.data_root, val_fraction=args.val_fraction,
                        train_subset=subset, **options)


def warn_small_val(n_val: int, select_on: str | None) -> None:
    """Best-epoch selection on a handful of validation images picks noise (measured: 14 images chose
    epochs 2-8 and lost ~9 points); say so once, on stderr."""
    if select_on == "best" and n_val < MIN_VAL_FOR_BEST:
        print(f"warning: the validation split has only {n_val} images, so --select-on best picks an epoch "
              f"mostly by chance; raise --val-fraction (>= {MIN_VAL_FOR_BEST} images) or pass --select-on last",
              file=sys.stderr)


def prepare(args: argparse.Namespace, model_options: dict[str, Any] | None = None):
    """Runtime settings, data and a freshly initialised model (seeded). Validates before anything is written."""
    setup_runtime(args)
    splits = load_splits(args)
    from reparam.models import build_for

    model = build_for(args.model, splits, args.seed, **(model_options or {}))
    args._model_spec = model.build_args
    return splits, model


def print_table(title: str, rows: list[tuple[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in rows:
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    Console().print(table)


def train_and_report(args: argparse.Namespace, *, method: str, model: torch.nn.Module, splits,
                     callbacks: list[Callback] | tuple = (), params_stored: int | None = None,
                     bytes_stored: int | None = None, extra: dict[str, Any] | None = None,
                     param_groups: list[dict] | None = None, optimizer: torch.optim.Optimizer | None = None,
                     config: TrainConfig | None = None,
                     finalize: Callable[[torch.nn.Module, Path], dict[str, Any]] | None = None,
                     save_model_file: bool = True, shown_out: str | Path | None = None) -> dict[str, Any]:
    """Train in OUT.partial, write metrics.json/log.jsonl/curves.png (+ model), rename to OUT, print a table.

    `finalize(model, work_dir)` runs after training (best model restored) and may write method files and
    return extra metrics (e.g. the decomposed model's accuracy). `shown_out`: the path printed as the output
    (a run inside another command's OUT.partial names where its files will be once that is renamed).
    """
    from reparam.metrics import count_dense_params
    from reparam.metrics.plots import training_curves

    config = config or config_from_args(args)
    spec = getattr(model, "build_args", {"name": args.model})
    warn_small_val(len(splits.val), getattr(args, "select_on", None))   # once the run starts, not on a refusal
    setup_distributed(args)
    main = rd.is_main()   # under torchrun only process 0 writes files and prints; the others get a scratch dir
    with run_folder(args, resume=bool(getattr(args, "resume", False))) as work:
        trainer = Trainer(model, splits, config, callbacks=callbacks, out_dir=work, param_groups=param_groups,
                          optimizer=optimizer)
        t0 = time.perf_counter()
        result = trainer.fit(resume=args.resume)
        params_total = count_dense_params(model)
        metrics: dict[str, Any] = {
            "method": method, "model": args.model, "dataset": args.data, "seed": args.seed,
            "test_acc": result.test_acc, "val_acc": result.val_acc, "best_epoch": result.best_epoch,
            "params_total": params_total,
            "params_stored": params_stored if params_stored is not None else params_total,
            "bytes_stored": bytes_stored if bytes_stored is not None else 4 * params_total,
            "train_seconds": result.train_seconds, "epochs": result.epochs,
            "threads": torch.get_num_threads(), "config": config.to_dict(), **rd.describe(),
        }
        metrics.update(extra or {})
        if finalize is not None:
            metrics.update(finalize(model, work) or {})
        if save_model_file and main:
            save_model(work / "model.safetensors", model, {
                "model_spec": spec, "method": method, "dataset": args.data, "seed": args.seed,
                "train_subset": getattr(args, "train_subset", None),
                "val_fraction": getattr(args, "val_fraction", None)})
        (work / "checkpoint.safetensors").unlink(missing_ok=True)
        if main:
            training_curves(result.history, work / "curves.png", title=f"{method} {args.model} on {args.data}")
        metrics["wall_seconds"] = time.perf_counter() - t0
        if main:
            write_json(work / "metrics.json", metrics)
    if not main:
        return metrics
    print_table(f"{method}: {args.model} on {args.data} (seed {args.seed})",
                [("test accuracy", metrics["test_acc"]), ("val accuracy", metrics["val_acc"]),
                 ("parameters (dense)", metrics["params_total"]), ("numbers stored", metrics["params_stored"]),
                 ("bytes stored", metrics["bytes_stored"]), ("train seconds", f"{metrics['train_seconds']:.1f}"),
                 ("epochs", metrics["epochs"]), ("output", str(shown_out or args.out))])
    return metrics
