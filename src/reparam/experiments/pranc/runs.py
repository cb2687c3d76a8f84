"""Experiments shared by the sweep/ablation commands and the reproduce hook (all use the one Trainer)."""

from __future__ import annotations

import copy
import gc
import math
import random
import time
from dataclasses import replace
from typing import Any

import torch
import torch.nn as nn

from reparam.core.runtime import seed_everything
from reparam.experiments.pranc.baselines import apply_hashednet, magnitude_prune, narrow_options, regress_onto_basis
from reparam.metrics import accuracy
from reparam.pranc.config import PrancConfig
from reparam.pranc.core import apply_pranc, pranc_core
from reparam.pranc.fileio import counts
from reparam.train import TrainConfig, Trainer


def build(spec: dict[str, Any], seed: int, **options: Any) -> nn.Module:
    from reparam.models import build_from_spec

    seed_everything(seed)
    s = dict(spec)
    s["options"] = {**spec.get("options", {}), **options}
    return build_from_spec(s)


def stored_floats(model: nn.Module, skip: set[str] = frozenset()) -> int:
    """Floating-point numbers in the state_dict (parameters + running statistics), minus `skip` names."""
    return sum(t.numel() for n, t in model.state_dict().items()
               if t.is_floating_point() and n not in skip and ".parametrizations." not in n)


def fit(model: nn.Module, splits, tconfig: TrainConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    res = Trainer(model, splits, tconfig).fit(resume=False)
    return {"test_acc": res.test_acc, "val_acc": res.val_acc, "best_epoch": res.best_epoch,
            "train_seconds": res.train_seconds, "wall_seconds": time.perf_counter() - t0}


def run_dense(spec, splits, tconfig: TrainConfig, **options) -> tuple[nn.Module, dict[str, Any]]:
    model = build(spec, tconfig.seed, **options)
    r = fit(model, splits, tconfig)
    n = sum(p.numel() for p in model.parameters())
    r.update(method="dense", params=n, stored=stored_floats(model), options=options)
    return model, r


def run_pranc(spec, splits, tconfig: TrainConfig, pconfig: PrancConfig) -> tuple[nn.Module, dict[str, Any]]:
    import warnings

    model = build(spec, tconfig.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        apply_pranc(model, pconfig)
    r = fit(model, splits, tconfig)
    c = counts(model, pranc_core(model))
    r.update(method="pranc", k=pconfig.k, stored=c["stored_numbers"], params=c["dense_params"], counts=c)
    return model, r


def run_hashednet(spec, splits, tconfig: TrainConfig, k: int) -> tuple[nn.Module, dict[str, Any]]:
    model = build(spec, tconfig.seed)
    apply_hashednet(model, k, seed=tconfig.seed)
    r = fit(model, splits, tconfig)
    other = stored_floats(model, skip={"hashed.values"})
    r.update(method="hashednet", k=k, stored=k + other)
    return model, r


def run_pruning(dense: nn.Module, splits, tconfig: TrainConfig, budget: int) -> dict[str, Any]:
    """Keep budget/2 weights (value + index), fine-tune with the mask fixed."""
    model = copy.deepcopy(dense)
    basis_numel = sum(p.numel() for n, m in model.named_modules() for pn, p in m.named_parameters(recurse=False)
                      if isinstance(m, (nn.Conv2d, nn.Linear, nn.Conv1d)))
    keep = max(1, min(basis_numel, budget // 2))
    magnitude_prune(model, keep)
    before = accuracy(model, splits.test)
    r = fit(model, splits, tconfig)
    other = stored_floats(model)     # non-basis tensors (the masked originals are skipped)
    r.update(method="pruning", keep=keep, stored=2 * keep + other, acc_before_finetune=before)
    return r


def run_regression(dense: nn.Module, splits, k: int, seed: int) -> dict[str, Any]:
    model, stats = regress_onto_basis(dense, k, seed=seed)
    acc = accuracy(model, splits.test)
    c = counts(model, pranc_core(model))
    return {"method": "regression", "k": k, "test_acc": acc, "stored": c["stored_numbers"], **stats}


def run_narrow(spec, splits, tconfig: TrainConfig, target: int) -> dict[str, Any] | None:
    opts = narrow_options(spec["name"], target, lambda **o: build(spec, 0, **o))
    if opts is None:
        return None
    _, r = run_dense(spec, splits, tconfig, **opts)
    r["method"] = "narrow-dense"
    return r


def compare_bases(spec, splits, ks, seeds, epochs: int, lr: float, batch_size: int = 64, *, mode="materialized",
                  chunk: int = 64, dense: bool = False, progress=None) -> list[dict[str, Any]]:
    """The i.i.d. and the Fastfood basis at equal k, paired: the same seed gives both the same basis seed,
    initialisation and batch order."""
    rows: list[dict[str, Any]] = []
    for s in seeds:
        tp = pranc_tconfig(epochs, lr, s, batch_size)
        if dense:
            r = run_dense(spec, splits, dense_tconfig(epochs, s, 1e-3, batch_size))[1]
            rows.append({**r, "seed": s})
        for k in ks:
            for basis in ("iid", "fastfood"):
                # keep no model into the next run (`_, r = ...` held it, with its materialized i.i.d. basis:
                # 10.7 GB for ResNet-20 at k = 10,000), and collect what a run leaves in reference cycles
                r = run_pranc(spec, splits, tp, PrancConfig(k=k, seed=s, basis=basis, mode=mode, chunk=chunk))[1]
                gc.collect()
                r.pop("counts", None)
                rows.append({**r, "basis": basis, "seed": s})
                if progress is not None:
                    progress(rows)
    return rows


def summarize_bases(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per k: mean accuracy of each basis and the paired difference fastfood - iid (t-test over seeds)."""
    from reparam.metrics.stats import mean_std, paired

    out = []
    for k in sorted({r["k"] for r in rows if r["method"] == "pranc"}):
        acc = {b: {r["seed"]: r["test_acc"] for r in rows if r.get("k") == k and r.get("basis") == b}
               for b in ("iid", "fastfood")}
        seeds = sorted(set(acc["iid"]) & set(acc["fastfood"]))
        a, b = [acc["fastfood"][s] for s in seeds], [acc["iid"][s] for s in seeds]
        d = paired(a, b)
        secs = {bb: [r["train_seconds"] for r in rows if r.get("k") == k and r.get("basis") == bb]
                for bb in ("iid", "fastfood")}
        out.append({"k": k, "seeds": seeds, "iid": b, "fastfood": a, "iid_mean": mean_std(b)[0],
                    "fastfood_mean": mean_std(a)[0], "iid_train_s": mean_std(secs["iid"])[0],
                    "fastfood_train_s": mean_std(secs["fastfood"])[0], **d})
    return out


# ---------------------------------------------------------------- ablations on a trained PRANC model
@torch.no_grad()
def wrong_seed_accuracy(model: nn.Module, dataset, seeds: list[int]) -> list[float]:
    core = pranc_core(model)
    right = core.seed
    out = []
    try:
        for s in seeds:
            core.set_seed(s)
            out.append(accuracy(model, dataset))
    finally:
        core.set_seed(right)
    return out


@torch.no_grad()
def subset_accuracy(model: nn.Module, dataset, fractions: list[float], repeats: int = 4, seed: int = 0
                    ) -> dict[str, list[float]]:
    """Keep the top-|alpha| p% (per block) or a random p% (mean of `repeats`), zero the rest."""
    core = pranc_core(model)
    full = core.alpha.detach().clone()
    rng = random.Random(seed)
    top, rand = [], []
    try:
        for p in fractions:
            mask = torch.zeros_like(full)
            for b in core.blocks:
                n = max(1, round(p * b.k))
                a = full[b.alpha_offset:b.alpha_offset + b.k]
                mask[b.alpha_offset + torch.topk(a.abs(), n).indices] = 1
            core.alpha.copy_(full * mask)
            top.append(accuracy(model, dataset))
            accs = []
            for _ in range(repeats):
                mask = torch.zeros_like(full)
                for b in core.blocks:
                    n = max(1, round(p * b.k))
                    idx = rng.sample(range(b.k), n)
                    mask[[b.alpha_offset + i for i in idx]] = 1
                core.alpha.copy_(full * mask)
                accs.append(accuracy(model, dataset))
            rand.append(sum(accs) / len(accs))
    finally:
        core.alpha.copy_(full)
    return {"fractions": fractions, "top": top, "random": rand}


@torch.no_grad()
def fp16_accuracy(model: nn.Module, dataset) -> dict[str, float]:
    core = pranc_core(model)
    full = core.alpha.detach().clone()
    a32 = accuracy(model, dataset)
    core.alpha.copy_(full.half().float())
    a16 = accuracy(model, dataset)
    core.alpha.copy_(full)
    return {"fp32": a32, "fp16": a16}


def orthogonality(dims: list[int], n: int = 1000, trials: int = 20, seed: int = 0) -> list[dict[str, float]]:
    """Norms and pairwise |cos| of n random vectors (entries N(0, 1/d)) per dimension d."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for d in dims:
        maxes = []
        for t in range(trials):
            v = torch.randn(n, d, generator=g) / math.sqrt(d)
            u = v / v.norm(dim=1, keepdim=True)
            c = (u @ u.T).abs()
            c.fill_diagonal_(0)
            maxes.append(c.max().item())
            if t == 0:
                norms = v.norm(dim=1)
                mean_cos = c.sum().item() / (n * (n - 1))
        rows.append({"d": d, "norm_mean": norms.mean().item(), "norm_std": norms.std().item(),
                     "mean_abs_cos": mean_cos, "max_abs_cos": sum(maxes) / len(maxes),
                     "sqrt_2_over_pi_d": math.sqrt(2 / (math.pi * d))})
    return rows


def pranc_tconfig(epochs: int, lr: float, seed: int, batch_size: int = 64) -> TrainConfig:
    return TrainConfig(epochs=epochs, optimizer="adam", lr=lr, weight_decay=0.0, schedule="cosine",
                       batch_size=batch_size, seed=seed, progress=False, checkpoint=False)


def dense_tconfig(epochs: int, seed: int, lr: float = 1e-3, batch_size: int = 64) -> TrainConfig:
    return replace(pranc_tconfig(epochs, lr, seed, batch_size))
