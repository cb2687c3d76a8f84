"""`reparam trp train` and `reparam trp decompose`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from reparam.cli.common import (
    add_data_args,
    add_runtime_args,
    add_select_on,
    add_train_args,
    config_from_args,
    fraction_open,
    list_of,
    load_splits,
    nonneg_float,
    nonneg_int,
    number,
    positive_float,
    positive_int,
    prepare,
    print_table,
    seed_int,
    setup_runtime,
    train_and_report,
)
from reparam.core.errors import ReparamError
from reparam.core.outdir import output_dir, write_json
from reparam.trp.config import COUNTERS, NUCLEAR_RANKS, NUCLEAR_WHEN, Config
from reparam.trp.rank import RankRule
from reparam.trp.reshape import canonical_scheme

MODES = ("trp", "nuclear", "none")


def _add_decompose_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--all-strides", action="store_true",
                   help="also decompose strided convs (default: stride-1 convs only, as the official code)")
    p.add_argument("--include-stem", action="store_true", help="treat the first conv too (default: skip it)")
    p.add_argument("--latency-batches", type=list_of(positive_int, allow_empty=True, what="batch sizes"),
                   default=[1, 128],
                   help="batch sizes for CPU latency (default 1,128; empty string to skip)")
    p.add_argument("--latency-repeats", type=positive_int, default=21)
    p.add_argument("--latency-size", type=number(int, 1, 4096), default=None,
                   help="square input size for latency (default: the dataset's; FLOPs use the dataset's)")


def register(sub: argparse._SubParsersAction) -> None:
    trp = sub.add_parser("trp", help="Trained Rank Pruning: low-rank training, then split convs in two",
                         description="Trained Rank Pruning (Xu et al. 2019).")
    tsub = trp.add_subparsers(dest="trp_command", metavar="COMMAND")

    p = tsub.add_parser("train", help="train with TRP, decompose (no fine-tune), measure speed-up",
                        description="Train with periodic truncated-SVD projection (TRP), then split every target "
                                    "conv into two and report accuracy before/after, FLOPs and latency speed-up.")
    add_train_args(p, model="resnet20", data="digits", epochs=60, lr=0.05, weight_decay=1e-4, batch_size=64)
    p.set_defaults(schedule="multistep", augment="shift1")
    p.add_argument("--mode", default="trp", choices=MODES,
                   help="trp (projection, + nuclear if --nuclear > 0), nuclear (nuclear-norm only), "
                        "none (plain training: the post-hoc baseline's starting point)")
    p.add_argument("--scheme", default="channel", help="channel (NC, TRP1), spatial (VH, TRP2) or nd")
    p.add_argument("--energy", type=fraction_open, default=0.05,
                   help="e of eq. (3): fraction of energy a projection may discard (official code: 0.1)")
    p.add_argument("--period", type=positive_int, default=1, help="m: project every m optimizer steps (default 1)")
    p.add_argument("--nuclear", type=nonneg_float, default=0.0, help="nuclear-norm weight lambda (code: 3e-4; 0 = off)")
    p.add_argument("--nuclear-rank", default="full", choices=NUCLEAR_RANKS,
                   help="sub-gradient rank: full (paper) or energy (official code)")
    p.add_argument("--nuclear-when", default="every", choices=NUCLEAR_WHEN,
                   help="apply the sub-gradient every step (paper) or on projection steps (official code)")
    p.add_argument("--counter", default="global", choices=COUNTERS,
                   help="step counter for the period: global (default) or per-epoch batch index (code)")
    p.add_argument("--decompose-rule", default=None,
                   help="rank rule of the final decomposition, e.g. value:0.05 (default for trp/nuclear, as "
                        "the official code), energy:0.15 (default for --mode none)")
    _add_decompose_args(p)
    p.set_defaults(func=run_train)

    d = tsub.add_parser("decompose", help="decompose any trained model (TRP or post-hoc TSVD baseline)",
                        description="Split the convs of a saved model (model.safetensors of any reparam "
                                    "training command) into two, with no fine-tuning unless asked.")
    d.add_argument("checkpoint", help="a model.safetensors written by reparam")
    d.add_argument("--out", required=True)
    d.add_argument("--overwrite", action="store_true")
    d.add_argument("--scheme", default="channel", help="channel (NC), spatial (VH) or nd")
    g = d.add_mutually_exclusive_group()
    g.add_argument("--rule", default=None, help="rank rule, e.g. value:0.05, energy:0.15, rank:8, fraction:0.5")
    g.add_argument("--energy", type=fraction_open, default=None, help="shorthand for --rule energy:E")
    g.add_argument("--speedup", type=number(float, 1, lo_open=True), default=None,
                   help="post-hoc baseline at a matched conv-FLOPs speed-up: the smallest energy e reaching it")
    add_data_args(d)
    d.add_argument("--seed", type=seed_int, default=None,
                   help="data split seed (default: from metrics.json next to the checkpoint, else 0)")
    d.add_argument("--finetune-epochs", type=nonneg_int, default=0, help="optional short fine-tune (default 0: none)")
    d.add_argument("--finetune-lr", type=positive_float, default=0.01)
    add_select_on(d)
    _add_decompose_args(d)
    add_runtime_args(d)
    d.set_defaults(func=run_decompose)
    trp.set_defaults(func=lambda args: (trp.print_help(), 0)[1])


def _check_scheme_rule(scheme: str, rule: str) -> tuple[str, str]:
    scheme = canonical_scheme(scheme)
    RankRule.parse(rule)
    return scheme, rule


def run_train(args: argparse.Namespace) -> int:
    from reparam import trp
    from reparam.experiments.trp.report import decompose_and_measure, rank_history_plot
    from reparam.trp.io import save_decomposed

    rule = args.decompose_rule or ("energy:0.15" if args.mode == "none" else "value:0.05")
    scheme, rule = _check_scheme_rule(args.scheme, rule)
    if args.mode == "nuclear" and args.nuclear <= 0:
        raise ReparamError("--mode nuclear needs --nuclear > 0 (e.g. 3e-4)")
    trp_cfg = None
    if args.mode != "none":
        trp_cfg = Config(scheme=scheme, energy=args.energy, period=args.period, project=args.mode == "trp",
                         nuclear=args.nuclear, nuclear_rank=args.nuclear_rank, nuclear_when=args.nuclear_when,
                         counter=args.counter, skip_stem=not args.include_stem, decompose_rule=rule,
                         only_stride1=not args.all_strides)
    elif not 0 < args.energy < 1:
        raise ReparamError(f"--energy {args.energy} is not allowed; must be in (0, 1)")
    if args.schedule == "multistep" and not args.milestones:
        args.milestones = [max(1, args.epochs // 2), max(1, (3 * args.epochs) // 4)]
    config = config_from_args(args)
    splits, model = prepare(args)
    if trp_cfg is not None:
        callbacks = trp.apply(model, trp_cfg).hooks     # projects once: training starts from D(W_0)
    else:
        trp.select_targets(model, skip_stem=not args.include_stem)   # the decomposition will need targets
        callbacks = []
    method = {"trp": "trp", "nuclear": "trp-nuclear-only", "none": "dense"}[args.mode]

    def finalize(trained, work: Path) -> dict[str, Any]:
        small, plans, m = decompose_and_measure(
            trained, splits, scheme, rule, only_stride1=not args.all_strides, skip_stem=not args.include_stem,
            latency_batches=tuple(args.latency_batches), latency_repeats=args.latency_repeats,
            latency_size=args.latency_size)
        spec = getattr(trained, "build_args", {"name": args.model})
        save_decomposed(work / "decomposed.safetensors", small, spec, scheme, plans, {"decompose_rule": rule})
        out = dict(m)
        out.update(test_acc_before=m["test_acc_before"], test_acc=m["test_acc_decomposed"],
                   val_acc_decomposed=m["val_acc_decomposed"], params_stored=m["params_after"],
                   bytes_stored=4 * m["params_after"], mode=args.mode, decompose_rule=rule,
                   trp=trp_cfg.to_dict() if trp_cfg else None)
        if callbacks:
            cb = callbacks[0]
            write_json(work / "ranks.json", {"history": cb.history, "max_ranks": m["max_ranks"],
                                             "projections": cb.projections})
            rank_history_plot(cb.history, m["max_ranks"], work / "ranks.png",
                              f"TRP {scheme} e={args.energy} m={args.period}: ranks over training")
            out["train_ranks"] = cb.last_ranks
            out["projections"] = cb.projections
        return out

    metrics = train_and_report(args, method=method, model=model, splits=splits, callbacks=callbacks,
                               config=config, finalize=finalize)
    _print_summary(metrics, args.out)
    return 0


def _print_summary(m: dict[str, Any], out: str) -> None:
    rows = [("accuracy before decomposition", m["test_acc_before"]), ("accuracy decomposed", m["test_acc"]),
            ("conv-FLOPs speed-up", round(m["flops_speedup"], 3)), ("mean rank", round(m["mean_rank"], 2)),
            ("max |logit diff|", f"{m['max_logit_diff']:.2e}")]
    for k in sorted(x for x in m if x.startswith("latency_speedup_b")):
        rows.append((k.replace("_", " "), round(m[k], 3)))
    rows.append(("output", str(out)))
    print_table("TRP decomposition", rows)


def _origin(path: Path) -> dict[str, Any]:
    """The training run's metrics.json beside a checkpoint (seed, dataset, augment), checked before use."""
    if not path.is_file():
        return {}
    try:
        origin = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        raise ReparamError(f"{path} (beside the checkpoint) is not valid JSON; pass --seed and --data, or "
                           "move it away") from None
    seed, data = origin.get("seed", 0) if isinstance(origin, dict) else None, \
        origin.get("dataset") if isinstance(origin, dict) else None
    cfg = origin.get("config", {}) if isinstance(origin, dict) else None
    if not isinstance(origin, dict) or isinstance(seed, bool) or not isinstance(seed, int) or \
            not 0 <= seed < 2**63 or not isinstance(data, (str, type(None))) or not isinstance(cfg, dict) or \
            not isinstance(cfg.get("augment"), (str, type(None))):
        raise ReparamError(f"{path} (beside the checkpoint) is not a reparam metrics.json (seed, dataset, "
                           "config.augment); pass --seed and --data, or move it away")
    return origin


def run_decompose(args: argparse.Namespace) -> int:
    from reparam.experiments.trp.report import decompose_and_measure, energy_for_speedup, input_shape_of
    from reparam.trp.io import load_model_file, save_decomposed

    setup_runtime(args)
    scheme = canonical_scheme(args.scheme)
    if args.energy is not None:
        rule = str(RankRule("energy", args.energy))
    elif args.rule is not None:
        rule = str(RankRule.parse(args.rule))
    else:
        rule = "value:0.05"
    if args.speedup is not None and not args.speedup > 1.0:
        raise ReparamError(f"--speedup {args.speedup} is not allowed; must be > 1")
    if args.finetune_epochs < 0:
        raise ReparamError(f"--finetune-epochs {args.finetune_epochs} is not allowed; must be >= 0")
    model, header = load_model_file(args.checkpoint)
    if header.get("trp"):
        raise ReparamError(f"{args.checkpoint} is already decomposed; pass the trained model.safetensors")
    origin = _origin(Path(args.checkpoint).parent / "metrics.json")
    if args.seed is None:
        args.seed = int(origin.get("seed", 0))
    if args.data == "digits" and origin.get("dataset"):
        args.data = origin["dataset"]
    splits = load_splits(args)
    spec = header["model_spec"]
    if splits.num_classes != spec["num_classes"] or splits.in_channels != spec["in_channels"]:
        raise ReparamError(f"dataset {args.data!r} has {splits.num_classes} classes and {splits.in_channels} "
                           f"channels; the checkpoint's model expects {spec['num_classes']} and "
                           f"{spec['in_channels']}")
    extra: dict[str, Any] = {}
    if args.speedup is not None:
        e, reached = energy_for_speedup(model, scheme, args.speedup, input_shape_of(splits),
                                        only_stride1=not args.all_strides, skip_stem=not args.include_stem)
        rule = f"energy:{e:.6g}"
        extra.update(target_speedup=args.speedup, matched_energy=e)
    with output_dir(args.out, overwrite=args.overwrite) as work:
        small, plans, m = decompose_and_measure(
            model, splits, scheme, rule, only_stride1=not args.all_strides, skip_stem=not args.include_stem,
            latency_batches=tuple(args.latency_batches), latency_repeats=args.latency_repeats,
            latency_size=args.latency_size)
        m.update(extra)
        m.update(method="trp-decompose", source=str(args.checkpoint), source_method=header.get("method"),
                 model=spec["name"], dataset=args.data, seed=args.seed, decompose_rule=rule,
                 test_acc=m["test_acc_decomposed"], val_acc=m["val_acc_decomposed"],
                 params_total=m["params_before"], params_stored=m["params_after"],
                 bytes_stored=4 * m["params_after"], train_seconds=0.0, epochs=0)
        if args.finetune_epochs:
            from reparam.train import TrainConfig, Trainer

            cfg = TrainConfig(epochs=args.finetune_epochs, lr=args.finetune_lr, weight_decay=1e-4,
                              batch_size=64, schedule="cosine", seed=args.seed,
                              augment=origin.get("config", {}).get("augment"), progress=not args.no_progress)
            res = Trainer(small, splits, cfg).fit(resume=False)
            m.update(test_acc_no_finetune=m["test_acc"], test_acc=res.test_acc, val_acc=res.val_acc,
                     finetune_epochs=args.finetune_epochs, train_seconds=res.train_seconds,
                     epochs=args.finetune_epochs)
        save_decomposed(work / "decomposed.safetensors", small, spec, scheme, plans, {"decompose_rule": rule})
        write_json(work / "metrics.json", m)
    m.setdefault("test_acc_before", m["test_acc_before"])
    _print_summary(m, args.out)
    return 0
