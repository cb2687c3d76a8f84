"""`reparam compander train | compare | grid`."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from reparam.cli.common import (
    add_data_args,
    add_resume_args,
    add_runtime_args,
    add_select_on,
    add_train_args,
    config_from_args,
    milestone_list,
    nonneg_float,
    number,
    positive_float,
    positive_int,
    prepare,
    run_folder,
    setup_runtime,
    train_and_report,
    warn_small_val,
)
from reparam.cli.validate import names as name_list
from reparam.compander import learned_scales
from reparam.compander.stats import percentile_plot
from reparam.core.errors import ReparamError
from reparam.core.outdir import write_json
from reparam.core.parametrize import exclude
from reparam.experiments.compander.runs import (
    DataSpec,
    grid_select,
    grid_values,
    markdown_tables,
    run_many,
    summarize,
)
from reparam.experiments.compander.variants import fold_variant, parse_variant, setup_variant
from reparam.models import build_from_spec

# The spec's §6.3 digits protocol: SGD m=0.9, lr 0.1 x0.2 at 30/60/80% of training, batch 64, wd 5e-4,
# random +-1 pixel shift. Milestones are given as fractions so that --epochs rescales them.
PROTOCOL = dict(epochs=60, lr=0.1, batch_size=64, weight_decay=5e-4, schedule="multistep", augment="shift1")
MILESTONE_FRACTIONS = (0.3, 0.6, 0.8)


def _add_protocol_defaults(p: argparse.ArgumentParser) -> None:
    p.set_defaults(**PROTOCOL)
    p.add_argument("--gamma", type=positive_float, default=0.2, help="lr factor at each milestone (default 0.2)")


def _add_wc_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("compander")
    g.add_argument("--a", type=positive_float, default=None,
                   help="output scale a; bound a*pi/2 (default 0.8 fixed, 0.5 learnable)")
    g.add_argument("--b", type=positive_float, default=None,
                   help="input stretch b; Psi'(0)=a/b (default 0.5 fixed, 1.0 learnable)")
    g.add_argument("--fn", default="arctan", choices=["arctan", "asinh", "erf"])
    g.add_argument("--learnable", default=None, choices=["fine", "coarse"],
                   help="learn (a, b) per layer (fine) or one shared pair (coarse)")
    g.add_argument("--positivity", default="softplus", choices=["abs", "softplus"],
                   help="how learnable a, b stay positive (default softplus(x)+1e-3; abs: |x| clamped at 1e-3)")
    g.add_argument("--decay", default="auto", choices=["auto", "psi", "v", "none"],
                   help="weight decay on Psi(v) (fixed default) or on v (learnable default)")
    g.add_argument("--modified-adam", action="store_true",
                   help="Powerprop-style Adam: moments on dL/dw, step times Psi'(v) (uses --lr)")
    g.add_argument("--clamp-init", action="store_true",
                   help="clamp initial weights beyond the bound (with a warning) instead of an error")
    g.add_argument("--exclude", default="", help="comma-separated layer names (or prefixes) left plain")
    g.add_argument("--baseline", default=None, choices=["plain", "wn", "pp"],
                   help="train a baseline in the same harness instead of the compander")
    g.add_argument("--alpha", type=positive_float, default=2.0, help="Powerpropagation alpha (default 2)")


def _milestones(args: argparse.Namespace) -> tuple[int, ...]:
    if args.milestones:
        return tuple(args.milestones)
    return tuple(max(1, int(round(f * args.epochs))) for f in MILESTONE_FRACTIONS)


def _config(args: argparse.Namespace):
    return config_from_args(args, milestones=_milestones(args), gamma=args.gamma)


def variant_from_args(args: argparse.Namespace) -> str:
    if args.baseline:
        return {"plain": "plain", "wn": "wn", "pp": f"pp:alpha={args.alpha:g}"}[args.baseline]
    learn = args.learnable
    a = args.a if args.a is not None else (0.5 if learn else 0.8)
    b = args.b if args.b is not None else (1.0 if learn else 0.5)
    parts = [f"wc:a={a:g}:b={b:g}"]
    if args.fn != "arctan":
        parts.append(f"fn={args.fn}")
    if learn:
        parts.append(f"learnable={learn}")
    if args.positivity != "softplus":
        parts.append(f"positivity={args.positivity}")
    if args.decay != "auto":
        parts.append(f"decay={args.decay}")
    if args.modified_adam:
        parts.append("opt=madam")
    if args.clamp_init:
        parts.append("clamp=1")
    return ":".join(parts)


def register(sub: argparse._SubParsersAction) -> None:
    top = sub.add_parser("compander", help="Weight Compander: w = a*arctan(v/b) on every weight",
                         description="Weight Compander (arXiv 2306.16993): train through w = a*f(v/b), "
                                     "fold to a plain model, compare with baselines.")
    cmds = top.add_subparsers(dest="compander_command", metavar="COMMAND", parser_class=type(top))

    p = cmds.add_parser("train", help="train with the compander (or a baseline); writes the folded model",
                        description="Train, fold the parametrization away and write OUT/model.safetensors "
                                    "(plain architecture), metrics.json, log.jsonl, curves.png, percentiles.png.")
    add_train_args(p)
    _add_protocol_defaults(p)
    _add_wc_args(p)
    p.add_argument("--width", type=number(float, 0, 64, lo_open=True), default=None,
                   help="model width option (cnn, mlp, ...), in (0, 64]")
    p.set_defaults(func=run_train)

    c = cmds.add_parser("compare", help="variants x seeds: mean, std and paired differences",
                        description="Train every variant on every seed (same split per seed, so paired) and "
                                    "write OUT/summary.md, OUT/results.json and percentile plots.")
    _add_multi_args(c)
    c.add_argument("--variants", default="plain,wc,wn,pp",
                   help="comma-separated variants, e.g. plain,wc:a=0.8:b=0.5,wc-fine,wn,pp:alpha=2 "
                        "(aliases: wc-fine, wc-coarse, wc-asinh, wc-erf, wc-decay-v, wc-adam, wc-madam)")
    c.add_argument("--seeds", type=positive_int, default=5, help="seeds 0..N-1 (default 5)")
    c.set_defaults(func=run_compare, _resume_free=("seeds", "variants"))

    g = cmds.add_parser("grid", help="(a, b) grid search on the validation split (paper: one seed)",
                        description="Train fixed WC for every (a, b) and select the pair with the best "
                                    "validation accuracy (mean over --seeds). Test accuracy is reported only.")
    _add_multi_args(g)
    g.add_argument("--a", dest="a_values", default="0.5:1.0:0.1", help="a values: start:stop:step or list")
    g.add_argument("--b", dest="b_values", default="0.5:1.0:0.1", help="b values: start:stop:step or list")
    g.add_argument("--fn", default="arctan", choices=["arctan", "asinh", "erf"])
    g.add_argument("--seeds", type=positive_int, default=1, help="seeds 0..N-1 averaged (paper: 1)")
    g.set_defaults(func=run_grid, _resume_free=("seeds", "a_values", "b_values"))
    r = cmds.add_parser("summarize", help="print the tables of a finished compare folder again",
                        description="Re-read OUT/results.json of `compare` and print its markdown tables.")
    r.add_argument("folder")
    r.set_defaults(func=run_summarize)
    top.set_defaults(func=lambda args: (top.print_help(), 2)[1])


def _add_multi_args(p: argparse.ArgumentParser) -> None:
    add_data_args(p)
    p.add_argument("--model", default="cnn")
    p.add_argument("--epochs", type=positive_int, default=PROTOCOL["epochs"])
    p.add_argument("--batch-size", type=positive_int, default=PROTOCOL["batch_size"])
    p.add_argument("--lr", type=positive_float, default=PROTOCOL["lr"])
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "adamw"])
    p.add_argument("--schedule", default="multistep", choices=["constant", "step", "multistep", "cosine"])
    p.add_argument("--milestones", default=[], type=milestone_list)
    p.add_argument("--gamma", type=positive_float, default=0.2)
    p.add_argument("--weight-decay", type=nonneg_float, default=PROTOCOL["weight_decay"])
    p.add_argument("--momentum", type=number(float, 0, 1, hi_open=True), default=0.9)
    p.add_argument("--warmup", type=nonneg_float, default=0.0)
    p.add_argument("--augment", default=PROTOCOL["augment"])
    p.add_argument("--width", type=number(float, 0, 64, lo_open=True), default=None,
                   help="model width option (cnn), in (0, 64]")
    p.add_argument("--resize", type=number(int, 1, 1024), default=None, help="resize images to NxN (bilinear)")
    add_select_on(p)
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    add_resume_args(p, "reuse runs cached in OUT.partial/runs")
    add_runtime_args(p)


def _spec(args: argparse.Namespace) -> DataSpec:
    subset = args.train_subset
    if subset is not None:
        if subset <= 0:
            raise ReparamError(f"--train-subset {subset} is not allowed; use a count >= 1 or a fraction in (0, 1)")
        subset = int(subset) if subset >= 1 else subset
    opts: dict[str, Any] = {}
    if args.width is not None:
        opts["width"] = args.width
    return DataSpec(data=args.data, model=args.model, data_root=args.data_root, train_subset=subset,
                    val_fraction=args.val_fraction, resize=args.resize, model_options=opts)


def _check_data(spec: DataSpec) -> int:
    """Fail on a bad dataset/model name before any folder is created; returns the validation split's size."""
    from reparam.experiments.compander.runs import load

    splits, _ = load(spec, 0)
    return len(splits.val)


# -- train -----------------------------------------------------------------------------------------------

def run_train(args: argparse.Namespace) -> int:
    variant = parse_variant(variant_from_args(args))
    config = _config(args)
    splits, model = prepare(args, {"width": args.width} if args.width is not None else None)
    names = name_list(args.exclude, [n for n, _ in model.named_modules() if n], "--exclude", "layer") \
        if args.exclude.strip() else []
    filter_fn = exclude(*names) if names else None
    setup = setup_variant(model, variant, config, filter_fn=filter_fn, check_every_step=True)
    from reparam.metrics import count_flops, count_params

    plain_ref = build_from_spec(model.build_args)
    x_test = splits.test.tensors[0][:256]

    def finalize(model: torch.nn.Module, work: Path) -> dict[str, Any]:
        model.eval()
        with torch.no_grad():
            before = model(x_test)
        scales = learned_scales(model)
        fold_variant(model)
        with torch.no_grad():
            after = model(x_test)
        shape = (1, *x_test.shape[1:])
        extra = {
            "variant": variant.label, "variant_info": setup.info, "learned_scales": scales,
            "fold_max_abs_diff": float((after - before).abs().max()),
            "params_folded": count_params(model), "params_plain": count_params(plain_ref),
            "flops_folded": count_flops(model, shape), "flops_plain": count_flops(plain_ref, shape),
        }
        hist = setup.stats.history(trainer_history(work))
        if hist:
            percentile_plot(hist, work / "percentiles.png", title=f"{variant.label}: first layer weights")
            last = hist[-1]["wstats"]
            extra.update(w_max_abs_final=last["max_abs"], w_near0_final=last["near0"],
                         w_worst_bound_ratio=max((r.get("w_worst_bound_ratio", 0.0) for r in
                                                  trainer_history(work)), default=None))
        return extra

    n_plain = count_params(plain_ref)
    train_and_report(args, method=f"compander/{variant.kind}", model=model, splits=splits,
                     callbacks=setup.callbacks, param_groups=setup.param_groups, optimizer=setup.optimizer,
                     config=setup.config, finalize=finalize, params_stored=n_plain, bytes_stored=4 * n_plain)
    return 0


def trainer_history(work: Path) -> list[dict]:
    path = work / "log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- compare ---------------------------------------------------------------------------------------------

def _multi_config(args: argparse.Namespace):
    from reparam.train import TrainConfig

    ms = tuple(args.milestones) or tuple(max(1, int(round(f * args.epochs))) for f in MILESTONE_FRACTIONS)
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                       momentum=args.momentum, weight_decay=args.weight_decay, schedule=args.schedule,
                       milestones=ms, gamma=args.gamma, warmup_epochs=args.warmup,
                       augment=None if args.augment in (None, "", "none") else args.augment).validate()


def run_compare(args: argparse.Namespace) -> int:
    setup_runtime(args)
    variants = name_list(args.variants, None, "--variants")
    for v in variants:
        parse_variant(v)
    spec = _spec(args)
    config = _multi_config(args)
    n_val = _check_data(spec)
    seeds = list(range(args.seeds))
    t0 = time.perf_counter()
    with run_folder(args) as work:
        warn_small_val(n_val, args.select_on)
        jobs = [(v, s) for s in seeds for v in variants]  # seed-major: partial results are paired
        results = run_many(jobs, spec, config, work / "runs", progress=not args.no_progress)
        summary = summarize(results, variants)
        _compare_plots(results, variants, work)
        header = (f"{spec.describe()}; {args.epochs} epochs, {config.optimizer} lr {config.lr}, "
                  f"milestones {list(config.milestones)} x{config.gamma}, batch {config.batch_size}, "
                  f"wd {config.weight_decay}, augment {config.augment}; seeds {seeds}; "
                  f"n_train={results[0]['n_train']}, n_val={results[0]['n_val']}, n_test={results[0]['n_test']}")
        md = markdown_tables(summary, title=header)
        from reparam.core.fileformat import atomic_write_text

        atomic_write_text(work / "summary.md", md)
        write_json(work / "results.json", {"setting": header, "variants": variants, "seeds": seeds,
                                           "summary": summary, "runs": results,
                                           "wall_seconds": time.perf_counter() - t0})
    print(md)
    return 0


def _compare_plots(results: list[dict], variants: list[str], work: Path) -> None:
    """Fig. 3/4-style first-layer percentiles for seed 0: each variant next to the plain baseline."""
    by = {(r["variant"], r["seed"]): r for r in results}
    base = next((v for v in variants if parse_variant(v).kind == "plain"), None)
    seed = min(r["seed"] for r in results)

    def hist(v: str) -> list[dict]:
        r = by[(v, seed)]
        rec = []
        for epoch, pct in r["first_layer_pct"]:
            layer = {"pct": pct}
            if r["first_layer_bound"] is not None:
                layer["bound"] = r["first_layer_bound"]
            rec.append({"epoch": epoch, "wstats": {"layers": {r["first_layer"]: layer}}})
        return rec

    for v in variants:
        if v == base or (v, seed) not in by:
            continue
        name = "percentiles_" + "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in v) + ".png"
        percentile_plot(hist(v), work / name, compare=hist(base) if base else None,
                        labels=(v, base or ""), title=f"first-layer weights over epochs, seed {seed}")


# -- grid ------------------------------------------------------------------------------------------------

def run_grid(args: argparse.Namespace) -> int:
    setup_runtime(args)
    a_values, b_values = _grid(args.a_values, "--a"), _grid(args.b_values, "--b")
    spec = _spec(args)
    config = _multi_config(args)
    n_val = _check_data(spec)
    fn = "" if args.fn == "arctan" else f":fn={args.fn}"
    labels = {(a, b): f"wc:a={a:g}:b={b:g}{fn}" for a in a_values for b in b_values}
    seeds = list(range(args.seeds))
    with run_folder(args) as work:
        warn_small_val(n_val, args.select_on)
        jobs = [(labels[k], s) for s in seeds for k in labels]
        results = run_many(jobs, spec, config, work / "runs", progress=not args.no_progress)
        for r in results:  # grid_select matches on the plain label
            r["variant"] = r["variant"].replace(fn, "") if fn else r["variant"]
        sel = grid_select(results, a_values, b_values)
        lines = [f"{spec.describe()}; fn {args.fn}; {args.epochs} epochs; seeds {seeds}; n_val="
                 f"{results[0]['n_val']}. Cells: mean val acc % (test acc %). Best on val: "
                 f"a={sel['best'][0]:g}, b={sel['best'][1]:g}"
                 + (f" ({len(sel['ties'])} pairs tie on val)" if len(sel["ties"]) > 1 else ""), "",
                 "| a \\ b | " + " | ".join(f"{b:g}" for b in b_values) + " |",
                 "|---|" + "---|" * len(b_values)]
        for a in a_values:
            cells = []
            for b in b_values:
                c = sel["table"].get(f"{a:g},{b:g}")
                cells.append("" if c is None else f"{100 * c['val']:.2f} ({100 * c['test']:.2f})")
            lines.append(f"| {a:g} | " + " | ".join(cells) + " |")
        md = "\n".join(lines) + "\n"
        from reparam.core.fileformat import atomic_write_text

        atomic_write_text(work / "grid.md", md)
        write_json(work / "grid.json", {"selection": {**sel, "best": list(sel["best"]),
                                                      "ties": [list(t) for t in sel["ties"]]},
                                        "runs": results})
    print(md)
    return 0


def _grid(text: str, option: str) -> list[float]:
    """start:stop:step (inclusive) or a comma list of positive finite numbers, at most 1000 values."""
    import argparse as _ap
    import math

    from reparam.cli.common import list_of

    if ":" in text:
        values = grid_values(text)
    else:
        try:
            values = list_of(positive_float, what="positive numbers")(text)
        except _ap.ArgumentTypeError as e:
            raise ReparamError(f"{option}: {e}") from None
    if not all(math.isfinite(v) for v in values) or len(values) > 1000:
        raise ReparamError(f"{option} {text!r}: allowed: at most 1000 finite positive values")
    return values


def run_summarize(args: argparse.Namespace) -> int:
    path = Path(args.folder) / "results.json"
    if not path.is_file():
        raise ReparamError(f"{path} not found; give a folder written by `reparam compander compare`")
    data = read_compare_results(path)
    print(markdown_tables(summarize(data["runs"], data["variants"]), title=data["setting"]))
    return 0


# Fields of one run record that `summarize` reads, and their JSON types.
_NUM, _OPT_NUM = (int, float), (int, float, type(None))
RUN_FIELDS = {"variant": str, "seed": int, "test_acc": _NUM, "val_acc": _NUM, "sec_per_epoch_median": _NUM,
              "max_abs_final": _NUM, "near0_final": _NUM, "first_layer_max_abs_epoch1": _OPT_NUM,
              "first_layer_bound": _OPT_NUM, "bound_ok": bool, "first_layer_pct": list}


def read_compare_results(path: Path) -> dict[str, Any]:
    """results.json of `compander compare`, checked field by field so a damaged or foreign file is one line."""
    def bad(why: str) -> ReparamError:
        return ReparamError(f"{path}: not a `reparam compander compare` results file ({why})")

    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise bad(f"{type(e).__name__}") from None
    if not isinstance(data, dict):
        raise bad("the top level is not an object")
    if not isinstance(data.get("setting"), str):
        raise bad("'setting' is missing or not a string")
    variants, runs = data.get("variants"), data.get("runs")
    if not isinstance(variants, list) or not variants or not all(isinstance(v, str) for v in variants):
        raise bad("'variants' is not a non-empty list of names")
    if len(set(variants)) != len(variants):
        raise bad("'variants' lists a name twice")
    if not isinstance(runs, list) or not runs:
        raise bad("'runs' is not a non-empty list")
    for i, r in enumerate(runs):
        if not isinstance(r, dict):
            raise bad(f"run {i} is not an object")
        for key, kind in RUN_FIELDS.items():
            v = r.get(key)
            if not isinstance(v, kind) or (isinstance(v, bool) and kind is not bool):
                raise bad(f"run {i}: {key!r} is missing or has the wrong type")
        pct = r["first_layer_pct"]
        if not pct or not all(isinstance(e, list) and len(e) == 2 and isinstance(e[1], list) and e[1]
                              and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in e[1])
                              for e in pct) or len({len(e[1]) for e in pct}) != 1:
            raise bad(f"run {i}: 'first_layer_pct' is not a list of [epoch, percentiles]")
    for v in variants:
        try:
            parse_variant(v)
        except ReparamError as e:
            raise bad(f"variant {v!r}: {e}") from None
        if not any(r["variant"] == v for r in runs):
            raise bad(f"no run of variant {v!r}")
    return data
