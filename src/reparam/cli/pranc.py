"""`reparam pranc train|eval|decode|inspect|sweep|ablate`."""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

from reparam.core.errors import ReparamError


def register(subparsers) -> None:
    p = subparsers.add_parser("pranc", help="PRANC: a model as one seed plus k coefficients")
    sub = p.add_subparsers(dest="pranc_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    from reparam.cli.common import (
        add_data_args,
        add_runtime_args,
        add_select_on,
        add_train_args,
        list_of,
        positive_float,
        positive_int,
        seed_int,
    )

    t = sub.add_parser("train", help="train a model's coefficients; writes OUT/model.prnc and metrics.json")
    add_train_args(t, model="mlp", data="digits", epochs=30, lr=1e-2, optimizer="adam", weight_decay=0.0,
                   batch_size=64)
    _add_pranc_args(t)
    t.add_argument("--model-options", default="{}", help="JSON object of model options, e.g. '{\"hidden\": [64]}'")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="rebuild the model from the file alone and print its test accuracy")
    e.add_argument("file")
    add_data_args(e, None)
    e.add_argument("--seed", type=seed_int, default=None, help="data split seed (default: the training run's, "
                                                               "from the file)")
    e.add_argument("--basis-seed", type=seed_int, default=None, help="override the stored basis seed")
    e.add_argument("--json", action="store_true", help="print a JSON object with test_acc")
    add_runtime_args(e)
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("decode", help="write the dense model (exact weights) as a reparam safetensors file")
    d.add_argument("file")
    d.add_argument("--out", required=True, help="output .safetensors file")
    d.add_argument("--overwrite", action="store_true")
    add_runtime_args(d)
    d.set_defaults(func=cmd_decode, out_kind="file")

    i = sub.add_parser("inspect", help="print the header, sizes and compression ratios")
    i.add_argument("file")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_inspect)

    s = sub.add_parser("sweep", help="accuracy vs stored numbers: PRANC and baselines, with a plot")
    add_train_args(s, model="mlp", data="digits", epochs=30, lr=1e-2, optimizer="adam", weight_decay=0.0,
                   batch_size=64, resume=False)
    s.add_argument("--k", type=list_of(positive_int, what="positive integers"), default=[50, 100, 200, 500, 1000],
                   help="comma-separated k values")
    s.add_argument("--seeds", type=positive_int, default=1, help="repeat every run with seeds seed..seed+N-1")
    s.add_argument("--baselines", default="dense,hashednet,pruning,regression,narrow",
                   help="comma-separated subset of dense,hashednet,pruning,regression,narrow")
    s.add_argument("--dense-lr", type=positive_float, default=1e-3, help="Adam lr for dense/pruned/narrow models")
    s.add_argument("--model-options", default="{}")
    s.add_argument("--mode", default="materialized", choices=["materialized", "streamed"])
    s.add_argument("--chunk", type=positive_int, default=64)
    s.set_defaults(func=cmd_sweep)

    a = sub.add_parser("ablate", help="wrong seed, top-|alpha| vs random subsets, fp16, distribution, "
                                      "orthogonality")
    a.add_argument("what", choices=["wrong-seed", "subsets", "fp16", "distribution", "orthogonality"])
    a.add_argument("--file", default=None, help="a trained .prnc (wrong-seed, subsets, fp16)")
    add_data_args(a, "digits")
    a.add_argument("--model", default="mlp")
    a.add_argument("--model-options", default="{}")
    a.add_argument("--k", type=positive_int, default=200)
    a.add_argument("--epochs", type=positive_int, default=30)
    a.add_argument("--lr", type=positive_float, default=1e-2)
    a.add_argument("--seed", type=seed_int, default=0)
    a.add_argument("--seeds", type=positive_int, default=1)
    add_select_on(a)
    a.add_argument("--out", required=True)
    a.add_argument("--overwrite", action="store_true")
    add_runtime_args(a)
    a.set_defaults(func=cmd_ablate)


def _add_pranc_args(p: argparse.ArgumentParser) -> None:
    from reparam.cli.common import positive_float, positive_int, seed_int

    p.add_argument("--k", type=positive_int, required=True,
                   help="number of coefficients (required; at most the model's basis parameters d)")
    p.add_argument("--mode", default="materialized", choices=["materialized", "streamed"])
    p.add_argument("--chunk", type=positive_int, default=64, help="basis rows per chunk (streamed mode)")
    p.add_argument("--basis-seed", type=seed_int, default=None, help="basis seed (default: --seed)")
    p.add_argument("--distribution", default="default-init", choices=["default-init", "gaussian"])
    p.add_argument("--sigma", type=positive_float, default=None, help="Gaussian std (default: fan-in matched)")
    p.add_argument("--budgets", default=None,
                   help="per-layer budgets: proportional, uniform, or comma-separated k per layer")
    p.add_argument("--init", default="e0", choices=["e0", "l1-randn"])
    p.add_argument("--coef-dtype", default="float32", choices=["float32", "float16"])


def _model_options(text: str) -> dict[str, Any]:
    try:
        opts = json.loads(text)
    except json.JSONDecodeError:
        raise ReparamError(f"--model-options {text!r} is not a JSON object") from None
    if not isinstance(opts, dict):
        raise ReparamError(f"--model-options {text!r} is not a JSON object")
    return opts


def _budgets(text: str | None):
    if text is None or text in ("proportional", "uniform"):
        return text
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise ReparamError(f"--budgets {text!r}: use proportional, uniform or comma-separated integers") from None
    if any(v < 1 for v in values):
        raise ReparamError(f"--budgets {text!r}: every per-layer budget must be a positive integer")
    return values


def check_k_fits(model, config, what: str = "--k") -> None:
    """k beyond the model's d basis parameters is meaningless; a materialized k x d basis larger than this
    machine's memory cannot be built. Both fail here, before anything is allocated or written."""
    from reparam.pranc.layout import build_layout

    blocks, _ = build_layout(model, config)
    d = sum(b.d for b in blocks)
    if config.k > d:
        raise ReparamError(f"{what} {config.k} is not allowed: the model has d = {d:,} basis parameters; "
                           f"allowed: 1..{d}")
    if config.mode == "materialized":
        need = 4 * sum(b.k * b.d for b in blocks)
        have = _physical_memory()
        if have and need > have:
            raise ReparamError(f"{what} {config.k}: the materialized basis needs {need / 2**30:.1f} GiB, more than "
                               f"this machine's {have / 2**30:.1f} GiB; use --mode streamed or a smaller k")


def _physical_memory() -> int | None:
    import os

    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def pranc_config_from_args(args) -> Any:
    from reparam.pranc.config import PrancConfig

    if args.k <= 0:
        raise ReparamError(f"--k {args.k} is not allowed; k must be a positive integer")
    return PrancConfig(k=args.k, seed=args.seed if args.basis_seed is None else args.basis_seed,
                       distribution=args.distribution, sigma=args.sigma, budgets=_budgets(args.budgets),
                       mode=args.mode, chunk=args.chunk, init=args.init).validate()


def cmd_train(args) -> int:
    from reparam.cli.common import prepare, train_and_report
    from reparam.metrics import accuracy
    from reparam.pranc.core import apply_pranc, pranc_core
    from reparam.pranc.fileio import counts, load_prnc, round_alpha, save_prnc

    pconfig = pranc_config_from_args(args)
    splits, model = prepare(args, _model_options(args.model_options))
    check_k_fits(model, pconfig)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        core = apply_pranc(model, pconfig)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    c = counts(model, core, args.coef_dtype)
    spec = getattr(model, "build_args", None)

    def finalize(model, work: Path) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if args.coef_dtype == "float16":
            extra["test_acc_fp32_alpha"] = accuracy(model, splits.test)
            round_alpha(model, "float16")
        path = work / "model.prnc"
        save_prnc(path, model, architecture=spec, coef_dtype=args.coef_dtype,
                  extra={"dataset": args.data, "data_seed": args.seed})
        rebuilt, _ = load_prnc(path)
        extra["test_acc_from_file"] = accuracy(rebuilt, splits.test)
        extra["file_bytes"] = path.stat().st_size
        extra["ratio_dense_bytes_per_file_bytes"] = c["dense_bytes"] / extra["file_bytes"]
        if args.coef_dtype == "float16":
            extra["test_acc"] = extra["test_acc_from_file"]
        return extra

    extra = {"k": core.k, "d": core.d, "mode": pconfig.mode, "chunk": pconfig.chunk,
             "basis_seed": pconfig.seed, "distribution": pconfig.distribution,
             "layout": "global" if pconfig.budgets is None else "per-layer", "coef_dtype": args.coef_dtype,
             "params_total": c["dense_params"], "dense_params": c["dense_params"],
             "stored_bn_numbers": c["stored_bn_numbers"],
             "ratio_params_per_k": c["ratio_params_per_k"],
             "ratio_params_per_stored": c["ratio_params_per_stored"]}
    train_and_report(args, method="pranc", model=model, splits=splits, params_stored=c["stored_numbers"],
                     bytes_stored=c["payload_bytes"], extra=extra, finalize=finalize, save_model_file=False)
    del pranc_core
    return 0


def cmd_eval(args) -> int:
    from reparam.cli.common import load_splits, setup_runtime
    from reparam.metrics import accuracy
    from reparam.pranc.fileio import load_prnc, read_prnc_header

    setup_runtime(args)
    header = read_prnc_header(args.file)
    arch = header.get("architecture") or {}
    extra = header.get("extra") or {}
    if args.data is None:
        args.data = extra.get("dataset", "digits")
    if args.seed is None:
        args.seed = int(extra.get("data_seed", 0))
    splits = load_splits(args)
    if arch and (splits.num_classes != arch.get("num_classes") or splits.in_channels != arch.get("in_channels")
                 or list(splits.image_size) != list(arch.get("image_size", []))):
        raise ReparamError(f"dataset {args.data!r} ({splits.num_classes} classes, {splits.in_channels} channels, "
                           f"{list(splits.image_size)}) does not match the file's model ({arch.get('num_classes')} "
                           f"classes, {arch.get('in_channels')} channels, {arch.get('image_size')})")
    model, header = load_prnc(args.file, seed=args.basis_seed)
    acc = accuracy(model, splits.test)
    if args.json:
        print(json.dumps({"test_acc": acc, "file": args.file, "dataset": args.data, "k": header["counts"]["k"],
                          "basis_seed": header["seed"] if args.basis_seed is None else args.basis_seed}))
    else:
        print(f"test accuracy {acc:.4f} ({len(splits.test)} examples of {args.data})")
    return 0


def cmd_decode(args) -> int:
    from reparam.cli.common import setup_runtime
    from reparam.core.fileformat import save_model
    from reparam.pranc.fileio import decode_prnc

    setup_runtime(args)
    out = Path(args.out)
    model, header = decode_prnc(args.file)
    save_model(out, model, {"model_spec": header.get("architecture"), "method": "pranc",
                            "source": str(args.file)})
    print(f"wrote {out} ({out.stat().st_size} bytes, {sum(p.numel() for p in model.parameters())} parameters)")
    return 0


def cmd_inspect(args) -> int:
    from reparam.pranc.fileio import inspect_prnc

    info = inspect_prnc(args.file)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    from reparam.cli.common import print_table

    rows = []
    for k, v in info.items():
        if k == "budgets" and len(v) > 8:
            v = f"{len(v)} layers, " + ", ".join(f"{n}:{b}" for n, b in list(v.items())[:8]) + ", ..."
        rows.append((k, v if not isinstance(v, dict) else json.dumps(v)))
    print_table(f"PRANC signature {args.file}", rows)
    return 0


# ---------------------------------------------------------------- sweep
def cmd_sweep(args) -> int:
    from reparam.cli.common import load_splits, print_table, run_folder, setup_runtime
    from reparam.cli.validate import names
    from reparam.core.outdir import write_json
    from reparam.experiments.pranc import runs as ex
    from reparam.metrics.plots import line_plot
    from reparam.models import build_from_spec, model_spec
    from reparam.pranc.config import PrancConfig

    setup_runtime(args)
    baselines = names(args.baselines, ("dense", "hashednet", "pruning", "regression", "narrow"), "--baselines",
                      "baseline")
    opts = _model_options(args.model_options)
    splits = load_splits(args)
    spec = model_spec(args.model, splits, **opts)
    probe = build_from_spec(spec)            # an unknown model or option fails here, before OUT exists
    check_k_fits(probe, PrancConfig(k=max(args.k), mode=args.mode, chunk=args.chunk), "--k")
    del probe
    rows: list[dict[str, Any]] = []
    from rich.progress import Progress

    with run_folder(args, resume=False) as work, Progress(disable=args.no_progress) as prog:
        per_seed = 1 + len(args.k) * (1 + sum(b in baselines for b in ("hashednet", "pruning", "regression",
                                                                           "narrow")))
        task = prog.add_task("sweep", total=args.seeds * per_seed)
        def add(r: dict[str, Any] | None, **fields: Any) -> None:
            if r is not None:
                rows.append({**r, **fields})
                write_json(work / "results.json", {"rows": rows, "args": _jsonable_args(args)})
            prog.advance(task)

        for s in range(args.seed, args.seed + args.seeds):
            tp = ex.pranc_tconfig(args.epochs, args.lr, s, args.batch_size)
            td = ex.dense_tconfig(args.epochs, s, args.dense_lr, args.batch_size)
            dense, r = ex.run_dense(spec, splits, td)
            add(r, seed=s)
            for k in args.k:
                _, r = ex.run_pranc(spec, splits, tp, PrancConfig(k=k, seed=s, mode=args.mode, chunk=args.chunk))
                add(r, seed=s, counts=None)
                if "hashednet" in baselines:
                    add(ex.run_hashednet(spec, splits, tp, k)[1], seed=s)
                if "pruning" in baselines:
                    add(ex.run_pruning(dense, splits, td, k), seed=s, k=k)
                if "regression" in baselines:
                    add(ex.run_regression(dense, splits, k, s), seed=s)
                if "narrow" in baselines:
                    add(ex.run_narrow(spec, splits, td, k), seed=s, k=k)
        summary = summarize(rows)
        series, errors = {}, {}
        for method, pts in summary.items():
            pts = sorted(pts, key=lambda p: p["stored"])
            series[method] = ([p["stored"] for p in pts], [p["acc_mean"] for p in pts])
            errors[method] = [p["acc_std"] for p in pts]
        line_plot(series, work / "accuracy_vs_stored.png", "stored numbers (log)", "test accuracy",
                  title=f"{args.model} on {args.data}: accuracy vs storage", logx=True, errors=errors)
        write_json(work / "results.json", {"rows": rows, "summary": summary, "args": _jsonable_args(args)})
    table = []
    for method, pts in summary.items():
        for p in sorted(pts, key=lambda p: p["stored"]):
            table.append((f"{method} k={p.get('k', '-')}", f"{p['acc_mean']:.4f} +- {p['acc_std']:.4f} "
                                                         f"(stored {p['stored']})"))
    print_table(f"PRANC sweep: {args.model} on {args.data}, {args.seeds} seed(s)", table)
    return 0


def summarize(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], r.get("k")), []).append(r)
    out: dict[str, list[dict[str, Any]]] = {}
    for (method, k), rs in groups.items():
        accs = [r["test_acc"] for r in rs]
        m = sum(accs) / len(accs)
        sd = math.sqrt(sum((a - m) ** 2 for a in accs) / (len(accs) - 1)) if len(accs) > 1 else 0.0
        out.setdefault(method, []).append({"k": k, "stored": int(round(sum(r["stored"] for r in rs) / len(rs))),
                                           "acc_mean": m, "acc_std": sd, "n": len(rs), "accs": accs})
    return out


def _jsonable_args(args) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k != "func" and not k.startswith("_")}


# ---------------------------------------------------------------- ablations
def cmd_ablate(args) -> int:
    from reparam.cli.common import load_splits, print_table, run_folder, setup_runtime
    from reparam.core.outdir import write_json
    from reparam.experiments.pranc import runs as ex
    from reparam.metrics.plots import line_plot
    from reparam.models import model_spec
    from reparam.pranc.config import PrancConfig
    from reparam.pranc.fileio import load_prnc

    setup_runtime(args)
    # everything a run reads is read (and refused) before OUT.partial exists
    if args.what in ("wrong-seed", "subsets", "fp16"):
        if args.file is None:
            raise ReparamError(f"ablation {args.what!r} needs --file (a trained .prnc)")
        model, header = load_prnc(args.file)
        splits = load_splits(args)
    elif args.what == "distribution":
        from reparam.models import build_from_spec

        splits = load_splits(args)
        spec = model_spec(args.model, splits, **_model_options(args.model_options))
        check_k_fits(build_from_spec(spec), PrancConfig(k=args.k), "--k")
    with run_folder(args, resume=False) as work:
        result: dict[str, Any] = {"what": args.what}
        if args.what == "orthogonality":
            rows = ex.orthogonality([10, 30, 100, 300, 1000])
            result["rows"] = rows
            line_plot({"mean |cos|": ([r["d"] for r in rows], [r["mean_abs_cos"] for r in rows]),
                       "max |cos| (mean of trials)": ([r["d"] for r in rows], [r["max_abs_cos"] for r in rows]),
                       "sqrt(2/(pi d))": ([r["d"] for r in rows], [r["sqrt_2_over_pi_d"] for r in rows])},
                      work / "orthogonality.png", "dimension d", "|cos|", logx=True, logy=True,
                      title="1000 random vectors: pairwise |cos|")
            table = [(f"d={r['d']}", f"norm {r['norm_mean']:.3f}+-{r['norm_std']:.3f}  mean|cos| "
                                     f"{r['mean_abs_cos']:.4f}  max|cos| {r['max_abs_cos']:.3f}") for r in rows]
        elif args.what == "distribution":
            variants = {"default-init": PrancConfig(k=args.k), "gaussian fan-in matched":
                        PrancConfig(k=args.k, distribution="gaussian"),
                        "gaussian sigma=0.001 (code otf)": PrancConfig(k=args.k, distribution="gaussian",
                                                                       sigma=0.001)}
            rows = []
            for s in range(args.seed, args.seed + args.seeds):
                for name, pc in variants.items():
                    pc.seed = s
                    _, r = ex.run_pranc(spec, splits, ex.pranc_tconfig(args.epochs, args.lr, s), pc)
                    rows.append({"variant": name, "seed": s, "test_acc": r["test_acc"]})
            result["rows"] = rows
            table = [(f"{r['variant']} seed {r['seed']}", r["test_acc"]) for r in rows]
        else:
            if args.what == "wrong-seed":
                right = ex.wrong_seed_accuracy(model, splits.test, [header["seed"]])[0]
                wrong_seeds = [header["seed"] + i for i in range(1, 6)]
                wrong = ex.wrong_seed_accuracy(model, splits.test, wrong_seeds)
                result.update(right_seed_acc=right, wrong_seeds=wrong_seeds, wrong_seed_accs=wrong)
                table = [("right seed", right)] + [(f"seed {s}", a) for s, a in zip(wrong_seeds, wrong)]
            elif args.what == "subsets":
                fr = [0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0]
                r = ex.subset_accuracy(model, splits.test, fr, repeats=4, seed=args.seed)
                result.update(r)
                line_plot({"top-|alpha|": (fr, r["top"]), "random (mean of 4)": (fr, r["random"])},
                          work / "subsets.png", "fraction of coefficients kept", "test accuracy",
                          title="keeping a subset of alpha")
                table = [(f"p={p:.1f}", f"top {t:.4f}  random {q:.4f}") for p, t, q in zip(fr, r["top"],
                                                                                              r["random"])]
            else:
                r = ex.fp16_accuracy(model, splits.test)
                result.update(r)
                table = [("alpha float32", r["fp32"]), ("alpha float16", r["fp16"])]
        write_json(work / "result.json", result)
    print_table(f"PRANC ablation: {args.what}", table)
    return 0
