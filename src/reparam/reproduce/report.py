"""report.md, report.html and results.json from the collected method reports (one source, three views)."""

from __future__ import annotations

import html
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from reparam import __version__
from reparam.core.fileformat import atomic_write_text
from reparam.core.outdir import write_json
from reparam.reproduce.claims import MethodReport

VERDICT_MARK = {"holds": "holds", "does not hold": "DOES NOT HOLD", "inconclusive": "inconclusive"}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def summary_rows(results: dict[str, MethodReport | str]) -> list[list[str]]:
    rows = []
    for name, r in results.items():
        if isinstance(r, str):
            rows.append([name, r, "", "", "", ""])
            continue
        s = r.summary
        delta = "n/a" if s.accuracy is None or s.dense_accuracy is None else \
            f"{100 * (s.accuracy - s.dense_accuracy):+.2f} pts"
        held = sum(c.verdict == "holds" for c in r.claims)
        rows.append([name, s.stored, f"{_pct(s.accuracy)} vs {_pct(s.dense_accuracy)} ({delta})",
                     _ratio(s.train_time_ratio), f"{held}/{len(r.claims)} hold", s.setting])
    return rows


SUMMARY_HEAD = ["method", "stored / saved", "accuracy vs dense", "training time vs dense", "claims", "setting"]
CLAIM_HEAD = ["claim", "paper", "measured", "verdict", "statistic"]


def _claim_row(c) -> list[str]:
    verdict = VERDICT_MARK[c.verdict] + (f" ({c.reason})" if c.reason else "")
    return [c.statement, f"{c.paper_value} ({c.paper_setting})", f"{c.measured_value} ({c.measured_setting})",
            verdict, c.statistic]


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _resumed(results: dict[str, MethodReport | str], meta: dict[str, Any]) -> str:
    """With --resume, methods finished earlier come from the cache: say what the whole report cost."""
    total = sum(r.seconds or 0.0 for r in results.values() if isinstance(r, MethodReport))
    if total <= meta["seconds"] + 60:
        return ""
    return (f" Methods finished by an earlier invocation in this folder (--resume) were reused; the methods' own "
            f"run times (each section) add up to {total / 60:.1f} minutes.")


def build_markdown(results: dict[str, MethodReport | str], meta: dict[str, Any]) -> str:
    out = [f"# reparam reproduction report ({meta['mode']})", "",
           f"Command: `{meta['command']}`  ",
           f"reparam {meta['version']}, torch {meta['torch']}, {meta['threads']} thread(s), {meta['machine']}  ",
           f"Started {meta['started']}, took {meta['seconds'] / 60:.1f} minutes, seed {meta['seed']}."
           + _resumed(results, meta),
           "",
           "Every number below was measured by this run; verdicts are computed from the measurements with the "
           "statistic stated in each row.", "", "## Summary", "", _md_table(SUMMARY_HEAD, summary_rows(results)), ""]
    for name, r in results.items():
        out += [f"## {name}", ""]
        if isinstance(r, str):
            out += [f"_{r}_", ""]
            continue
        out += [f"Ran in {r.seconds:.0f} s.", "", _md_table(CLAIM_HEAD, [_claim_row(c) for c in r.claims]), ""]
        for c in r.claims:
            if c.command:
                out.append(f"- `{c.claim_id}`: `{c.command}`")
        out.append("")
        for c in r.claims:
            for p in c.plots:
                out += [f"![{c.claim_id}]({p})", ""]
    return "\n".join(out)


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def build_html(results: dict[str, MethodReport | str], meta: dict[str, Any]) -> str:
    e = html.escape
    parts = [f"<h1>reparam reproduction report ({e(meta['mode'])})</h1>",
             f"<p>Command: <code>{e(meta['command'])}</code><br>reparam {e(meta['version'])}, torch "
             f"{e(meta['torch'])}, {meta['threads']} thread(s), {e(meta['machine'])}<br>Started "
             f"{e(meta['started'])}, took {meta['seconds'] / 60:.1f} minutes, seed {meta['seed']}."
             f"{e(_resumed(results, meta))}</p>",
             "<h2>Summary</h2>", _html_table(SUMMARY_HEAD, summary_rows(results))]
    for name, r in results.items():
        parts.append(f"<h2>{e(name)}</h2>")
        if isinstance(r, str):
            parts.append(f"<p><em>{e(r)}</em></p>")
            continue
        parts.append(f"<p>Ran in {r.seconds:.0f} s.</p>")
        parts.append(_html_table(CLAIM_HEAD, [_claim_row(c) for c in r.claims]))
        cmds = "".join(f"<li><code>{e(c.claim_id)}</code>: <code>{e(c.command)}</code></li>"
                       for c in r.claims if c.command)
        if cmds:
            parts.append(f"<ul>{cmds}</ul>")
        for c in r.claims:
            parts += [f'<figure><img src="{e(p)}" alt="{e(c.claim_id)}"><figcaption>{e(c.claim_id)}'
                      f"</figcaption></figure>" for p in c.plots]
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
             "vertical-align:top;font-size:90%}th{background:#f3f3f3}img{max-width:600px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>reparam report</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")


def write_report(out: Path, results: dict[str, MethodReport | str], meta: dict[str, Any]) -> None:
    meta = dict(meta, version=__version__, torch=torch.__version__,
                machine=f"{platform.machine()} {platform.system()}")
    atomic_write_text(out / "report.md", build_markdown(results, meta))
    atomic_write_text(out / "report.html", build_html(results, meta))
    records = {"meta": meta, "summary": [], "claims": [], "missing": {}}
    for name, r in results.items():
        if isinstance(r, str):
            records["missing"][name] = r
        else:
            records["summary"].append(asdict(r.summary) | {"seconds": r.seconds})
            records["claims"] += [asdict(c) for c in r.claims]
    write_json(out / "results.json", records)
