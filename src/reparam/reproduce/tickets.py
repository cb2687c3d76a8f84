"""`reparam reproduce` hook: the paper's central claims measured at small scale.

Quick mode: source = digits 0-4, targets = digits 5-9 (10 shots per class) under domain shifts; OMP tickets
from a naturally (eps = 0) and a PGD-pretrained (eps = 0.1) small CNN; paired robust - natural deltas per
seed. Full mode: source = Fashion-MNIST classes 0-4 (a 3,000-image train subset), targets = classes 5-9 of
fashion-mnist, fashion-mnist-noisy and digits28 (at most 2,000 test images each), eps 0 / 0.02 / 0.1 / 0.3,
linear evaluation and full fine-tuning; the claims compare eps 0.1 with natural tickets.
Verdicts come from the measured deltas with the statistic written next to them.
"""

from __future__ import annotations

import json
import shlex
import tempfile
import time
from pathlib import Path

from reparam.reproduce.claims import Claim, MethodReport, MethodSummary, ReproduceContext

PAPER = "Fu et al., Robust Tickets Can Transfer Better (DAC 2023, arXiv 2304.11834)"


def grid_for(ctx: ReproduceContext):
    from reparam.experiments.tickets.grid import GridConfig

    seeds = list(range(ctx.seed, ctx.seed + (1 if ctx.tiny else ctx.seeds)))
    if ctx.tiny and ctx.quick:
        return GridConfig(eps=[0.0, 0.1], pre_epochs=1, pgd_steps=1, targets=["digits-noisy"],
                          sparsities=[0.0, 0.9], protocols=["linear"], lin_steps=30, eval_limit=20, ood=True,
                          model_options={"width": 0.5}, seeds=seeds)
    if ctx.quick:
        # linear evaluation only (full fine-tuning is in the --full grid): about 25 CPU-seconds per seed
        return GridConfig(eps=[0.0, 0.1], pre_epochs=8, pgd_steps=3, targets=["digits-noisy", "digits-rotated"],
                          sparsities=[0.0, 0.8, 0.9, 0.95, 0.98], protocols=["linear"], lin_steps=200,
                          eval_limit=50, model_options={"width": 0.5}, seeds=seeds)
    # full: a Fashion-MNIST source; targets = its other five classes (clean and noisy) and digits at 28x28
    full = dict(source=ctx.dataset, source_classes=[0, 1, 2, 3, 4], source_subset=ctx.train_subset("tickets"),
                target_classes=[5, 6, 7, 8, 9], model_options={"width": 0.5}, seeds=seeds)
    if ctx.tiny:   # two classes each way keep the source test and target val splits small (seconds)
        full.update(source_classes=[0, 1], target_classes=[5, 6])
        return GridConfig(eps=[0.0, 0.1], pre_epochs=1, pgd_steps=1, targets=["fashion-mnist-noisy"],
                          sparsities=[0.0, 0.9], protocols=["linear"], lin_steps=30, eval_limit=10, ood=False,
                          test_limit=ctx.test_limit, source_eval_limit=20, **full)
    return GridConfig(eps=[0.0, 0.02, 0.1, 0.3], pre_epochs=10, targets=["fashion-mnist", "fashion-mnist-noisy",
                                                                        "digits28"],
                      sparsities=[0.0, 0.8, 0.9, 0.95, 0.98], protocols=["linear", "full"], ft_epochs=15,
                      eval_limit=100, test_limit=2000, source_eval_limit=1000, **full)


def _grid_command(cfg, work: str) -> str:
    """The benchmark-script command that runs the same grid per seed (`reparam tickets compare` has no
    options for the source subset and the test limits)."""
    from dataclasses import fields

    from reparam.experiments.tickets.grid import GridConfig

    default = GridConfig()
    opts = " ".join(shlex.quote(f"{f.name}={json.dumps(getattr(cfg, f.name))}") for f in fields(cfg)
                    if f.name != "seeds" and getattr(cfg, f.name) != getattr(default, f.name))
    return (f"for s in {' '.join(map(str, cfg.seeds))}; do python benchmarks/tickets_grid.py {work} $s {opts}; "
            "done")


def _classes(c: list[int]) -> str:
    return f"{c[0]}-{c[-1]}" if c == list(range(c[0], c[-1] + 1)) else ",".join(map(str, c))


def _verdict(mean: float, share: float, gate_mean: float, gate_share: float) -> str:
    if mean >= gate_mean and share >= gate_share:
        return "holds"
    if mean <= 0:
        return "does not hold"
    return "inconclusive"


def run(ctx: ReproduceContext) -> MethodReport:
    from reparam.core.runtime import set_threads
    from reparam.experiments.tickets import report
    from reparam.experiments.tickets.grid import run_seed

    t0 = time.perf_counter()
    set_threads(ctx.threads)
    cfg = grid_for(ctx).check()
    tmp = None
    if ctx.work_dir is not None:
        # the grid cache's keys do not name the data: full mode keeps its own folder
        work = Path(ctx.work_dir) / ("tickets" if ctx.quick else "tickets-full")
    else:
        tmp = tempfile.TemporaryDirectory(prefix="tickets-")
        work = Path(tmp.name)
    rows = []
    try:
        for seed in cfg.seeds:
            rows += run_seed(cfg, seed, work, progress=lambda _m: None)
    finally:
        if tmp is not None:
            tmp.cleanup()
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    plots = report.plot_accuracy(rows, Path(ctx.out_dir), "omp")
    d = report.paired_deltas(rows)
    eps = 0.1 if 0.1 in cfg.eps else max(cfg.eps)   # the headline robust model (quick: eps [0, 0.1])
    if ctx.quick:
        setting = (f"digits 0-4 -> digits 5-9 x {{{', '.join(cfg.targets)}}}, {cfg.shots} shots/class; "
                   f"{cfg.model} {cfg.model_options}; PGD-Linf eps {eps} ({cfg.pgd_steps} steps) vs natural, "
                   f"{cfg.pre_epochs} pretrain epochs; OMP global; seeds {cfg.seeds}")
        cmd = ("reparam tickets compare --eps 0,0.1 --seeds " + ",".join(map(str, cfg.seeds))
               + f" --targets {','.join(cfg.targets)} --sparsity {','.join(f'{s:g}' for s in cfg.sparsities)}"
               + f" --protocols {','.join(cfg.protocols)} --pretrain-epochs {cfg.pre_epochs} --out runs/tickets")
    else:
        others = ", ".join(f"{e:g}" for e in cfg.eps if e not in (0.0, eps))
        others = f"; eps {others} in the plots" if others else ""
        setting = (f"Fashion-MNIST 28x28 classes {_classes(cfg.source_classes)} ({cfg.source_subset:,} source "
                   f"train images) -> classes {_classes(cfg.target_classes)} of {{{', '.join(cfg.targets)}}}, "
                   f"{cfg.shots} shots/class, <= {cfg.test_limit:,} target test images; {cfg.model} "
                   f"{cfg.model_options}; PGD-Linf eps {eps} ({cfg.pgd_steps} steps{others}) vs natural, "
                   f"{cfg.pre_epochs} pretrain epochs; OMP global; seeds {cfg.seeds}")
        cmd = _grid_command(cfg, "runs/tickets-full")
    claims = []
    lin = report.select(d, protocol="linear", eps=eps, scheme="omp")
    hi = report.summarize(report.select(lin, sparsity_target=lambda s: s >= 0.9))
    lo = report.summarize(report.select(lin, sparsity_target=lambda s: s <= 0.8))
    claims.append(Claim(
        method="tickets", claim_id="tickets-robust-omp-linear",
        statement="OMP tickets drawn from a robustly pretrained model transfer better than natural tickets "
                  "(frozen features, high sparsity).",
        paper_value="not in the available text (linear-evaluation results announced); spec gate T1: "
                    ">= +3 pp and > 0 in >= 70% of cells (reference +5.22 pp / 83%)",
        paper_setting="ResNet-18/50 ImageNet -> CIFAR/VTAB", measured_setting=setting,
        measured_value=f"{hi['mean']:+.2f} +- {hi['std']:.2f} pp, > 0 in {100 * hi['share_pos']:.0f}% of "
                       f"{hi['n']} cells (sparsity >= 0.9)",
        verdict=_verdict(hi["mean"], hi["share_pos"], 3.0, 0.7),
        statistic="paired (same seed, target, sparsity) robust - natural linear-eval accuracy; holds if mean "
                  ">= +3 pp and share > 0 >= 70%; does not hold if mean <= 0",
        details={"sp>=0.9": hi, "sp<=0.8": lo}, plots=plots, command=cmd))
    growth = hi["mean"] - lo["mean"] if lo["n"] and hi["n"] else float("nan")
    claims.append(Claim(
        method="tickets", claim_id="tickets-prior-survives-sparsity",
        statement="The robustness prior is inherited by extremely sparse tickets (gain grows with sparsity).",
        paper_value="+2.38 pp at sparsity 0.99 (RN18, CIFAR-100, full FT); spec gate T2: delta(sp>=0.9) - "
                    "delta(sp<=0.8) > 0", paper_setting="ResNet-18 ImageNet -> CIFAR-100",
        measured_value=f"linear delta {hi['mean']:+.2f} pp (sp>=0.9) vs {lo['mean']:+.2f} pp (sp<=0.8): "
                       f"growth {growth:+.2f} pp",
        measured_setting=setting, verdict="holds" if growth > 0 else "does not hold",
        statistic="difference of mean paired linear-eval deltas, high vs low sparsity", command=cmd))
    ft = report.summarize(report.select(d, protocol="full", eps=eps, scheme="omp"))
    if ft["n"]:
        claims.append(Claim(
            method="tickets", claim_id="tickets-robust-omp-full-ft",
            statement="Robust OMP tickets outperform natural ones under full fine-tuning (Fig. 1).",
            paper_value="+1.95 pp (RN50, sparsity 0.7), +2.38 pp (RN18, sparsity 0.99), CIFAR-100",
            paper_setting="ResNet-18/50 ImageNet -> CIFAR-100, 150 epochs",
            measured_value=f"{ft['mean']:+.2f} +- {ft['std']:.2f} pp, > 0 in {100 * ft['share_pos']:.0f}% "
                           f"of {ft['n']} cells (all sparsities)",
            measured_setting=setting + f"; FT {cfg.ft_epochs} epochs",
            verdict=_verdict(ft["mean"], ft["share_pos"], 1.0, 0.7),
            statistic="paired full-FT delta; holds if mean >= +1 pp and share > 0 >= 70%; does not hold if "
                      "mean <= 0 (spec T6: expected within +-1 pp at this scale)", command=cmd))
    rob = report.summarize(report.select(report.paired_deltas(rows, "robust_acc"), eps=eps))
    claims.append(Claim(
        method="tickets", claim_id="tickets-robustness-retained",
        statement="Robust tickets keep more adversarial robustness after transfer.",
        paper_value="announced, no number in the available text", paper_setting="-",
        measured_value=f"PGD-20 (eps {cfg.eval_eps}) target accuracy delta {rob['mean']:+.2f} +- "
                       f"{rob['std']:.2f} pp, > 0 in {100 * rob['share_pos']:.0f}% of {rob['n']} cells",
        measured_setting=setting, verdict=_verdict(rob["mean"], rob["share_pos"], 1.0, 0.7),
        statistic="paired robust-accuracy delta over all cells; holds if mean >= +1 pp and share > 0 >= 70%",
        command=cmd))
    tab = report.mean_table(rows)
    nat = [v["mean"] for k, v in tab.items() if k[1] == "linear" and k[4] == 0.0 and k[3] >= 0.9]
    robv = [v["mean"] for k, v in tab.items() if k[1] == "linear" and k[4] == eps and k[3] >= 0.9]
    dense = [v["mean"] for k, v in tab.items() if k[1] == "linear" and k[4] == 0.0 and k[3] == 0.0]
    summary = MethodSummary(
        method="tickets", stored=f"binary masks at sparsity {', '.join(f'{s:g}' for s in cfg.sparsities)}",
        accuracy=(sum(robv) / len(robv) / 100) if robv else None,
        dense_accuracy=(sum(dense) / len(dense) / 100) if dense else None, train_time_ratio=None,
        setting=("" if ctx.quick else f"Fashion-MNIST {_classes(cfg.source_classes)} source: ")
        + f"robust (eps {eps}) OMP tickets at sparsity >= 0.9, linear eval (natural tickets: "
          f"{sum(nat) / max(len(nat), 1):.1f}%)")
    return MethodReport(summary=summary, claims=claims, seconds=time.perf_counter() - t0)
