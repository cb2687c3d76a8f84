"""Ticket drawing: OMP, IMP / A-IMP (with rewinding) and LMP (learned masks, weights frozen).

All schemes return masks `{"<module>.weight": 0/1 tensor}`; the ticket is f(.; m * theta_pre).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.nn.utils import parametrize as tparam

from reparam.core import parametrize as rp
from reparam.core.errors import ReparamError
from reparam.tickets import masks as mk
from reparam.tickets.attacks import PGDConfig
from reparam.tickets.hooks import AdversarialTraining
from reparam.tickets.patterns import Pattern, layer_mask, select


def omp(model: nn.Module, sparsity: float, pattern: Pattern = Pattern("unstructured"), scope: str = "global",
        filter_fn: rp.FilterFn | None = None) -> mk.Masks:
    """One-shot magnitude pruning: keep the largest |theta_pre| (no training)."""
    scores = {k: v.abs() for k, v in mk.weights(model, filter_fn).items()}
    return select(scores, pattern, sparsity, scope)


# ---------------------------------------------------------------------------------------------------
# IMP / A-IMP
# ---------------------------------------------------------------------------------------------------
@dataclass
class IMPConfig:
    rate: float = 0.2                  # fraction of the remaining weights pruned per round
    rounds: int = 10
    train: object = None               # reparam.train.TrainConfig for the retraining of each round
    pgd: PGDConfig | None = None       # A-IMP: eq. (1) objective when set (eps > 0)
    rewind: str = "pretrained"         # pretrained | none (keep training the weights of the last round)
    pattern: Pattern = field(default_factory=lambda: Pattern("unstructured"))
    scope: str = "global"

    def __post_init__(self) -> None:   # checked when built, like every Config
        self.check()

    def check(self) -> IMPConfig:
        if not 0 < self.rate < 1:
            raise ReparamError(f"IMP rate must be in (0, 1), got {self.rate}")
        if self.rounds < 1:
            raise ReparamError(f"IMP rounds must be >= 1, got {self.rounds}")
        if self.rewind not in ("pretrained", "none"):
            raise ReparamError(f"unknown rewind {self.rewind!r}; allowed: pretrained, none")
        return self


def imp_sparsity(rate: float, r: int) -> float:
    """Target sparsity of round r: 1 - (1 - rate)^r."""
    return 1.0 - (1.0 - rate) ** r


def _round_pattern(p: Pattern, rate: float, r: int) -> Pattern:
    # N:M under IMP: tighten N from M towards the target N, one step per round (masks stay nested).
    if p.kind != "nm":
        return p
    return Pattern("nm", n=max(p.n, math.ceil(p.m * (1 - rate) ** r)), m=p.m)


@dataclass
class IMPRound:
    round: int
    masks: mk.Masks
    sparsity: float
    trained: dict[str, torch.Tensor] | None   # state_dict after this round's retraining (None if skipped)
    val_acc: float | None = None


def imp(model: nn.Module, data, cfg: IMPConfig, filter_fn: rp.FilterFn | None = None,
        train_last: bool = False, on_round: Callable[[IMPRound], None] | None = None,
        seed: int = 0) -> list[IMPRound]:
    """Iterative magnitude pruning with rewinding to theta_pre (A-IMP when cfg.pgd.eps > 0).

    Round 1 prunes `rate` of |theta_pre| (= OMP at `rate`, as in CV_LTH_Pre-training). Each round then
    rewinds the surviving weights to theta_pre (rewind="pretrained"), retrains them on `data` (source task
    by default) with the mask fixed, natural or PGD objective, and the next round prunes the smallest
    |trained weights| among the survivors. Round r has sparsity 1 - (1 - rate)^r (exact count up to
    rounding of one element) and its mask is nested in round r-1's. `model` is not modified.
    """
    from reparam.train import TrainConfig, Trainer

    cfg.check()
    work = copy.deepcopy(model)
    if tparam.is_parametrized(work):
        raise ReparamError("IMP needs a plain pretrained model (fold existing parametrizations first)")
    theta_pre = mk.weights(work, filter_fn)
    pre_state = {k: v.detach().clone() for k, v in work.state_dict().items()}
    tcfg = cfg.train or TrainConfig(epochs=1, progress=False, checkpoint=False)
    scores = {k: v.abs() for k, v in theta_pre.items()}
    prev: mk.Masks | None = None
    out: list[IMPRound] = []
    for r in range(1, cfg.rounds + 1):
        target = imp_sparsity(cfg.rate, r)
        masks = select(scores, _round_pattern(cfg.pattern, cfg.rate, r), target, cfg.scope, prev)
        mk.apply_masks(work, masks)
        if cfg.rewind == "pretrained":
            # rewind everything (BN statistics included) to theta_pre, then re-mask
            _load_plain_state(work, pre_state)
        trained = None
        val_acc = None
        if r < cfg.rounds or train_last:
            adv = cfg.pgd is not None and cfg.pgd.eps > 0
            cbs = [AdversarialTraining(cfg.pgd, seed=seed + r)] if adv else []
            res = Trainer(work, data, copy.deepcopy(tcfg), callbacks=cbs).fit(resume=False)
            val_acc = res.val_acc
            trained = {k: v.detach().clone() for k, v in work.state_dict().items()}
            scores = {k: v.abs() for k, v in mk.weights(work, filter_fn).items()}
        rec = IMPRound(r, {k: v.clone() for k, v in masks.items()}, mk.sparsity(masks), trained, val_acc)
        out.append(rec)
        if on_round is not None:
            on_round(rec)
        prev = masks
    return out


def _load_plain_state(model: nn.Module, plain: dict[str, torch.Tensor]) -> None:
    """Load a state_dict of the unparametrized model into a (possibly masked) copy of it."""
    origs = mk.original_weights(model)
    with torch.no_grad():
        own = model.state_dict()
        for k, v in plain.items():
            if k in origs:
                origs[k].copy_(v)
            elif k in own:
                own[k].copy_(v)


# ---------------------------------------------------------------------------------------------------
# LMP: edge-popup-style learned masks over frozen pretrained weights
# ---------------------------------------------------------------------------------------------------
class _STETopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: torch.Tensor, pattern: Pattern, keep: int | float) -> torch.Tensor:
        return layer_mask(scores, pattern, keep)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return g, None, None   # straight-through: d mask / d scores := identity


class ScoreMask(nn.Module):
    """weight = original * topk(|scores|): per-layer top-k (exactly `keep` entries) with an STE."""

    reparam_method = "tickets"

    def __init__(self, scores: torch.Tensor, pattern: Pattern, keep: int | float):
        super().__init__()
        self.scores = nn.Parameter(scores.detach().clone())
        self.pattern, self.keep = pattern, keep

    def mask(self) -> torch.Tensor:
        return layer_mask(self.scores.detach().abs(), self.pattern, self.keep)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * _STETopK.apply(self.scores.abs(), self.pattern, self.keep)


@dataclass
class LMPConfig:
    sparsity: float = 0.9
    pattern: Pattern = field(default_factory=lambda: Pattern("unstructured"))
    score_init: str = "magnitude"      # magnitude (|theta_pre|) | kaiming (kaiming-uniform)
    train_bn: bool = True              # BN affine trained with the scores and the new head
    train: object = None               # reparam.train.TrainConfig
    pgd: PGDConfig | None = None       # optional adversarial objective (off by default)

    def __post_init__(self) -> None:   # checked when built, like every Config
        self.check()

    def check(self) -> LMPConfig:
        if not 0 <= self.sparsity < 1:
            raise ReparamError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.score_init not in ("magnitude", "kaiming"):
            raise ReparamError(f"unknown score init {self.score_init!r}; allowed: magnitude, kaiming")
        return self


def lmp_keep(numel_or_filters: int, sparsity: float) -> int:
    return max(1, round((1 - sparsity) * numel_or_filters))


def attach_scores(model: nn.Module, cfg: LMPConfig, filter_fn: rp.FilterFn | None = None,
                  seed: int = 0) -> list[str]:
    """Put a ScoreMask on every prunable layer; freeze all weights (scores, head and BN stay trainable)."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.requires_grad_(False)

    def make(name: str, module: nn.Module) -> nn.Module:
        w = module.weight.detach()
        if cfg.score_init == "magnitude":
            s = w.abs().clone()
        else:
            bound = math.sqrt(6.0 / w[0].numel())
            s = (torch.rand(w.shape, generator=gen) * 2 - 1) * bound
        n = w.shape[0] if cfg.pattern.kind == "channel" else w.numel()
        return ScoreMask(s, cfg.pattern, lmp_keep(n, cfg.sparsity))

    names = rp.register(model, make, filter_fn or mk.prunable())
    for _, module in rp.parametrized_layers(model):
        module.parametrizations.weight.original.requires_grad_(False)
    return names


def score_masks(model: nn.Module) -> mk.Masks:
    out: mk.Masks = {}
    for name, module in rp.parametrized_layers(model):
        for p in module.parametrizations.weight:
            if isinstance(p, ScoreMask):
                out[f"{name}.weight"] = p.mask()
    return out


def lmp(model: nn.Module, target, cfg: LMPConfig, filter_fn: rp.FilterFn | None = None,
        seed: int = 0) -> tuple[mk.Masks, nn.Module, object]:
    """Learn a mask on the target task with theta_pre frozen; a new head is trained jointly.

    Returns (masks, the trained LMP model with ScoreMask parametrizations, TrainResult).
    """
    from reparam.models import replace_head
    from reparam.train import TrainConfig, Trainer

    cfg.check()
    net = copy.deepcopy(model)
    replace_head(net, target.num_classes)
    attach_scores(net, cfg, filter_fn, seed=seed)
    for p in net.head.parameters():
        p.requires_grad_(True)
    if cfg.train_bn:
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                for p in m.parameters():
                    p.requires_grad_(True)
    tcfg = cfg.train or TrainConfig(epochs=10, optimizer="adam", lr=0.01, weight_decay=0.0, progress=False,
                                    checkpoint=False)
    scores = [p for n, p in net.named_parameters() if n.endswith(".scores")]
    others = [p for n, p in net.named_parameters() if p.requires_grad and not n.endswith(".scores")]
    groups = [{"params": scores, "weight_decay": 0.0}, {"params": others, "weight_decay": tcfg.weight_decay}]
    cbs = [AdversarialTraining(cfg.pgd, seed=seed)] if cfg.pgd is not None and cfg.pgd.eps > 0 else []
    res = Trainer(net, target, tcfg, callbacks=cbs, param_groups=groups).fit(resume=False)
    return score_masks(net), net, res
