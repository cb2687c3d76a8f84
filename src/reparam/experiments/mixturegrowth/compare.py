"""`reparam grow compare`: the paper's Tables 1, 2, 4 and 6 (and Figs. 3b, 4) at small scale, over seeds.

Runs are appended to results.jsonl as they finish, so an interrupted comparison resumes where it stopped.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from reparam.core.errors import ReparamError, choose
from reparam.experiments.mixturegrowth.cka import save_heatmap
from reparam.experiments.mixturegrowth.pipeline import (
    METHODS,
    GrowSettings,
    RunResult,
    epoch_cka,
    run_method,
    train_net1,
)

TABLES = ("1", "2", "4", "6")
TABLE1_METHODS = ("large", "large-match", "small", "small-match", "random", "net2net", "wo-fusion",
                  "mixturegrowth")
CKA_METHODS = ("large", "random", "wo-fusion", "mixturegrowth")


@dataclass
class Job:
    table: str
    method: str
    seed: int
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return json.dumps({"method": self.method, "seed": self.seed, **self.overrides}, sort_keys=True)


def plan_jobs(seeds: list[int], tables: list[str], methods: list[str], coef_inits: list[str],
              fractions: list[float], sweep_budget: float, layouts: list[str]) -> list[Job]:
    for t in tables:
        choose(t, TABLES, "table")
    for m in methods:
        choose(m, METHODS, "method")
    jobs: list[Job] = []
    for seed in seeds:
        if "1" in tables:
            jobs += [Job("1", m, seed) for m in methods]
        if "4" in tables:
            jobs += [Job("4", "mixturegrowth", seed, {"coef_init": c}) for c in coef_inits]
        if "2" in tables:
            jobs.append(Job("2", "wo-fusion", seed, {"budget": sweep_budget}))
            jobs += [Job("2", "mixturegrowth", seed, {"budget": sweep_budget, "fraction": f}) for f in fractions]
        if "6" in tables:
            jobs += [Job("6", "mixturegrowth", seed, {"budget": sweep_budget, "layout": lay}) for lay in layouts]
    return jobs


def _normalize(base: GrowSettings, job: Job) -> dict[str, Any]:
    """The overrides that differ from the base settings (so equal runs share one key)."""
    return {k: v for k, v in job.overrides.items() if getattr(base, k) != v}


def run_jobs(jobs: list[Job], base: GrowSettings, load_splits, work: Path, progress=None) -> list[dict]:
    results_path = work / "results.jsonl"
    done: dict[str, dict] = {}
    if results_path.exists():
        for line in results_path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                done[rec["key"]] = rec
    unique: dict[str, Job] = {}
    for job in jobs:
        job = Job(job.table, job.method, job.seed, _normalize(base, job))
        unique.setdefault(job.key, job)
    records = []
    splits_cache: dict[int, Any] = {}
    for i, (key, job) in enumerate(unique.items()):
        if key in done:
            records.append(done[key])
            continue
        if progress:
            progress(i, len(unique), job)
        s = replace(base, seed=job.seed, **job.overrides).validate()
        if job.seed not in splits_cache:
            splits_cache[job.seed] = load_splits(job.seed)
        splits = splits_cache[job.seed]
        net1 = None
        if job.method in ("mixturegrowth", "wo-fusion", "random", "random-full", "net2net"):
            net1, _ = train_net1(s, splits, work / "cache")
        res: RunResult = run_method(job.method, s, splits, net1)
        rec = {"key": key, "table": job.table, "settings": asdict(s), **res.to_dict()}
        if job.method in CKA_METHODS and not job.overrides:
            rec["cka_epochs"] = epoch_cka(res).tolist()
            rec["snapshot_phases"] = res.snapshot_phases
        with results_path.open("a") as f:
            f.write(json.dumps(rec, default=float) + "\n")
        records.append(rec)
    return records


def cka_plots(records: list[dict], base: GrowSettings, out: Path) -> list[str]:
    """Fig. 4 analogue: epoch x epoch CKA of the penultimate features, first seed of each method."""
    written = []
    for m in CKA_METHODS:
        rs = sorted([r for r in records if r["method"] == m and "cka_epochs" in r], key=lambda r: r["seed"])
        if not rs:
            continue
        r = rs[0]
        ph = r.get("snapshot_phases", [])
        marks = [i for i in range(1, len(ph)) if ph[i] != ph[i - 1]]
        name = f"cka_epochs_{m}.png"
        save_heatmap(torch.tensor(r["cka_epochs"]), out / name, f"{m} (seed {r['seed']}): CKA across epochs",
                     "epoch", "epoch", marks)
        written.append(name)
    return written


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    m = 100 * statistics.mean(values)
    sd = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{m:.2f} ± {sd:.2f}"


def _group(records: list[dict], pred) -> list[dict]:
    return [r for r in records if pred(r)]


def summarize(records: list[dict], base: GrowSettings) -> tuple[str, dict[str, Any]]:
    """Markdown tables (mean ± std over seeds, accuracies in %) and the numbers behind them."""
    lines: list[str] = []
    numbers: dict[str, Any] = {}

    def same(r, **kw):
        st = r["settings"]
        for k in ("budget", "fraction", "coef_init", "layout"):
            want = kw.get(k, getattr(base, k))
            if st[k] != want:
                return False
        return True

    t1 = [m for m in TABLE1_METHODS + ("random-full",) if _group(records, lambda r, m=m: r["method"] == m
                                                                  and same(r))]
    if t1:
        lines += [f"### Table 1 analogue: equal budget {base.budget}X (x = {base.fraction} for MixtureGrowth)", "",
                  "| method | test acc % | FLOPs norm | acc right after growth % | seeds |",
                  "|---|---|---|---|---|"]
        numbers["table1"] = {}
        for m in t1:
            rs = _group(records, lambda r, m=m: r["method"] == m and same(r))
            acc = [r["test_acc"] for r in rs]
            at = [r["extra"]["grown_test_acc_at_growth"] for r in rs if "grown_test_acc_at_growth" in r["extra"]]
            fl = statistics.mean(r["flops_norm"] for r in rs)
            numbers["table1"][m] = {"test_acc": acc, "flops_norm": fl, "at_growth": at}
            lines.append(f"| {m} | {_ms(acc)} | {fl:.3f}X | {_ms(at)} | {len(rs)} |")
        lines.append("")
    inits = sorted({r["settings"]["coef_init"] for r in records if r["method"] == "mixturegrowth"
                    and same(r, coef_init=r["settings"]["coef_init"])})
    if len(inits) > 1:
        lines += ["### Table 4 / Fig. 3b analogue: coefficient initialization of the new blocks", "",
                  "| coef init | test acc % | ensemble before growth % | right after growth % | seeds |",
                  "|---|---|---|---|---|"]
        numbers["table4"] = {}
        for c in inits:
            rs = _group(records, lambda r, c=c: r["method"] == "mixturegrowth" and same(r, coef_init=c))
            acc = [r["test_acc"] for r in rs]
            ens = [r["extra"].get("ensemble_test_acc", float("nan")) for r in rs]
            at = [r["extra"]["grown_test_acc_at_growth"] for r in rs]
            numbers["table4"][c] = {"test_acc": acc, "ensemble": ens, "at_growth": at}
            lines.append(f"| {c} | {_ms(acc)} | {_ms(ens)} | {_ms(at)} | {len(rs)} |")
        lines.append("")
    budgets = sorted({r["settings"]["budget"] for r in records} - {base.budget})
    for b in budgets:
        rows = []
        wo = _group(records, lambda r, b=b: r["method"] == "wo-fusion" and r["settings"]["budget"] == b)
        if wo:
            rows.append((0.0, [r["test_acc"] for r in wo]))
        fr = sorted({r["settings"]["fraction"] for r in records if r["method"] == "mixturegrowth"
                     and r["settings"]["budget"] == b and r["settings"]["layout"] == base.layout
                     and r["settings"]["coef_init"] == base.coef_init})
        for f in fr:
            rs = _group(records, lambda r, f=f, b=b: r["method"] == "mixturegrowth" and r["settings"]["budget"] == b
                        and r["settings"]["fraction"] == f and r["settings"]["layout"] == base.layout
                        and r["settings"]["coef_init"] == base.coef_init)
            rows.append((f, [r["test_acc"] for r in rs]))
        if len(rows) > 1:
            lines += [f"### Table 2 analogue: fraction x of network-2 training at {b}X (0.0 = w/o fusion)", "",
                      "| " + " | ".join(f"x={f:g}" for f, _ in rows) + " |",
                      "|" + "---|" * len(rows),
                      "| " + " | ".join(_ms(a) for _, a in rows) + " |", ""]
            numbers.setdefault("table2", {})[str(b)] = {str(f): a for f, a in rows}
        lays = sorted({r["settings"]["layout"] for r in records if r["method"] == "mixturegrowth"
                       and r["settings"]["budget"] == b})
        if len(lays) > 1:
            lines += [f"### Table 6 analogue: growth layout at {b}X (x = {base.fraction})", "",
                      "| layout | test acc % | seeds |", "|---|---|---|"]
            for lay in lays:
                rs = _group(records, lambda r, lay=lay, b=b: r["method"] == "mixturegrowth"
                            and r["settings"]["budget"] == b and r["settings"]["layout"] == lay
                            and r["settings"]["fraction"] == base.fraction)
                acc = [r["test_acc"] for r in rs]
                numbers.setdefault("table6", {})[lay] = acc
                lines.append(f"| {lay} | {_ms(acc)} | {len(rs)} |")
            lines.append("")
    cka_rows = []
    for m in CKA_METHODS:
        rs = [r for r in records if r["method"] == m and "cka_epochs" in r and same(r)]
        if not rs:
            continue
        adj, boundary = [], []
        for r in rs:
            mat = r["cka_epochs"]
            adj += [mat[i][i + 1] for i in range(len(mat) - 1)]
            ph = r.get("snapshot_phases", [])
            boundary += [mat[i - 1][i] for i in range(1, len(ph)) if ph[i] != ph[i - 1]]
        cka_rows.append((m, adj, boundary, len(rs)))
    if cka_rows:
        lines += ["### Fig. 4 analogue: linear CKA of the penultimate features between epochs", "",
                  "| method | mean CKA(epoch, epoch+1) | min CKA(epoch, epoch+1) | CKA across the growth step "
                  "| seeds |",
                  "|---|---|---|---|---|"]
        for m, adj, boundary, n in cka_rows:
            b = f"{statistics.mean(boundary):.3f}" if boundary else "-"
            lines.append(f"| {m} | {statistics.mean(adj):.3f} | {min(adj):.3f} | {b} | {n} |")
            numbers.setdefault("cka", {})[m] = {"adjacent": adj, "growth_step": boundary}
        lines.append("")
    return "\n".join(lines), numbers


def growth_curves(records: list[dict], base: GrowSettings, path: Path) -> Path | None:
    """Fig. 3b analogue: validation accuracy from the growth step to the end, per coefficient init."""
    from reparam.metrics.plots import line_plot

    series, errors = {}, {}
    for c in sorted({r["settings"]["coef_init"] for r in records if r["method"] == "mixturegrowth"}):
        rs = [r for r in records if r["method"] == "mixturegrowth" and r["settings"]["coef_init"] == c
              and r["settings"]["budget"] == base.budget and r["settings"]["fraction"] == base.fraction
              and r["settings"]["layout"] == base.layout]
        if not rs:
            continue
        curves = []
        for r in rs:
            grown = [h["val_acc"] for h in r["history"] if h.get("phase") == "grown"]
            curves.append([r["extra"]["grown_val_acc_at_growth"]] + grown)
        n = min(len(c_) for c_ in curves)
        t = torch.tensor([c_[:n] for c_ in curves]) * 100
        series[c] = (list(range(n)), t.mean(0).tolist())
        errors[c] = t.std(0).tolist() if len(curves) > 1 else [0.0] * n
    if not series:
        return None
    return line_plot(series, path, "epochs after growth (0 = right after growth)", "val accuracy %",
                     "MixtureGrowth: accuracy from the growth step", errors=errors)


def check_budget(base: GrowSettings) -> None:
    if base.budget <= 0:
        raise ReparamError(f"budget must be > 0, got {base.budget}")
