"""`reparam train`: plain (dense) training of any model on any dataset; the baseline of every method."""

from __future__ import annotations

import argparse

from reparam.cli.common import add_train_args, json_object, prepare, train_and_report
from reparam.core.errors import choose

# Methods that `reparam train --method` can run directly. Each method also has its own command group
# (reparam pranc ..., reparam trp ..., ...) with its specific options.
TRAIN_METHODS = {"dense": None}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (dense baseline) and write metrics.json, log.jsonl, plots",
                       description="Train a model and write OUT/metrics.json, OUT/log.jsonl, OUT/curves.png "
                                   "and OUT/model.safetensors.")
    p.add_argument("--method", default="dense", help="training method (default dense)")
    p.add_argument("--model-options", default="{}",
                   help="JSON object of model options, e.g. '{\"width\": 0.5}' (default none)")
    add_train_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from reparam.experiments.adapters.targets import register_adapter_targets

    choose(args.method, TRAIN_METHODS, "method")
    register_adapter_targets()   # shifted targets and class splits (e.g. digits-0to4), to pretrain adapter bases
    splits, model = prepare(args, json_object(args.model_options, "--model-options"))
    train_and_report(args, method=args.method, model=model, splits=splits)
    return 0
