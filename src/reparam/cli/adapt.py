"""`reparam adapt train|eval|sweep`: fine-tune a `reparam train` model with a few hundred numbers (NOLA, PRANC's
delta mode) or a baseline, rebuild an adapter from its file, and plot accuracy against stored bytes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from reparam.core.errors import ReparamError


def register(subparsers) -> None:
    from reparam.cli.common import (
        add_data_args,
        add_runtime_args,
        fraction_open,
        number,
        positive_float,
        positive_int,
        seed_int,
    )
    from reparam.core.adapter import COEF_DTYPES

    p = subparsers.add_parser("adapt", help="adapters: fine-tune a pretrained model with NOLA, PRANC (delta) or "
                                            "a baseline")
    sub = p.add_subparsers(dest="adapt_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    from reparam.experiments.adapters.runs import METHODS

    t = sub.add_parser("train", help="adapt the model of a `reparam train` folder to a dataset; writes "
                                     "OUT/adapter.safetensors and metrics.json")
    t.add_argument("--from", dest="src", required=True, metavar="RUN",
                   help="a `reparam train` output folder: its model.safetensors is the base")
    t.add_argument("--method", required=True, choices=list(METHODS))
    t.add_argument("--k", type=positive_int, default=200,
                   help="nola, pranc: coefficients stored in all (default 200)")
    t.add_argument("--rank", type=positive_int, default=None,
                   help="nola, lora: rank of the delta (default 8 for nola, 4 for lora)")
    t.add_argument("--sharing", default=None, choices=["per-layer", "shared"],
                   help="nola: one alpha and beta for all tensors (shared, the default here) or per tensor")
    t.add_argument("--quant-bits", type=number(int, 2, 8), default=None,
                   help="nola: quantization-aware training at 2..8 bits")
    t.add_argument("--layers", default=None, metavar="REGEX",
                   help="nola, pranc, lora: only the layers whose name matches (e.g. self_attn)")
    t.add_argument("--coef-dtype", default="float32", choices=list(COEF_DTYPES),
                   help="nola, pranc: coefficients in the file: float32 (default), float16, int8 ... int2")
    add_data_args(t, None)
    t.add_argument("--data-seed", type=seed_int, default=None,
                   help="data split seed (default: the base run's, so the base never saw the test images)")
    t.add_argument("--epochs", type=positive_int, default=10)
    t.add_argument("--lr", type=positive_float, default=None, help="Adam learning rate (default per method)")
    t.add_argument("--batch-size", type=positive_int, default=32)
    t.add_argument("--seed", type=seed_int, default=0, help="adaptation seed (generator seed, init, batch order)")
    t.add_argument("--out", required=True)
    t.add_argument("--overwrite", action="store_true")
    add_runtime_args(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="rebuild base + adapter from their files and print the test accuracy")
    e.add_argument("adapter", help="an adapter.safetensors (or the folder holding it)")
    e.add_argument("--base", required=True, metavar="RUN", help="the `reparam train` folder of the base")
    add_data_args(e, None)
    e.add_argument("--data-seed", type=seed_int, default=None, help="data split seed (default: the adapter's)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    add_runtime_args(e)
    e.set_defaults(func=cmd_eval)

    s = sub.add_parser("sweep", help="accuracy against stored bytes for every method: results.json, table.md "
                                     "and one plot per target")
    s.add_argument("--from", dest="src", required=True, metavar="RUN")
    s.add_argument("--data", required=True, help="comma-separated target datasets")
    s.add_argument("--data-root", default=None)
    s.add_argument("--train-subset", type=positive_float, default=None,
                   help="keep this many training examples (a count > 1) or this fraction (<= 1), stratified")
    s.add_argument("--val-fraction", type=fraction_open, default=0.1)
    s.add_argument("--data-seed", type=seed_int, default=None)
    s.add_argument("--methods", default=None,
                   help="comma-separated METHOD[:SIZE] (SIZE = k for nola/pranc, the rank for lora/peft-*); "
                        "default: the standard set (see reparam.experiments.adapters.sweep.DEFAULT_SPECS)")
    s.add_argument("--seeds", type=positive_int, default=3)
    s.add_argument("--seed", type=seed_int, default=0, help="first adaptation seed")
    s.add_argument("--epochs", type=positive_int, default=10)
    s.add_argument("--batch-size", type=positive_int, default=32)
    s.add_argument("--rank", type=positive_int, default=None, help="nola's rank (default 8)")
    s.add_argument("--layers", default=None, metavar="REGEX",
                   help="nola, pranc, lora: only the layers whose name matches")
    s.add_argument("--out", required=True)
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--resume", action="store_true", help="keep the finished runs of OUT.partial")
    add_runtime_args(s)
    s.set_defaults(func=cmd_sweep)


def _splits(args, data_seed: int):
    from reparam.cli.common import load_splits
    from reparam.experiments.adapters.targets import register_adapter_targets

    register_adapter_targets()
    ns = argparse.Namespace(**{**vars(args), "seed": data_seed})
    return load_splits(ns)


def cmd_train(args) -> int:
    from reparam.cli.common import print_table, setup_runtime
    from reparam.core.outdir import local_output_dir, write_json
    from reparam.core.runtime import seed_everything
    from reparam.experiments.adapters import runs
    from reparam.metrics import count_dense_params
    from reparam.metrics.plots import training_curves

    setup_runtime(args)
    if args.data is None:
        raise ReparamError("--data is required: the target dataset to adapt to")
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ReparamError(f"output folder {out} already exists; choose another --out or pass --overwrite")
    coef_dtype = runs.check_method(args.method, args.coef_dtype)
    model, base_header = runs.load_base(args.src)
    data_seed = int(base_header.get("seed", 0)) if args.data_seed is None else args.data_seed
    splits = _splits(args, data_seed)
    runs.check_target(model, splits, args.data)
    base_acc = _accuracy(model, splits)
    params_total = count_dense_params(model)
    seed_everything(args.seed)
    # every check is done by here: nothing has been written
    prep = runs.prepare(args.method, model, k=args.k, rank=args.rank, seed=args.seed, sharing=args.sharing,
                        quant_bits=args.quant_bits, layers=args.layers)
    extra = {"dataset": args.data, "data_seed": data_seed, "base_run": str(args.src),
             "base_model": base_header.get("model_spec", {}).get("name"), "adapt_seed": args.seed}
    with local_output_dir(out, overwrite=args.overwrite) as work:
        m = runs.train_prepared(prep, splits, epochs=args.epochs, lr=args.lr, seed=args.seed,
                                batch_size=args.batch_size, coef_dtype=coef_dtype,
                                progress=not args.no_progress, out_dir=work, extra=extra)
        history = m.pop("history")
        m["test_acc_from_file"] = runs.evaluate_adapter(work / "adapter.safetensors", args.src, splits)
        m.update(model=base_header.get("model_spec", {}).get("name"), dataset=args.data, seed=args.seed,
                 data_seed=data_seed, base=str(args.src), base_test_acc=base_acc, params_total=params_total,
                 k=args.k if args.method in ("nola", "pranc") else None,
                 rank=prep.config.get("rank"), argv=getattr(args, "argv", None))
        training_curves(history, work / "curves.png", title=f"adapt {args.method} on {args.data}")
        write_json(work / "metrics.json", m)
    print_table(f"adapt {args.method}: {m['model']} -> {args.data} (seed {args.seed})",
                [("test accuracy", m["test_acc"]), ("test accuracy from the file", m["test_acc_from_file"]),
                 ("base accuracy (before)", base_acc), ("val accuracy", m["val_acc"]),
                 ("numbers stored", m["params_stored"]), ("bytes stored", m["bytes_stored"]),
                 ("adapter file bytes", m["file_bytes"]), ("train seconds", f"{m['train_seconds']:.1f}"),
                 ("output", str(out))])
    return 0


def _accuracy(model, splits) -> float:
    from reparam.metrics.evaluation import accuracy

    return accuracy(model, splits.test)


def cmd_eval(args) -> int:
    from reparam.cli.common import setup_runtime
    from reparam.cli.validate import check_input
    from reparam.core.adapter import read_adapter
    from reparam.experiments.adapters import runs

    setup_runtime(args)
    check_input(args.base, option="--base", kind="folder")
    path = Path(args.adapter)
    if path.is_dir():
        path = path / "adapter.safetensors"
    check_input(path, option="ADAPTER", kind="file")
    runs.adapter_method(path)
    _, header = read_adapter(path)
    extra = header.get("extra") or {}
    if args.data is None:
        args.data = extra.get("dataset")
        if args.data is None:
            raise ReparamError("--data is required: the adapter does not name its dataset")
    data_seed = args.data_seed if args.data_seed is not None else int(extra.get("data_seed", 0))
    splits = _splits(args, data_seed)
    acc = runs.evaluate_adapter(path, args.base, splits)
    counts = header.get("counts", {})
    if args.json:
        print(json.dumps({"test_acc": acc, "adapter": str(path), "base": str(args.base), "dataset": args.data,
                          "data_seed": data_seed, "method": header["method"],
                          "stored_numbers": counts.get("stored_numbers"), "payload_bytes": counts.get("payload_bytes"),
                          "file_bytes": path.stat().st_size}))
    else:
        print(f"test accuracy {acc:.4f} ({len(splits.test)} examples of {args.data}; {header['method']} adapter, "
              f"{counts.get('stored_numbers')} numbers, {path.stat().st_size} bytes)")
    return 0


def cmd_sweep(args) -> int:
    from reparam.cli.common import setup_runtime
    from reparam.cli.validate import names
    from reparam.experiments.adapters import sweep

    setup_runtime(args)
    specs = sweep.parse_specs(args.methods)
    datasets = names(args.data, None, "--data", "dataset")
    sweep.run_sweep(args.src, datasets, specs, seeds=args.seeds, first_seed=args.seed, epochs=args.epochs,
                    batch_size=args.batch_size, nola_rank=args.rank, out=args.out, data_root=args.data_root,
                    train_subset=args.train_subset, val_fraction=args.val_fraction, data_seed=args.data_seed,
                    overwrite=args.overwrite, resume=args.resume, progress=not args.no_progress,
                    layers=args.layers)
    return 0
