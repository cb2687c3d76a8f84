"""Summarize a ticket-grid cache (finished cells only) into markdown tables, JSON and plots.

Usage: python benchmarks/tickets_summarize.py WORK OUT_DIR [--gaps]
Reads WORK/seed*/cell_*.json (written by benchmarks/tickets_grid.py or `reparam tickets compare --work`).
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

import torch

from reparam.experiments.tickets import report

CELL = re.compile(r"cell_([a-z]+)_(.+)_eps([0-9.e-]+)_sp([0-9.e-]+)_(.+)_(linear|full|lmp)\.json$")


def load_rows(work: Path) -> list[dict]:
    rows = []
    for seed_dir in sorted(work.glob("seed*")):
        seed = int(seed_dir.name[4:])
        for f in seed_dir.glob("cell_*.json"):
            m = CELL.match(f.name)
            if not m:
                continue
            scheme, pattern, eps, sp, target, proto = m.groups()
            rows.append({**json.loads(f.read_text()), "scheme": scheme, "pattern": pattern, "eps": float(eps),
                         "sparsity_target": float(sp), "target": target, "protocol": proto, "seed": seed})
    return rows


def fmt(s: dict) -> str:
    return f"{s['mean']:+.2f} ± {s['std']:.2f} ({100 * s['share_pos']:.0f}%, n={s['n']})" if s["n"] else "-"


def omp_tables(rows, out: list[str]) -> None:
    tab = report.mean_table([r for r in rows if r["scheme"] == "omp"])
    eps_vals = sorted({k[4] for k in tab})
    targets = sorted({k[2] for k in tab})
    sps = sorted({k[3] for k in tab})
    protos = [p for p in ("full", "linear") if any(k[1] == p for k in tab)]
    out.append("### OMP: mean test accuracy (%) over seeds, " + " / ".join(protos) + "\n")
    out.append("| target | sparsity | " + " | ".join(f"eps={e:g}" for e in eps_vals) + " |")
    out.append("|---|---|" + "---|" * len(eps_vals))
    for t in targets:
        for s in sps:
            cells = []
            for e in eps_vals:
                vals = [tab.get(("omp", p, t, s, e)) for p in protos]
                cells.append(" / ".join(f"{v['mean']:.1f}" if v else "-" for v in vals))
            out.append(f"| {t} | {s:g} | " + " | ".join(cells) + " |")
    out.append("")
    d = report.paired_deltas([r for r in rows if r["scheme"] == "omp"])
    out.append("### OMP: paired robust − natural deltas (pp; mean ± std over cells, share of cells > 0, n)\n")
    out.append("| protocol | eps | all sparsities | sparsity ≥ 0.9 | sparsity ≤ 0.8 | growth (≥0.9 minus ≤0.8) |")
    out.append("|---|---|---|---|---|---|")
    for p in protos:
        for e in eps_vals:
            if e == 0:
                continue
            base = report.select(d, protocol=p, eps=e)
            hi = report.summarize(report.select(base, sparsity_target=lambda s: s >= 0.9))
            lo = report.summarize(report.select(base, sparsity_target=lambda s: s <= 0.8))
            g = f"{hi['mean'] - lo['mean']:+.2f}" if hi["n"] and lo["n"] else "-"
            out.append(f"| {p} | {e:g} | {fmt(report.summarize(base))} | {fmt(hi)} | {fmt(lo)} | {g} |")
    for p in protos:
        sel = report.selected_eps_deltas(rows, p, "omp")
        if sel:
            hi = report.summarize(report.select(sel, sparsity_target=lambda s: s >= 0.9))
            out.append(f"| {p} | per-task eps (best val acc of the dense transfer) | "
                       f"{fmt(report.summarize(sel))} | {fmt(hi)} | | |")
    out.append("")
    out.append("### OMP: per-target paired delta (pp, mean over sparsities and seeds)\n")
    out.append("| protocol | eps | " + " | ".join(targets) + " |")
    out.append("|---|---|" + "---|" * len(targets))
    for p in protos:
        for e in eps_vals:
            if e == 0:
                continue
            vals = [report.summarize(report.select(d, protocol=p, eps=e, target=t)) for t in targets]
            out.append(f"| {p} | {e:g} | " + " | ".join(f"{v['mean']:+.2f}" if v["n"] else "-" for v in vals)
                       + " |")
    out.append("")
    for metric, label in (("robust_acc", "PGD-20 robust accuracy (eps 0.1, first 50 test images)"),
                          ("ood_auroc", "MSP OOD AUROC (target test vs source test)")):
        dm = report.paired_deltas([r for r in rows if r["scheme"] == "omp"], metric=metric)
        if not dm:
            continue
        out.append(f"### OMP: paired delta of {label} (pp)\n")
        out.append("| protocol | eps | all sparsities | sparsity ≥ 0.9 |")
        out.append("|---|---|---|---|")
        for p in protos:
            for e in eps_vals:
                if e == 0:
                    continue
                base = report.select(dm, protocol=p, eps=e)
                hi = report.select(base, sparsity_target=lambda s: s >= 0.9)
                out.append(f"| {p} | {e:g} | {fmt(report.summarize(base))} | {fmt(report.summarize(hi))} |")
        tabm = report.mean_table([r for r in rows if r["scheme"] == "omp"], metric)
        nat = [v["mean"] for k, v in tabm.items() if k[4] == 0]
        rob = {e: [v["mean"] for k, v in tabm.items() if k[4] == e] for e in eps_vals if e}
        out.append("\nmean over all cells: natural " + f"{statistics.fmean(nat):.1f}"
                   + "".join(f", eps {e:g}: {statistics.fmean(v):.1f}" for e, v in rob.items() if v) + "\n")


def gap_section(rows, work: Path, out: list[str], summary: dict) -> None:
    from reparam.core.fileformat import load_model_state
    from reparam.experiments.tickets.grid import GridConfig, build, domain_gaps, load_source

    cfg_path = work / "config.json"
    cfg = GridConfig(**json.loads(cfg_path.read_text()))
    gaps: dict[str, dict[str, float]] = {}
    seeds = sorted({r["seed"] for r in rows})
    for seed in seeds:
        src = load_source(cfg, seed)
        nat = build(cfg, src)
        load_model_state(work / f"seed{seed}" / "pre_eps0.safetensors", nat)
        for t, v in domain_gaps(cfg, nat, src, seed).items():
            g = gaps.setdefault(t, {"mmd": 0.0, "a_distance": 0.0})
            for k in v:
                g[k] += v[k] / len(seeds)
    omp = [r for r in rows if r["scheme"] == "omp"]
    out.append("### Domain gap vs gain (OMP; Spearman ρ across targets)\n")
    out.append("| protocol | eps | ρ(natural dense acc, Δ) | ρ(linear MMD, Δ) | ρ(proxy A-distance, Δ) |")
    out.append("|---|---|---|---|---|")
    for p in ("linear", "full"):
        for e in sorted({r["eps"] for r in omp}):
            if e == 0 or not any(r["protocol"] == p for r in omp):
                continue
            c = report.domain_gain_correlation(omp, e, p, "omp", gaps)
            summary[f"gap_{p}_{e:g}"] = c
            out.append(f"| {p} | {e:g} | {c.get('rho_natural_acc', float('nan')):+.2f} | "
                       f"{c.get('rho_mmd', float('nan')):+.2f} | {c.get('rho_a_distance', float('nan')):+.2f} |")
    out.append("\n| target | linear MMD | proxy A-distance |\n|---|---|---|")
    for t, v in sorted(gaps.items()):
        out.append(f"| {t} | {v['mmd']:.3f} | {v['a_distance']:.3f} |")
    out.append("")
    summary["gaps"] = gaps


def imp_section(rows, out: list[str]) -> None:
    schemes = {r["scheme"] for r in rows}
    if not {"imp", "aimp"} & schemes:
        return
    out.append("### IMP / A-IMP / LMP: paired deltas (pp; mean ± std, share > 0, n)\n")
    out.append("| comparison | protocol | delta |")
    out.append("|---|---|---|")

    def pair(a_scheme, a_eps, b_scheme, b_eps, proto):
        a = {(r["target"], r["sparsity_target"], r["seed"]): r["test_acc"] for r in rows
             if r["scheme"] == a_scheme and r["eps"] == a_eps and r["protocol"] == proto}
        b = {(r["target"], r["sparsity_target"], r["seed"]): r["test_acc"] for r in rows
             if r["scheme"] == b_scheme and r["eps"] == b_eps and r["protocol"] == proto}
        d = [{"delta": 100 * (a[k] - b[k])} for k in a if k in b]
        return report.summarize(d)

    rob = max(r["eps"] for r in rows)
    comps = [("IMP(robust θ_pre) − IMP(natural θ_pre)", "imp", rob, "imp", 0.0),
             ("A-IMP(robust θ_pre) − IMP(natural θ_pre)", "aimp", rob, "imp", 0.0),
             ("A-IMP(natural θ_pre) − IMP(natural θ_pre)", "aimp", 0.0, "imp", 0.0),
             ("A-IMP(robust θ_pre) − IMP(robust θ_pre)", "aimp", rob, "imp", rob),
             ("OMP(robust) − OMP(natural)", "omp", rob, "omp", 0.0),
             ("IMP(natural) − OMP(natural)", "imp", 0.0, "omp", 0.0)]
    for proto in ("linear", "full"):
        for name, a, ae, b, be in comps:
            s = pair(a, ae, b, be, proto)
            if s["n"]:
                out.append(f"| {name} | {proto} | {fmt(s)} |")
    s = pair("lmp", rob, "lmp", 0.0, "lmp")
    if s["n"]:
        out.append(f"| LMP(robust) − LMP(natural) (LMP's own accuracy) | lmp | {fmt(s)} |")
    tab = report.mean_table(rows)
    out.append("\nmean accuracy (%) by scheme and eps (over targets, sparsities, seeds):\n")
    out.append("| scheme | protocol | natural | robust |\n|---|---|---|---|")
    for sch in ("omp", "imp", "aimp", "lmp"):
        for proto in ("linear", "full", "lmp"):
            n = [v["mean"] for k, v in tab.items() if k[0] == sch and k[1] == proto and k[4] == 0]
            r = [v["mean"] for k, v in tab.items() if k[0] == sch and k[1] == proto and k[4] == rob]
            if n and r:
                out.append(f"| {sch} | {proto} | {statistics.fmean(n):.1f} | {statistics.fmean(r):.1f} |")
    out.append("")


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    work, out_dir = Path(argv[0]), Path(argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = load_rows(work)
    out: list[str] = [f"<!-- generated by benchmarks/tickets_summarize.py from {work} ({len(rows)} cells) -->\n"]
    summary: dict = {"cells": len(rows)}
    if any(r["scheme"] == "omp" and r["sparsity_target"] == 0 for r in rows):
        omp_tables(rows, out)
        if "--gaps" in argv:
            gap_section(rows, work, out, summary)
    imp_section(rows, out)
    for sch in sorted({r["scheme"] for r in rows}):
        summary.setdefault("plots", []).extend(report.plot_accuracy(rows, out_dir, sch))
    summary["headline"] = report.headline(rows)
    (out_dir / "tables.md").write_text("\n".join(out) + "\n")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    with open(out_dir / "rows.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
