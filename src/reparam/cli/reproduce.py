"""`reparam reproduce`: the main job (`make run`)."""

from __future__ import annotations

import argparse
import shlex
import time
from datetime import datetime, timezone
from pathlib import Path

from reparam.cli.common import add_runtime_args, seed_int, setup_runtime
from reparam.core.errors import ReparamError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="check every paper's central claims and write a report",
                       description="Run each method's central claims at small scale and write report.md, "
                                   "report.html, results.json and plots into runs/reproduce-<timestamp>/.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", default=True,
                      help="embedded data only, at most ~15 minutes on 2 cores (default)")
    mode.add_argument("--full", action="store_true", help="Fashion-MNIST and larger models (hours, resumable)")
    p.add_argument("--out", default=None, help="report folder (default runs/reproduce-<timestamp>); written as "
                                                "OUT.partial, renamed to OUT when the report is complete")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    p.add_argument("--resume", default=None, metavar="OUT",
                   help="continue the run whose report folder is OUT (its OUT.partial, or a finished OUT), "
                        "reusing finished methods; refused when the options differ from that run's")
    p.add_argument("--force", action="store_true",
                   help="with --resume: continue with the settings the run was started with")
    p.add_argument("--methods", default=None, help="comma-separated subset of methods")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # smoke-test size, for the tests
    add_runtime_args(p)
    # --out/--resume are checked in run() (both name OUT); a resumed run may add --methods
    p.set_defaults(func=run, out_kind=None, _resume_free=("methods",))


def _resumable(out: Path, work: Path) -> None:
    """--resume OUT needs OUT.partial (a killed run) or a finished report folder OUT."""
    if work.exists() and not work.is_dir():
        raise ReparamError(f"--resume: {work} is a file, not a report folder")
    if work.is_dir():
        return
    if out.is_dir() and (out / "cache").is_dir():
        return
    if out.exists():
        raise ReparamError(f"--resume {out}: not a report folder of `reparam reproduce` (no cache/ inside)")
    raise ReparamError(f"--resume {out}: neither {out} nor {work} exists, so there is nothing to resume")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from reparam.cli.validate import check_output, check_resume, names, run_folder
    from reparam.reproduce.claims import ReproduceContext
    from reparam.reproduce.report import summary_rows, write_report
    from reparam.reproduce.runner import METHODS, run_reproduce

    setup_runtime(args)
    console = Console()
    quick = not args.full
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    methods = names(args.methods, METHODS, "--methods", "method") if args.methods is not None else None
    if args.resume is not None and args.out is not None and Path(args.resume) != Path(args.out):
        raise ReparamError(f"--resume {args.resume} and --out {args.out} name different folders; give one")
    out = Path(args.resume or args.out or f"runs/reproduce-{stamp}")
    work = Path(str(out) + ".partial")
    if args.resume is not None:
        _resumable(out, work)
        check_resume(args, work)   # a finished OUT keeps no settings: its cache is reused as it is
        if not work.exists():      # a finished report: continue it in OUT.partial, reusing its cache
            out.rename(work)
    else:
        check_output(out, kind="folder", overwrite=args.overwrite)
    args.resume = args.resume is not None     # run_folder keeps OUT.partial when resuming
    args.out = str(out)
    t0 = time.perf_counter()
    with run_folder(args) as folder:
        ctx = ReproduceContext(out_dir=folder, quick=quick, seed=args.seed, threads=args.threads or 1,
                               work_dir=folder / "cache", tiny=args.tiny)
        results = run_reproduce(ctx, methods, progress=lambda name: console.print(f"[bold]running {name}[/] ..."))
        mode = "tiny (smoke test)" if args.tiny else "quick" if quick else "full"
        command = "reparam " + " ".join(shlex.quote(a) for a in args.argv)
        meta = {"mode": mode, "seed": args.seed, "threads": ctx.threads, "command": command, "started": stamp,
                "seconds": time.perf_counter() - t0}
        write_report(folder, results, meta)
    from rich.table import Table

    # the terminal gets the short columns; what is stored and the settings are in the report
    table = Table(title="reparam reproduce: summary")
    for h in ("method", "accuracy vs dense", "train time vs dense", "claims"):
        table.add_column(h)
    for row in summary_rows(results):
        table.add_row(row[0], row[2], row[3], row[4])
    console.print(table)
    console.print(f"report: {out / 'report.md'} (also report.html, results.json)")
    return 0
