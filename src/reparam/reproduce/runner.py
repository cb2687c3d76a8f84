"""Runs each method's `reproduce.run(ctx)` and collects the results; finished methods are cached so a
killed `--full` run continues where it stopped."""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import asdict
from pathlib import Path

from reparam.core.errors import ReparamError
from reparam.core.outdir import write_json
from reparam.reproduce.claims import Claim, MethodReport, MethodSummary, ReproduceContext

# Order of sections in the report. A method whose package has not landed is listed as "not available".
METHODS = {
    "dense": "reparam.reproduce.dense",
    "pranc": "reparam.reproduce.pranc",
    "image-codec": "reparam.reproduce.image_codec",
    "mixturegrowth": "reparam.reproduce.mixturegrowth",
    "trp": "reparam.reproduce.trp",
    "compander": "reparam.reproduce.compander",
    "tickets": "reparam.reproduce.tickets",
    "adapters": "reparam.reproduce.adapters",
}


def _load(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and module.startswith(e.name):
            return None
        raise


def _from_cache(path: Path) -> MethodReport:
    d = json.loads(path.read_text())
    return MethodReport(summary=MethodSummary(**d["summary"]), claims=[Claim(**c) for c in d["claims"]],
                        seconds=d["seconds"])


def run_reproduce(ctx: ReproduceContext, methods: list[str] | None = None, progress=None
                  ) -> dict[str, MethodReport | str]:
    """Returns {method: MethodReport, or a string saying why it is missing}."""
    names = methods or list(METHODS)
    for n in names:
        if n not in METHODS:
            raise ReparamError(f"unknown method {n!r}; allowed: {', '.join(METHODS)}")
    cache = ctx.work_dir
    results: dict[str, MethodReport | str] = {}
    for name in names:
        cached = cache / f"{name}.json" if cache else None
        if cached is not None and cached.exists():
            results[name] = _from_cache(cached)
            continue
        module = _load(METHODS[name])
        if module is None:
            results[name] = "not available in this version"
            continue
        if progress:
            progress(name)
        t0 = time.perf_counter()
        report = module.run(ctx)
        report.seconds = report.seconds or time.perf_counter() - t0
        results[name] = report
        if cached is not None:
            write_json(cached, {"summary": asdict(report.summary), "claims": [asdict(c) for c in report.claims],
                                "seconds": report.seconds})
    return results
