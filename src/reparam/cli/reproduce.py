"""`reparam reproduce`: the main job (`make run`)."""

from __future__ import annotations

import argparse
import shlex
import time
from datetime import datetime, timezone
from pathlib import Path

from reparam.cli.common import add_runtime_args, setup_runtime


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="check every paper's central claims and write a report",
                       description="Run each method's central claims at small scale and write report.md, "
                                   "report.html, results.json and plots into runs/reproduce-<timestamp>/.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", default=True,
                      help="embedded data only, at most ~15 minutes on 2 cores (default)")
    mode.add_argument("--full", action="store_true", help="Fashion-MNIST and larger models (hours, resumable)")
    p.add_argument("--out", default=None, help="report folder (default runs/reproduce-<timestamp>)")
    p.add_argument("--resume", default=None, help="continue a killed run in this folder, reusing finished methods")
    p.add_argument("--methods", default=None, help="comma-separated subset of methods")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # smoke-test size, for the tests
    add_runtime_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from reparam.reproduce.claims import ReproduceContext
    from reparam.reproduce.report import summary_rows, write_report
    from reparam.reproduce.runner import run_reproduce

    setup_runtime(args)
    console = Console()
    quick = not args.full
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = Path(args.resume or args.out or f"runs/reproduce-{stamp}")
    out.mkdir(parents=True, exist_ok=True)
    work = out / "cache"
    ctx = ReproduceContext(out_dir=out, quick=quick, seed=args.seed, threads=args.threads or 1, work_dir=work,
                           tiny=args.tiny)
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    t0 = time.perf_counter()
    results = run_reproduce(ctx, methods, progress=lambda name: console.print(f"[bold]running {name}[/] ..."))
    mode = "tiny (smoke test)" if args.tiny else "quick" if quick else "full"
    command = "reparam " + " ".join(shlex.quote(a) for a in args.argv)
    meta = {"mode": mode, "seed": args.seed, "threads": ctx.threads, "command": command, "started": stamp,
            "seconds": time.perf_counter() - t0}
    write_report(out, results, meta)
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
