"""`reparam grow` (one run of MixtureGrowth or a baseline) and `reparam grow compare` (Tables 1/2/4/6)."""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

from reparam.cli.common import (
    add_data_args,
    add_resume_args,
    add_runtime_args,
    add_select_on,
    fraction_0_1,
    fraction_upto_1,
    list_of,
    nonneg_float,
    positive_float,
    positive_int,
    print_table,
    run_folder,
    seed_int,
)
from reparam.cli.validate import names
from reparam.core.errors import ReparamError
from reparam.core.outdir import write_json
from reparam.core.runtime import default_threads, set_threads

DEFAULTS = dict(model="wrn-10-2", full_epochs=20, budget=0.45, fraction=1.0)


def _common(p: argparse.ArgumentParser, out_required: bool = True, resume: bool = True) -> None:
    from reparam.experiments.mixturegrowth.pipeline import GROWN_SCHEDULES
    from reparam.mixturegrowth.grow import COEF_INITS, LAYOUTS

    add_data_args(p, "digits")
    p.add_argument("--model", default=DEFAULTS["model"], help="target network wrn-D-K (default wrn-10-2); "
                   "the small networks are wrn-D-(K/2) with stem 8")
    p.add_argument("--full-epochs", "--epochs", dest="full_epochs", type=positive_int,
                   default=DEFAULTS["full_epochs"], help="E, the full training schedule (default 20)")
    p.add_argument("--budget", type=positive_float, default=DEFAULTS["budget"],
                   help="training FLOPs as a fraction of the target trained for E epochs (default 0.45)")
    p.add_argument("--fraction", type=fraction_0_1, default=DEFAULTS["fraction"],
                   help="x: fraction of E spent training network 2 (default 1.0, the paper's Table 1)")
    p.add_argument("--coef-init", default="orthogonal", choices=list(COEF_INITS),
                   help="coefficients of the new blocks (default orthogonal, the paper's)")
    p.add_argument("--layout", default="vertical", choices=list(LAYOUTS), help="growth layout (default vertical)")
    p.add_argument("--coef-scale", type=positive_float, default=1.0,
                   help="norm of new orthogonal/random coefficients")
    p.add_argument("--copy-noise", type=nonneg_float, default=0.0, help="noise norm added to copied coefficients")
    p.add_argument("--n-templates", type=positive_int, default=2, help="templates per set (default 2)")
    p.add_argument("--share-templates", action="store_true",
                   help="paper's cross-layer sharing: pairs of same-shape layers share templates")
    p.add_argument("--template-init", choices=("per-template", "stacked"), default="per-template",
                   help="template initialisation: per-template kaiming (default) or the official code's "
                        "kaiming over the stacked [T, out, in, k, k] tensor (sqrt(out) times smaller)")
    p.add_argument("--train-end-coefs", action="store_true",
                   help="train the stem/classifier coefficients (official code); the paper keeps them fixed")
    p.add_argument("--lr", type=positive_float, default=0.1, help="LR of networks 1, 2 and scratch baselines")
    p.add_argument("--grown-lr", type=positive_float, default=0.02, help="LR after growth (default 0.02)")
    p.add_argument("--grown-schedule", default="cosine", choices=list(GROWN_SCHEDULES),
                   help="cosine (single cycle, default) or restarts (the official code's 4 cosine restarts)")
    p.add_argument("--grown-warmup", type=nonneg_float, default=0.0, help="warmup epochs after growth")
    p.add_argument("--keep-momentum", action="store_true",
                   help="carry network 2's optimizer momentum into the grown phase (official code)")
    p.add_argument("--weight-decay", type=nonneg_float, default=5e-4,
                   help="on templates and BN; never on coefficients")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--augment", default="shift1", help="batch augmentation (default shift1; 'none' for none)")
    p.add_argument("--charge-net1", action="store_true", help="charge network 1's training in the ledger")
    p.add_argument("--cache", default=None, help="folder caching trained network-1 checkpoints")
    add_select_on(p)
    p.add_argument("--out", required=out_required, help="output folder (written as OUT.partial, then renamed)")
    p.add_argument("--overwrite", action="store_true")
    if resume:
        add_resume_args(p, "reuse the finished runs in OUT.partial")
    add_runtime_args(p)


def register(sub: argparse._SubParsersAction) -> None:
    from reparam.experiments.mixturegrowth.pipeline import METHODS

    p = sub.add_parser("grow", help="MixtureGrowth: grow two trained small networks into a wider one",
                       description="Train network 1 and network 2 (template-mixing members), grow them into "
                                   "the target network and train it within a FLOPs budget. Writes "
                                   "OUT/metrics.json, log.jsonl, curves.png, cka_epochs.png, model.safetensors.")
    # --out is checked in run_grow: a required option here would also be demanded by `grow compare`.
    _common(p, out_required=False, resume=False)
    p.add_argument("--seed", type=seed_int, default=0, help="seed of data split, initialization and order")
    p.add_argument("--method", default="mixturegrowth", choices=list(METHODS),
                   help="mixturegrowth (default) or a baseline of the same harness")
    p.set_defaults(func=run_grow)
    gsub = p.add_subparsers(dest="grow_command", metavar="{compare}")
    c = gsub.add_parser("compare", help="Tables 1, 2, 4, 6 analogues over several seeds",
                        description="Run MixtureGrowth and its baselines over seeds and write results.md "
                                    "(mean ± std), results.jsonl, summary.json and plots.")
    _common(c)
    c.add_argument("--seeds", type=positive_int, default=3, help="number of seeds (default 3)")
    c.add_argument("--first-seed", type=seed_int, default=0, help="seeds run are first-seed .. first-seed+seeds-1")
    c.add_argument("--tables", default="1,4,2,6", help="which analogues to run (default 1,4,2,6)")
    c.add_argument("--methods", default="large,large-match,small,small-match,random,net2net,wo-fusion,"
                   "mixturegrowth", help="Table 1 methods")
    c.add_argument("--coef-inits", default="orthogonal,random,copy", help="Table 4 coefficient inits")
    c.add_argument("--fractions", type=list_of(fraction_upto_1, what="fractions in (0, 1]"),
                   default=[0.4, 0.6, 0.8, 1.0], help="Table 2 fractions")
    c.add_argument("--sweep-budget", type=positive_float, default=0.35, help="budget of Tables 2 and 6")
    c.add_argument("--layouts", default="vertical,horizontal", help="Table 6 layouts")
    c.set_defaults(func=run_compare, _resume_free=("seeds", "first_seed", "tables", "methods", "coef_inits",
                                                   "fractions", "layouts"))


def _settings(args: argparse.Namespace):
    from reparam.experiments.mixturegrowth.pipeline import GrowSettings

    augment = None if str(args.augment).lower() in ("none", "") else args.augment
    if augment is not None:
        from reparam.data import make_augment

        make_augment(augment)  # fail before anything is written
    return GrowSettings(model=args.model, full_epochs=args.full_epochs, budget=args.budget, fraction=args.fraction,
                        layout=args.layout, coef_init=args.coef_init, coef_scale=args.coef_scale,
                        copy_noise=args.copy_noise, n_templates=args.n_templates,
                        share_templates=args.share_templates, train_end_coefs=args.train_end_coefs,
                        template_init=args.template_init, lr=args.lr,
                        grown_lr=args.grown_lr, grown_schedule=args.grown_schedule, grown_warmup=args.grown_warmup,
                        reset_optimizer=not args.keep_momentum, weight_decay=args.weight_decay,
                        batch_size=args.batch_size, augment=augment, seed=getattr(args, "seed", 0),
                        charge_net1=args.charge_net1, progress=not args.no_progress).validate()


def _load(args: argparse.Namespace, seed: int):
    from reparam.data import load_dataset

    subset = args.train_subset
    if subset is not None:
        subset = int(subset) if subset >= 1 else subset
    return load_dataset(args.data, seed=seed, root=args.data_root, val_fraction=args.val_fraction,
                        train_subset=subset)


def _check_model(args, splits) -> None:
    from reparam.models.wrn import parse_wrn

    depth, k = parse_wrn(args.model)
    if (16 * k) % 2 or int(16 * k) < 2:
        raise ReparamError(f"model {args.model!r}: width 16k = {16 * k:g} must be even to halve it")


def run_grow(args: argparse.Namespace) -> int:
    import torch

    from reparam.core.fileformat import save_model
    from reparam.experiments.mixturegrowth.cka import save_heatmap
    from reparam.experiments.mixturegrowth.pipeline import epoch_cka, macs, run_method, solve_budget, train_net1
    from reparam.metrics import count_params
    from reparam.metrics.plots import training_curves
    from reparam.mixturegrowth import fold, is_template_mixing

    if not args.out:
        raise ReparamError("--out is required: the output folder for metrics.json, logs and plots")
    set_threads(args.threads if args.threads else default_threads())
    s = _settings(args)
    _check_model(args, None)
    splits = _load(args, args.seed)
    r_small, r_big = macs(s, splits)
    if args.method == "mixturegrowth":
        solve_budget(s.budget, s.fraction, r_small / r_big, s.full_epochs, n_train=len(splits.train),
                     batch_size=s.batch_size)   # bad budgets fail here
    t0 = time.perf_counter()
    with run_folder(args, resume=False) as work:
        net1 = None
        if args.method in ("mixturegrowth", "wo-fusion", "random", "random-full", "net2net"):
            net1, info = train_net1(s, splits, Path(args.cache) if args.cache else None)
        res = run_method(args.method, s, splits, net1)
        model = res.model
        params_stored = count_params(model)
        if is_template_mixing(model):
            model = fold(model)
        mat = epoch_cka(res)
        marks = [i for i in range(1, len(res.snapshot_phases))
                 if res.snapshot_phases[i] != res.snapshot_phases[i - 1]]
        save_heatmap(mat, work / "cka_epochs.png", f"{args.method}: last-layer CKA across epochs", "epoch",
                     "epoch", marks)
        for pair, layer_mat in res.extra.get("cka_layers", {}).items():
            a, b = pair.split("_vs_")
            save_heatmap(torch.tensor(layer_mat), work / f"cka_layers_{pair}.png", f"layer CKA: {a} vs {b}",
                         f"{b} conv layer", f"{a} conv layer")
        history = [dict(h, epoch=i + 1) for i, h in enumerate(res.history)]
        with (work / "log.jsonl").open("w") as f:
            import json

            for h in history:
                f.write(json.dumps(h) + "\n")
        training_curves(history, work / "curves.png", title=f"{args.method} {args.model} on {args.data}")
        save_model(work / "model.safetensors", model, {"method": args.method, "model": args.model,
                                                        "note": "plain pre-activation WRN (reparam.models.wrn with "
                                                                "mixturegrowth.wrn_options), template mixing folded"})
        params_total = count_params(model)
        metrics = {"method": args.method, "model": args.model, "dataset": args.data, "seed": s.seed,
                   "test_acc": res.test_acc, "val_acc": res.val_acc, "params_total": params_total,
                   "params_stored": params_stored, "bytes_stored": 4 * params_stored,
                   "train_seconds": sum(h.get("seconds", 0.0) for h in res.history),
                   "epochs": sum(res.epochs.values()), "phase_epochs": res.epochs,
                   "flops_norm": res.flops_norm, "ledger": res.ledger,
                   "small_target_macs": [r_small, r_big], "settings": asdict(s), "threads": torch.get_num_threads(),
                   "cka_epochs": mat.tolist(), **res.extra}
        metrics["wall_seconds"] = time.perf_counter() - t0
        write_json(work / "metrics.json", metrics)
    rows = [("test accuracy", res.test_acc), ("val accuracy", res.val_acc), ("FLOPs norm", res.flops_norm),
            ("epochs", str(res.epochs))]
    for k in ("net1_test_acc", "net2_test_acc", "ensemble_test_acc", "grown_test_acc_at_growth"):
        if k in res.extra:
            rows.append((k.replace("_", " "), res.extra[k]))
    rows += [("parameters (plain)", params_total), ("parameters stored", params_stored), ("output", args.out)]
    print_table(f"{args.method}: {args.model} on {args.data}", rows)
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from rich.console import Console

    from reparam.experiments.mixturegrowth.compare import cka_plots, growth_curves, plan_jobs, run_jobs, summarize

    set_threads(args.threads if args.threads else default_threads())
    args.seed = args.first_seed
    base = _settings(args)
    _check_model(args, None)
    from reparam.experiments.mixturegrowth.compare import TABLES
    from reparam.experiments.mixturegrowth.pipeline import METHODS, macs
    from reparam.mixturegrowth.flops import solve_budget
    from reparam.mixturegrowth.grow import COEF_INITS, LAYOUTS

    tables = names(args.tables, TABLES, "--tables", "table")
    methods = names(args.methods, METHODS, "--methods", "method")
    inits = names(args.coef_inits, COEF_INITS, "--coef-inits", "coefficient init")
    layouts = names(args.layouts, LAYOUTS, "--layouts", "layout")
    if args.first_seed + args.seeds - 1 > 2**63 - 1:
        raise ReparamError(f"--first-seed {args.first_seed} + --seeds {args.seeds} passes the largest seed 2**63-1")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    jobs = plan_jobs(seeds, tables, methods, inits, args.fractions, args.sweep_budget, layouts)
    # every budget the jobs will ask for is solved now, so a bad one fails before OUT.partial exists
    r_small, r_big = macs(base, _load(args, seeds[0]))
    for job in jobs:
        if job.method in ("mixturegrowth", "wo-fusion"):
            fraction = job.overrides.get("fraction", base.fraction) if job.method == "mixturegrowth" else 0.0
            budget = job.overrides.get("budget", base.budget)
            try:
                solve_budget(budget, fraction, r_small / r_big, base.full_epochs)
            except ReparamError as e:
                raise ReparamError(f"table {job.table} ({job.method}, --budget/--sweep-budget {budget:g}): {e}") \
                    from None
    console = Console()
    with run_folder(args) as work:
        t0 = time.perf_counter()

        def progress(i, n, job):
            console.print(f"[{i + 1}/{n}] table {job.table} {job.method} seed {job.seed} {job.overrides} "
                          f"({time.perf_counter() - t0:.0f}s)")

        records = run_jobs(jobs, base, lambda seed: _load(args, seed), work, progress)
        text, numbers = summarize(records, base)
        curves = growth_curves(records, base, work / "growth_curves.png")
        plots = ([curves.name] if curves else []) + cka_plots(records, base, work)
        header = (f"# MixtureGrowth comparison: {args.model} on {args.data}, E = {base.full_epochs} epochs, "
                  f"{args.seeds} seeds\n\n")
        (work / "results.md").write_text(header + text + "\n")
        write_json(work / "summary.json", {"settings": asdict(base), "tables": numbers,
                                           "plots": plots,
                                           "seconds": time.perf_counter() - t0})
    console.print(text)
    return 0
