"""The robust-vs-natural experiment: pretrain per eps, draw tickets, transfer, evaluate; cached per step.

Everything a grid cell needs is computed once and cached under `work/` (pretrained models and masks in
the reparam file format, finished cells as JSON), so an interrupted grid resumes where it stopped.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from reparam.core.errors import ReparamError
from reparam.core.fileformat import atomic_write_text, load_model_state, save_model
from reparam.core.runtime import derive_seed, seed_everything
from reparam.experiments.tickets.evaluation import linear_mmd, ood_eval, proxy_a_distance
from reparam.experiments.tickets.transfer import LinearConfig, extract_features, transfer
from reparam.tickets import masks as mk
from reparam.tickets.attacks import PGDConfig, robust_accuracy
from reparam.tickets.draw import IMPConfig, LMPConfig, imp, lmp, omp
from reparam.tickets.hooks import AdversarialTraining, GaussianNoiseTraining
from reparam.tickets.patterns import parse_pattern

SCHEMES = ("omp", "imp", "aimp", "lmp")


@dataclass
class GridConfig:
    source: str = "digits"
    source_classes: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    targets: list[str] = field(default_factory=lambda: ["digits", "digits-inverted", "digits-rotated",
                                                         "digits-noisy"])
    target_classes: list[int] = field(default_factory=lambda: [5, 6, 7, 8, 9])
    shots: int = 10                       # train examples per target class; the rest goes to test
    model: str = "cnn"
    model_options: dict[str, Any] = field(default_factory=dict)
    data_root: str | None = None
    source_subset: int = 0                # > 0: a stratified subset of the source train split (CPU budgets)
    test_limit: int = 0                   # > 0: at most this many target test images (seeded random pick)
    source_eval_limit: int = 0            # > 0: source PGD-10 accuracy on this many test images only
    # pretraining
    eps: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2])
    norm: str = "linf"
    pgd_steps: int = 5
    noise_sigma: float = 0.0              # > 0: Gaussian-noise pretraining instead of PGD
    pre_epochs: int = 20
    pre_lr: float = 0.05
    pre_batch: int = 64
    # tickets
    schemes: list[str] = field(default_factory=lambda: ["omp"])
    pattern: str = "unstructured"
    scope: str = "global"
    sparsities: list[float] = field(default_factory=lambda: [0.0, 0.5, 0.8, 0.9, 0.95, 0.98])
    first_conv: bool = True
    imp_rate: float = 0.2
    imp_epochs: int = 3
    imp_lr: float = 0.01
    aimp_eps: float = 0.1
    lmp_epochs: int = 30
    lmp_lr: float = 0.01
    # transfer
    protocols: list[str] = field(default_factory=lambda: ["linear", "full"])
    ft_epochs: int = 30
    ft_lr: float = 0.01
    ft_batch: int = 16
    lin_steps: int = 300
    # evaluation
    eval_eps: float = 0.1                 # PGD-20 robust accuracy on the target after transfer
    eval_limit: int = 200                 # examples used for robust accuracy (0: skip)
    ood: bool = True                      # MSP AUROC/FPR95: target test (in) vs source test (out)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])

    def check(self) -> GridConfig:
        for s in self.schemes:
            if s not in SCHEMES:
                raise ReparamError(f"unknown ticket scheme {s!r}; allowed: {', '.join(SCHEMES)}")
        for p in self.protocols:
            if p not in ("linear", "full"):
                raise ReparamError(f"unknown transfer protocol {p!r}; allowed: linear, full")
        for s in self.sparsities:
            if not 0 <= s < 1:
                raise ReparamError(f"sparsity must be in [0, 1), got {s}")
        for name in ("source_subset", "test_limit", "source_eval_limit"):
            if getattr(self, name) < 0:
                raise ReparamError(f"{name} must be >= 0, got {getattr(self, name)}")
        for e in self.eps:
            if e < 0:
                raise ReparamError(f"eps must be >= 0, got {e}")
        parse_pattern(self.pattern)
        return self


def few_shot(splits, shots: int, seed: int):
    """Adapter: keep `shots` train examples per class and move the rest of the train split to test.

    (load_dataset's fixed 20% test split is small for 8x8 digits; the reference protocol tests on all
    remaining images.)
    """
    x, y = splits.train.tensors
    g = torch.Generator().manual_seed(derive_seed(seed, 77))
    keep = []
    for c in range(splits.num_classes):
        idx = torch.nonzero(y == c).flatten()
        if len(idx) < shots:
            raise ReparamError(f"class {c} of {splits.name!r} has only {len(idx)} train images, "
                               f"fewer than shots={shots}")
        keep.append(idx[torch.randperm(len(idx), generator=g)[:shots]])
    keep = torch.cat(keep).sort().values
    rest = torch.ones(len(y), dtype=torch.bool)
    rest[keep] = False
    xt, yt = splits.test.tensors
    out = copy.copy(splits)
    out.train = TensorDataset(x[keep], y[keep])
    out.test = TensorDataset(torch.cat([xt, x[rest]]), torch.cat([yt, y[rest]]))
    return out


def load_source(cfg: GridConfig, seed: int):
    from reparam.data import load_dataset
    from reparam.experiments.tickets.targets import register_targets

    register_targets()
    return load_dataset(cfg.source, seed=seed, root=cfg.data_root, classes=cfg.source_classes,
                        train_subset=cfg.source_subset or None)


def load_target(cfg: GridConfig, name: str, seed: int, image_size=None):
    from reparam.data import limit_test, load_dataset
    from reparam.experiments.tickets.targets import register_targets

    register_targets()
    opts: dict[str, Any] = {"classes": cfg.target_classes}
    if image_size is not None:
        opts["resize"] = tuple(image_size)
    splits = load_dataset(name, seed=seed, root=cfg.data_root, **opts)
    splits = few_shot(splits, cfg.shots, seed) if cfg.shots else splits
    return limit_test(splits, cfg.test_limit, seed) if cfg.test_limit else splits


def build(cfg: GridConfig, src) -> nn.Module:
    from reparam.models import build_model

    return build_model(cfg.model, num_classes=src.num_classes, in_channels=src.in_channels,
                       image_size=src.image_size, mean=src.mean, std=src.std, **cfg.model_options)


def pretrain(cfg: GridConfig, src, eps: float, seed: int, out_dir: Path | None = None
             ) -> tuple[nn.Module, dict[str, Any]]:
    """Natural (eps=0), PGD (eps>0) or Gaussian-noise (cfg.noise_sigma>0) pretraining on the source."""
    from reparam.train import TrainConfig, Trainer

    seed_everything(derive_seed(seed, 1))
    model = build(cfg, src)
    pgd_cfg = PGDConfig(eps=eps, norm=cfg.norm, steps=cfg.pgd_steps)
    if cfg.noise_sigma > 0 and eps > 0:
        cbs = [GaussianNoiseTraining(eps, seed=seed)]
    else:
        cbs = [AdversarialTraining(pgd_cfg, seed=seed)] if eps > 0 else []
    tcfg = TrainConfig(epochs=cfg.pre_epochs, batch_size=cfg.pre_batch, lr=cfg.pre_lr, weight_decay=5e-4,
                       schedule="cosine", seed=seed, progress=False, checkpoint=False)
    res = Trainer(model, src, tcfg, callbacks=cbs, out_dir=out_dir).fit(resume=False)
    eval_cfg = PGDConfig(eps=cfg.eval_eps, norm=cfg.norm, steps=10, alpha=2.5 * cfg.eval_eps / 10)
    rob = (robust_accuracy(model, src.test, eval_cfg, seed=seed, limit=cfg.source_eval_limit or None)
           if cfg.eval_eps > 0 else None)
    info = {"eps": eps, "seed": seed, "source_test_acc": res.test_acc, "source_val_acc": res.val_acc,
            "source_robust_acc": rob, "robust_eval": asdict(eval_cfg), "train_seconds": res.train_seconds,
            "objective": "noise" if cfg.noise_sigma > 0 and eps > 0 else ("pgd" if eps > 0 else "natural")}
    return model, info


class Cache:
    """JSON cells and model files under one folder, so a grid can be resumed."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def json(self, key: str, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        path = self.root / f"{key}.json"
        if path.exists():
            return json.loads(path.read_text())
        value = make()
        atomic_write_text(path, json.dumps(value, sort_keys=True))
        return value

    def model(self, key: str, make: Callable[[], tuple[nn.Module, dict]], like: Callable[[], nn.Module]
              ) -> tuple[nn.Module, dict]:
        path = self.root / f"{key}.safetensors"
        if path.exists():
            m = like()
            header = load_model_state(path, m)
            return m, header.get("info", {})
        m, info = make()
        save_model(path, m, {"info": info})
        return m, info

    def masks(self, key: str, make: Callable[[], mk.Masks]) -> mk.Masks:
        path = self.root / f"{key}.mask.safetensors"
        if path.exists():
            return mk.load_masks(path)[0]
        m = make()
        mk.save_masks(path, m)
        return m


def _fmt(x: float) -> str:
    return f"{x:g}"


def evaluate_ticket(cfg: GridConfig, net: nn.Module, target, src, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if cfg.eval_limit and cfg.eval_eps > 0:
        ecfg = PGDConfig(eps=cfg.eval_eps, norm=cfg.norm, steps=20, alpha=2.5 * cfg.eval_eps / 20)
        out["robust_acc"] = robust_accuracy(net, target.test, ecfg, seed=seed, limit=cfg.eval_limit)
    if cfg.ood:
        x_out = src.test.tensors[0]
        if tuple(x_out.shape[1:]) == tuple(target.test.tensors[0].shape[1:]):
            out.update({f"ood_{k}": v for k, v in ood_eval(net, target.test.tensors[0], x_out).items()})
    return out


def run_seed(cfg: GridConfig, seed: int, work: Path, progress: Callable[[str], None] = print
             ) -> list[dict[str, Any]]:
    """All cells of one seed: rows with eps, scheme, sparsity, target, protocol, test_acc, ..."""
    from reparam.train import TrainConfig

    cache = Cache(work / f"seed{seed}")
    src = load_source(cfg, seed)
    rows: list[dict[str, Any]] = []
    pre: dict[float, nn.Module] = {}
    for eps in cfg.eps:
        t0 = time.perf_counter()
        model, info = cache.model(f"pre_eps{_fmt(eps)}", lambda eps=eps: pretrain(cfg, src, eps, seed),
                                  lambda: build(cfg, src))
        pre[eps] = model
        cache.json(f"pre_eps{_fmt(eps)}_info", lambda info=info: info)
        progress(f"seed {seed} eps {eps}: source acc {info.get('source_test_acc')}, "
                 f"robust {info.get('source_robust_acc')} ({time.perf_counter() - t0:.0f}s)")
    pattern = parse_pattern(cfg.pattern)
    filt = mk.prunable(first_conv=cfg.first_conv)
    ft_cfg = TrainConfig(epochs=cfg.ft_epochs, batch_size=cfg.ft_batch, lr=cfg.ft_lr, weight_decay=1e-4,
                         schedule="cosine", seed=seed, progress=False, checkpoint=False)
    lin_cfg = LinearConfig(steps=cfg.lin_steps, seed=seed)
    # one mask set per (eps, scheme, sparsity); LMP and target-trained masks are per target
    for eps, model in pre.items():
        mask_sets: dict[tuple[str, float], mk.Masks] = {}
        if "omp" in cfg.schemes:
            for s in cfg.sparsities:
                mask_sets[("omp", s)] = cache.masks(
                    f"omp_{cfg.pattern}_eps{_fmt(eps)}_sp{_fmt(s)}",
                    lambda s=s, model=model: omp(model, s, pattern, cfg.scope, filt))
        for scheme in ("imp", "aimp"):
            if scheme in cfg.schemes:
                mask_sets.update(_imp_masks(cfg, scheme, eps, model, src, seed, cache, pattern, filt))
        for tname in cfg.targets:
            target = load_target(cfg, tname, seed, src.image_size)
            for (scheme, s), masks in sorted(mask_sets.items()):
                for proto in cfg.protocols:
                    key = f"cell_{scheme}_{cfg.pattern}_eps{_fmt(eps)}_sp{_fmt(s)}_{tname}_{proto}"
                    cell = cache.json(key, lambda masks=masks, proto=proto, target=target, model=model: _cell(
                        cfg, model, masks, target, src, proto, ft_cfg, lin_cfg, seed))
                    rows.append({**cell, "eps": eps, "scheme": scheme, "sparsity_target": s,
                                 "target": tname, "protocol": proto, "seed": seed, "pattern": cfg.pattern})
            if "lmp" in cfg.schemes:
                for s in cfg.sparsities:
                    key = f"cell_lmp_{cfg.pattern}_eps{_fmt(eps)}_sp{_fmt(s)}_{tname}_lmp"
                    cell = cache.json(key, lambda s=s, target=target, model=model: _lmp_cell(
                        cfg, model, target, src, s, pattern, filt, seed))
                    rows.append({**cell, "eps": eps, "scheme": "lmp", "sparsity_target": s, "target": tname,
                                 "protocol": "lmp", "seed": seed, "pattern": cfg.pattern})
            progress(f"seed {seed} eps {eps} target {tname}: {len(rows)} cells")
    return rows


def _imp_masks(cfg, scheme, eps, model, src, seed, cache, pattern, filt) -> dict[tuple[str, float], mk.Masks]:
    from reparam.train import TrainConfig

    rounds = max(1, max(_rounds_for(cfg.imp_rate, s) for s in cfg.sparsities))
    prefix = f"{scheme}_{cfg.pattern}_eps{_fmt(eps)}"
    done = {r: (cache.root / f"{prefix}_r{r}.mask.safetensors") for r in range(1, rounds + 1)}
    if not all(p.exists() for p in done.values()):
        icfg = IMPConfig(rate=cfg.imp_rate, rounds=rounds, pattern=pattern, scope=cfg.scope,
                         train=TrainConfig(epochs=cfg.imp_epochs, batch_size=cfg.pre_batch, lr=cfg.imp_lr,
                                           weight_decay=5e-4, seed=seed, progress=False, checkpoint=False),
                         pgd=PGDConfig(eps=cfg.aimp_eps, norm=cfg.norm, steps=cfg.pgd_steps)
                         if scheme == "aimp" else None)
        for rec in imp(model, src, icfg, filt, seed=seed):
            mk.save_masks(done[rec.round], rec.masks, {"round": rec.round})
    out = {}
    for s in cfg.sparsities:
        r = _rounds_for(cfg.imp_rate, s)
        if r == 0:
            continue
        out[(scheme, s)] = mk.load_masks(done[r])[0]
    return out


def _rounds_for(rate: float, s: float) -> int:
    """The IMP round whose sparsity 1-(1-rate)^r is closest to s."""
    import math

    if s <= 0:
        return 0
    return max(1, round(math.log(1 - s) / math.log(1 - rate)))


def _cell(cfg, model, masks, target, src, proto, ft_cfg, lin_cfg, seed) -> dict[str, Any]:
    seed_everything(derive_seed(seed, 5))
    net, res = transfer(model, masks, target, proto, train_config=copy.deepcopy(ft_cfg), linear=lin_cfg)
    res = {**res, "sparsity": mk.sparsity(mk.get_masks(net)) if masks else 0.0}
    res.update(evaluate_ticket(cfg, net, target, src, seed))
    return res


def _lmp_cell(cfg, model, target, src, s, pattern, filt, seed) -> dict[str, Any]:
    from reparam.train import TrainConfig

    seed_everything(derive_seed(seed, 6))
    lcfg = LMPConfig(sparsity=s, pattern=pattern, train=TrainConfig(
        epochs=cfg.lmp_epochs, batch_size=cfg.ft_batch, optimizer="adam", lr=cfg.lmp_lr, weight_decay=0.0,
        schedule="cosine", seed=seed, progress=False, checkpoint=False))
    masks, net, res = lmp(model, target, lcfg, filt, seed=seed)
    out = {"test_acc": res.test_acc, "val_acc": res.val_acc, "sparsity": mk.sparsity(masks)}
    out.update(evaluate_ticket(cfg, net, target, src, seed))
    return out


def domain_gaps(cfg: GridConfig, natural: nn.Module, src, seed: int) -> dict[str, dict[str, float]]:
    """Linear MMD and proxy A-distance between penultimate features of the natural model."""
    fs = extract_features(natural, src.test.tensors[0])
    out = {}
    for tname in cfg.targets:
        t = load_target(cfg, tname, seed, src.image_size)
        ft = extract_features(natural, t.test.tensors[0])
        out[tname] = {"mmd": linear_mmd(fs, ft), "a_distance": proxy_a_distance(fs, ft, seed)}
    return out
