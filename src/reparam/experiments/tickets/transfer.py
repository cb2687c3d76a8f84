"""Transfer a ticket f(.; m * theta_pre) to a target task: full fine-tuning or linear evaluation."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from reparam import tickets
from reparam.core.errors import ReparamError
from reparam.tickets import masks as mk

PROTOCOLS = ("full", "linear")


@dataclass
class LinearConfig:
    steps: int = 300           # full-batch Adam steps on cached features (reference run 1 of the spec)
    lr: float = 0.01
    weight_decay: float = 0.0
    seed: int = 0


def ticket_model(pretrained: nn.Module, masks: mk.Masks, num_classes: int) -> nn.Module:
    """A copy of the pretrained model with a new head and the mask parametrization applied."""
    from reparam.models import replace_head

    net = copy.deepcopy(pretrained)
    replace_head(net, num_classes)
    if masks:
        tickets.apply(net, tickets.Config(masks=masks))
    return net


@torch.no_grad()
def extract_features(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    was = model.training
    model.eval()
    out = torch.cat([model.features(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    model.train(was)
    return out


def linear_eval(net: nn.Module, target, cfg: LinearConfig | None = None) -> dict[str, Any]:
    """Frozen backbone in eval mode (BN statistics untouched); train only `net.head` on cached features.

    The head is picked on validation accuracy over the steps (checked every 10 steps).
    """
    cfg = cfg or LinearConfig()
    gen = torch.Generator().manual_seed(cfg.seed)
    feats = {s: extract_features(net, getattr(target, s).tensors[0]) for s in ("train", "val", "test")}
    labels = {s: getattr(target, s).tensors[1] for s in ("train", "val", "test")}
    head = net.head
    with torch.no_grad():   # seeded re-init so results do not depend on global RNG state
        bound = 1.0 / head.in_features ** 0.5
        head.weight.copy_((torch.rand(head.weight.shape, generator=gen) * 2 - 1) * bound)
        head.bias.copy_((torch.rand(head.bias.shape, generator=gen) * 2 - 1) * bound)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best, best_state = -1.0, None

    def acc(split: str) -> float:
        with torch.no_grad():
            return (head(feats[split]).argmax(1) == labels[split]).float().mean().item()

    for step in range(cfg.steps):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(head(feats["train"]), labels["train"])
        loss.backward()
        opt.step()
        if (step + 1) % 10 == 0 or step + 1 == cfg.steps:
            a = acc("val")
            if a > best:
                best, best_state = a, {k: v.detach().clone() for k, v in head.state_dict().items()}
    if best_state is not None:
        head.load_state_dict(best_state)
    for p in head.parameters():
        p.requires_grad_(False)
    return {"val_acc": best, "test_acc": acc("test"), "train_acc": acc("train")}


def transfer(pretrained: nn.Module, masks: mk.Masks, target, protocol: str = "full", train_config=None,
             linear: LinearConfig | None = None, callbacks=(), out_dir=None
             ) -> tuple[nn.Module, dict[str, Any]]:
    """Transfer the ticket to `target` (DatasetSplits). Returns (model, metrics dict with test_acc).

    full: every weight trains with the mask fixed by the parametrization (pruned entries stay 0).
    linear: only a new head trains, on features of the frozen masked backbone in eval mode.
    """
    if protocol not in PROTOCOLS:
        raise ReparamError(f"unknown transfer protocol {protocol!r}; allowed: {', '.join(PROTOCOLS)}")
    net = ticket_model(pretrained, masks, target.num_classes)
    if protocol == "linear":
        for p in net.parameters():
            p.requires_grad_(False)
        for p in net.head.parameters():
            p.requires_grad_(True)
        res = linear_eval(net, target, linear)
        net.eval()
        return net, res
    from reparam.train import TrainConfig, Trainer

    tcfg = train_config or TrainConfig(epochs=10, lr=0.01, weight_decay=1e-4, progress=False,
                                       checkpoint=False)
    r = Trainer(net, target, tcfg, callbacks=list(callbacks), out_dir=out_dir).fit(resume=False)
    return net, {"val_acc": r.val_acc, "test_acc": r.test_acc, "train_seconds": r.train_seconds,
                 "best_epoch": r.best_epoch}
