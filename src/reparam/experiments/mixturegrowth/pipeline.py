"""The three-phase MixtureGrowth pipeline and its baselines, all trained by the shared Trainer.

Phase 1: network 1 = member 0 of the template-mixing model, trained for the full schedule E (cached on
disk; not charged, as in the paper). Phase 2: network 2 = member 1 (its own template set and BN) from
scratch for x * E epochs. Phase 3: grow, then train the grown network for (budget - x * r) * E epochs.

Every method of the comparison is a function of (settings, data, network 1) that returns one result
record with test/val accuracy, the FLOPs ledger, the per-epoch history across phases and feature
snapshots for CKA. Baselines: Large / Large Match / Small / Small Match (plain WRNs from scratch),
Random and Net2Net (plain widening of network 1), MixtureGrowth w/o fusion (grow from network 1 alone).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from reparam.core.errors import ReparamError, choose
from reparam.core.fileformat import load_tensors, save_tensors
from reparam.core.runtime import derive_seed, seed_everything
from reparam.experiments.mixturegrowth.baselines import widen
from reparam.experiments.mixturegrowth.cka import cka_matrix, conv_outputs
from reparam.mixturegrowth import Config, apply, fold, grow, member_mode, param_groups, set_member
from reparam.mixturegrowth.flops import Phase, epochs_of_steps, forward_macs, ledger, match_steps, solve_budget
from reparam.mixturegrowth.grow import COEF_INITS, LAYOUTS
from reparam.mixturegrowth.wrn import WideResNet, build_wrn
from reparam.train import Callback, TrainConfig, Trainer

METHODS = {
    "mixturegrowth": "grow two trained members (fusion) with the chosen coefficient init",
    "wo-fusion": "MixtureGrowth w/o fusion: grow network 1 alone, all blocks from its templates",
    "random": "Random growth (GradMax-style: zero incoming, 0.5 x mean-norm random outgoing weights)",
    "random-full": "growth with fully random new weights",
    "net2net": "Net2Net function-preserving widening",
    "large": "target network from scratch, full schedule (1.00X)",
    "large-match": "target network from scratch within the budget",
    "small": "small network from scratch, full schedule",
    "small-match": "small network from scratch within the budget",
}
GROWN_SCHEDULES = ("cosine", "restarts")


@dataclass
class GrowSettings:
    model: str = "wrn-10-2"
    full_epochs: int = 20                 # E: "full training" of any network
    budget: float = 0.45                  # FLOPs of the run / target trained for E epochs
    fraction: float = 0.9                 # x: share of E spent on network 2
    layout: str = "vertical"
    coef_init: str = "orthogonal"
    coef_scale: float = 1.0
    copy_noise: float = 0.0
    n_templates: int = 2
    share_templates: bool = False
    train_end_coefs: bool = False
    template_init: str = "per-template"   # "stacked": the official code's template init
    lr: float = 0.1
    grown_lr: float = 0.02
    grown_schedule: str = "cosine"        # "restarts": the official code's cosine with 4 restarts
    grown_warmup: float = 0.0
    reset_optimizer: bool = True          # False: keep the momentum of network 2's optimizer
    weight_decay: float = 5e-4
    batch_size: int = 64
    momentum: float = 0.9
    nesterov: bool = True
    augment: str | None = "shift1"
    seed: int = 0
    charge_net1: bool = False
    probe_size: int = 256                 # validation images whose features are kept for CKA
    progress: bool = False

    def validate(self) -> GrowSettings:
        choose(self.layout, LAYOUTS, "growth layout")
        choose(self.coef_init, COEF_INITS, "coefficient init")
        choose(self.grown_schedule, GROWN_SCHEDULES, "grown-phase schedule")
        if not 0 < self.budget <= 2:
            raise ReparamError(f"budget must be in (0, 2] (fraction of the target's full training), got {self.budget}")
        if not 0 <= self.fraction <= 1:
            raise ReparamError(f"fraction must be in [0, 1], got {self.fraction}")
        if self.full_epochs < 1:
            raise ReparamError(f"full epochs must be >= 1, got {self.full_epochs}")
        return self


def _train_config(s: GrowSettings, epochs: int, lr: float, phase: int, schedule: str = "cosine",
                  warmup: float = 0.0, steps: int | None = None, n_train: int | None = None) -> TrainConfig:
    """A phase of `epochs` whole epochs, or of exactly `steps` optimizer steps (the last epoch partial)."""
    if steps is not None:
        epochs = math.ceil(steps / math.ceil(n_train / s.batch_size))
    return TrainConfig(epochs=epochs, batch_size=s.batch_size, optimizer="sgd", lr=lr, momentum=s.momentum,
                       nesterov=s.nesterov, weight_decay=s.weight_decay, schedule=schedule,
                       warmup_epochs=warmup if warmup < epochs else 0.0, seed=derive_seed(s.seed, phase),
                       augment=s.augment, progress=s.progress, checkpoint=False, max_steps=steps).validate()


class CosineRestarts(Callback):
    """The official code's grown-phase LR (timm cosine, `--reset_lr_scheduler_growing 4` cycles, each peak
    halved, `--lr_growing_min`), applied per optimizer step over the trainer's constant base LR."""

    def __init__(self, lr: float, total_steps: int, cycles: int = 4, decay: float = 0.5,
                 lr_min: float = 3e-5, warmup_steps: int = 0):
        self.lr, self.total, self.cycles, self.decay = lr, max(1, total_steps), cycles, decay
        self.lr_min, self.warmup = lr_min, warmup_steps

    def value(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        length = max(1, math.ceil(self.total / self.cycles))
        cycle, t = divmod(step, length)
        peak = self.lr * self.decay ** cycle
        return self.lr_min + 0.5 * (peak - self.lr_min) * (1 + math.cos(math.pi * t / length))

    def _set(self, trainer: Trainer) -> None:
        for g in trainer.optimizer.param_groups:
            g["lr"] = self.value(trainer.global_step)

    def on_train_start(self, trainer: Trainer) -> None:
        self._set(trainer)

    def after_step(self, trainer: Trainer) -> None:
        self._set(trainer)


class FeatureSnapshots(Callback):
    """Keeps the penultimate features of a fixed probe batch after every epoch (epoch x epoch CKA)."""

    def __init__(self, probe: torch.Tensor, store: list[torch.Tensor], phase: str, phases: list[str]):
        self.probe, self.store, self.phase, self.phases = probe, store, phase, phases

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        model = trainer.model
        was = model.training
        model.eval()
        with torch.no_grad():
            self.store.append(model.features(self.probe).detach().clone())
        model.train(was)
        self.phases.append(self.phase)
        record["phase"] = self.phase


@dataclass
class RunResult:
    method: str
    seed: int
    test_acc: float
    val_acc: float
    flops_norm: float
    epochs: dict[str, float | int | None]   # epochs (fractional when planned in steps) and steps per phase
    ledger: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    snapshots: list[torch.Tensor] = field(default_factory=list, repr=False)
    snapshot_phases: list[str] = field(default_factory=list)
    model: nn.Module | None = field(default=None, repr=False)
    pre_growth_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        skip = ("snapshots", "model", "pre_growth_state")
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in skip}


# -- building blocks ------------------------------------------------------------------------------------

def template_model(s: GrowSettings, splits) -> nn.Module:
    seed_everything(derive_seed(s.seed, 1))
    model = build_wrn(s.model, num_classes=splits.num_classes, in_channels=splits.in_channels,
                      mean=splits.mean, std=splits.std, image_size=splits.image_size)
    apply(model, Config(n_templates=s.n_templates, share_templates=s.share_templates,
                        train_end_coefs=s.train_end_coefs, template_init=s.template_init))
    return model


def plain_model(s: GrowSettings, splits, half: bool, seed_part: int) -> WideResNet:
    seed_everything(derive_seed(s.seed, seed_part))
    return build_wrn(s.model, num_classes=splits.num_classes, in_channels=splits.in_channels, half=half,
                     mean=splits.mean, std=splits.std, image_size=splits.image_size)


def macs(s: GrowSettings, splits) -> tuple[int, int]:
    """(small, target) forward MACs per image, counted on the meta device."""
    shape = (splits.in_channels, *splits.image_size)
    with torch.device("meta"):
        small = build_wrn(s.model, num_classes=splits.num_classes, in_channels=splits.in_channels, half=True)
        big = build_wrn(s.model, num_classes=splits.num_classes, in_channels=splits.in_channels)
    return forward_macs(small, shape), forward_macs(big, shape)


def _fit(model: nn.Module, splits, cfg: TrainConfig, groups, callbacks=(), optimizer=None):
    trainer = Trainer(model, splits, cfg, callbacks=list(callbacks), param_groups=groups, optimizer=optimizer)
    result = trainer.fit(resume=False)
    return trainer, result


def _acc(model: nn.Module, data) -> float:
    from reparam.metrics import accuracy

    return accuracy(model, data)


@torch.no_grad()
def ensemble_acc(model: nn.Module, data) -> float:
    """Accuracy of the logit-sum ensemble of members 0 and 1 (equal to the grown net with zero init)."""
    x, y = data.tensors
    was = model.training
    model.eval()
    with member_mode(model, 0):
        l0 = model(x)
    with member_mode(model, 1):
        l1 = model(x)
    model.train(was)
    return float(((l0 + l1).argmax(1) == y).float().mean())


# The layout of the cached state dict: bump it whenever its keys change, so that no stale cache is loaded.
# 2: the zoo's WideResNet (norm.mean / norm.std, lastact.0.*) instead of mixturegrowth's own WRN.
NET1_FORMAT = 2


def _cache_key(s: GrowSettings, splits) -> str:
    keys = {k: getattr(s, k) for k in ("model", "full_epochs", "n_templates", "share_templates",
                                       "train_end_coefs", "lr", "weight_decay", "batch_size", "momentum",
                                       "nesterov", "augment", "seed")}
    if s.template_init != "per-template":        # only then: caches of the default stay valid
        keys["template_init"] = s.template_init
    keys["data"] = [getattr(splits, "name", "?"), len(splits.train), splits.num_classes]
    keys["format"] = NET1_FORMAT
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def train_net1(s: GrowSettings, splits, cache_dir: Path | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Member 0 trained for E epochs; returns its template-model state dict (cached by settings)."""
    path = Path(cache_dir) / f"net1-{_cache_key(s, splits)}.safetensors" if cache_dir else None
    if path is not None and path.exists():
        tensors, header = load_tensors(path, kind="mixturegrowth-net1")
        return tensors, header.get("info", {})
    model = template_model(s, splits)
    set_member(model, 0)
    cfg = _train_config(s, s.full_epochs, s.lr, phase=11)
    _, res = _fit(model, splits, cfg, param_groups(model, s.weight_decay))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    info = {"val_acc": res.val_acc, "test_acc": res.test_acc, "train_seconds": res.train_seconds,
            "epochs": s.full_epochs}
    if path is not None:
        save_tensors(path, state, kind="mixturegrowth-net1", header={"info": info, "settings": asdict(s)})
    return state, info


def _net1_model(s: GrowSettings, splits, net1_state: dict[str, torch.Tensor]) -> nn.Module:
    model = template_model(s, splits)
    model.load_state_dict(net1_state)
    set_member(model, 0)
    return model


def _probe(s: GrowSettings, splits) -> torch.Tensor:
    return splits.val.tensors[0][: s.probe_size]


# -- methods --------------------------------------------------------------------------------------------

def run_mixturegrowth(s: GrowSettings, splits, net1_state, fusion: bool = True) -> RunResult:
    s.validate()
    r_small, r_big = macs(s, splits)
    ratio = r_small / r_big
    fraction = s.fraction if fusion else 0.0
    n = len(splits.train)
    # planned in optimizer steps: every method of a comparison spends the budget to within half a step
    plan = solve_budget(s.budget, fraction, ratio, s.full_epochs, n_train=n, batch_size=s.batch_size)
    model = _net1_model(s, splits, net1_state)
    snaps: list[torch.Tensor] = []
    phases: list[str] = []
    history: list[dict[str, Any]] = []
    extra: dict[str, Any] = {"net1_test_acc": _acc(model, splits.test)}
    probe = _probe(s, splits)
    opt2 = None
    if fusion:
        set_member(model, 1)
        cfg = _train_config(s, 0, s.lr, phase=12, steps=plan.net2_steps, n_train=n)
        trainer, res = _fit(model, splits, cfg, param_groups(model, s.weight_decay),
                            [FeatureSnapshots(probe, snaps, "net2", phases)])
        opt2 = trainer.optimizer
        history += [dict(r, phase="net2") for r in res.history]
        extra["net2_test_acc"] = res.test_acc
        extra["ensemble_test_acc"] = ensemble_acc(model, splits.test)
        extra["ensemble_val_acc"] = ensemble_acc(model, splits.val)
    pre_growth = {k: v.detach().clone() for k, v in model.state_dict().items()}
    layer_feats = {}
    with member_mode(model, 0):
        layer_feats["net1"] = conv_outputs(model, probe)
    if fusion:
        with member_mode(model, 1):
            layer_feats["net2"] = conv_outputs(model, probe)
    extra["coef_norm_members"] = _member_coef_norm(model)
    info = grow(model, s.layout, s.coef_init, fusion=fusion, coef_scale=s.coef_scale, copy_noise=s.copy_noise,
                seed=derive_seed(s.seed, 13))
    extra["grown_val_acc_at_growth"] = _acc(model, splits.val)
    extra["grown_test_acc_at_growth"] = _acc(model, splits.test)
    extra["growth"] = {"layout": info.layout, "coef_init": info.coef_init, "fusion": info.fusion,
                       "layers": info.layers, "new_blocks": info.new_blocks}
    groups = param_groups(model, s.weight_decay)
    callbacks: list[Callback] = [FeatureSnapshots(probe, snaps, "grown", phases)]
    optimizer = None
    if not s.reset_optimizer and opt2 is not None:
        optimizer = torch.optim.SGD(groups, lr=s.grown_lr, momentum=s.momentum, nesterov=s.nesterov,
                                    weight_decay=s.weight_decay)
        for p in optimizer.param_groups[0]["params"] + optimizer.param_groups[1]["params"]:
            if p in opt2.state:
                optimizer.state[p] = copy.deepcopy(opt2.state[p])
    if s.grown_schedule == "restarts":
        cfg = _train_config(s, 0, s.grown_lr, phase=14, schedule="constant", steps=plan.grown_steps, n_train=n)
        warm = int(round(s.grown_warmup * math.ceil(n / s.batch_size)))
        callbacks.append(CosineRestarts(s.grown_lr, plan.grown_steps, warmup_steps=warm))
    else:
        cfg = _train_config(s, 0, s.grown_lr, phase=14, warmup=s.grown_warmup, steps=plan.grown_steps, n_train=n)
    _, res = _fit(model, splits, cfg, groups, callbacks, optimizer=optimizer)
    history += [dict(r, phase="grown") for r in res.history]
    # Fig. 5 analogue: layer x layer CKA between the small networks and the trained grown network.
    grown_feats = conv_outputs(model, probe)
    extra["cka_layers"] = {"grown_vs_net1": cka_matrix(grown_feats, layer_feats["net1"]).tolist()}
    if fusion:
        extra["cka_layers"]["net1_vs_net2"] = cka_matrix(layer_feats["net1"], layer_feats["net2"]).tolist()
        extra["cka_layers"]["grown_vs_net2"] = cka_matrix(grown_feats, layer_feats["net2"]).tolist()
    phases_list = [Phase("net1", s.full_epochs, r_small, charged=True),
                   Phase("net2", plan.net2_epochs, r_small), Phase("grown", plan.grown_epochs, r_big)]
    led = ledger(phases_list, r_big, s.full_epochs, len(splits.train), charge_net1=s.charge_net1)
    extra["plan"] = asdict(plan)
    return RunResult("mixturegrowth" if fusion else "wo-fusion", s.seed, res.test_acc, res.val_acc,
                     led.normalized, {"net2": plan.net2_epochs, "grown": plan.grown_epochs,
                                      "net2_steps": plan.net2_steps, "grown_steps": plan.grown_steps},
                     led.to_dict(), history, extra, snaps, phases, model, pre_growth)


def _member_coef_norm(model: nn.Module) -> float:
    """Mean L2 norm of the trained members' coefficient vectors over the inner (g x g) layers: the scale a
    unit-norm new coefficient vector is compared with."""
    from reparam.mixturegrowth import template_layers

    norms = [float(c.detach().norm()) for _, _, p in template_layers(model) if p.grid_shape == (2, 2)
             for c in list(p.coefs)[:2]]
    return sum(norms) / max(1, len(norms))


def run_widening(s: GrowSettings, splits, net1_state, method: str) -> RunResult:
    r_small, r_big = macs(s, splits)
    n = len(splits.train)
    steps = match_steps(s.budget, 1.0, s.full_epochs, n, s.batch_size)
    epochs = epochs_of_steps(steps, n, s.batch_size)
    small = fold(_net1_model(s, splits, net1_state), member=0)
    large = plain_model(s, splits, half=False, seed_part=21)
    widen(small, large, method, seed=derive_seed(s.seed, 22))
    extra = {"grown_val_acc_at_growth": _acc(large, splits.val),
             "grown_test_acc_at_growth": _acc(large, splits.test)}
    snaps: list[torch.Tensor] = []
    phases: list[str] = []
    cfg = _train_config(s, 0, s.grown_lr, phase=14, warmup=s.grown_warmup, steps=steps, n_train=n)
    _, res = _fit(large, splits, cfg, _plain_groups(large, s),
                  [FeatureSnapshots(_probe(s, splits), snaps, "grown", phases)])
    led = ledger([Phase("net1", s.full_epochs, r_small), Phase("grown", epochs, r_big)], r_big, s.full_epochs,
                 len(splits.train), charge_net1=s.charge_net1)
    return RunResult(method, s.seed, res.test_acc, res.val_acc, led.normalized,
                     {"grown": epochs, "grown_steps": steps},
                     led.to_dict(), [dict(r, phase="grown") for r in res.history], extra, snaps, phases, large)


def _plain_groups(model: nn.Module, s: GrowSettings) -> list[dict]:
    # Same convention as the template model: weight decay on every weight and BN parameter.
    return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": s.weight_decay}]


def run_scratch(s: GrowSettings, splits, method: str) -> RunResult:
    r_small, r_big = macs(s, splits)
    half = method.startswith("small")
    ratio = r_small / r_big if half else 1.0
    n = len(splits.train)
    steps = None
    if method.endswith("match"):
        steps = match_steps(s.budget, ratio, s.full_epochs, n, s.batch_size)
        epochs = epochs_of_steps(steps, n, s.batch_size)
    else:
        epochs = s.full_epochs
    model = plain_model(s, splits, half=half, seed_part=31)
    snaps: list[torch.Tensor] = []
    phases: list[str] = []
    cfg = _train_config(s, epochs, s.lr, phase=15, steps=steps, n_train=n)
    _, res = _fit(model, splits, cfg, _plain_groups(model, s),
                  [FeatureSnapshots(_probe(s, splits), snaps, "scratch", phases)])
    led = ledger([Phase("scratch", epochs, r_small if half else r_big)], r_big, s.full_epochs, len(splits.train))
    return RunResult(method, s.seed, res.test_acc, res.val_acc, led.normalized,
                     {"scratch": epochs, "scratch_steps": steps},
                     led.to_dict(), [dict(r, phase="scratch") for r in res.history], {}, snaps, phases, model)


def run_method(method: str, s: GrowSettings, splits, net1_state=None) -> RunResult:
    choose(method, METHODS, "method")
    if method == "mixturegrowth":
        return run_mixturegrowth(s, splits, net1_state, fusion=True)
    if method == "wo-fusion":
        return run_mixturegrowth(s, splits, net1_state, fusion=False)
    if method in ("random", "random-full", "net2net"):
        return run_widening(s, splits, net1_state, method)
    return run_scratch(s, splits, method)


def epoch_cka(result: RunResult) -> torch.Tensor:
    return cka_matrix(result.snapshots)
