"""Robust tickets (Fu et al., DAC 2023): sparse subnetworks drawn from adversarially pretrained models.

    h = tickets.apply(model, tickets.Config(sparsity=0.9))   # one-shot magnitude ticket (OMP) as masks
    ... fine-tune (the masks keep pruned weights at exactly 0) ...
    tickets.fold(model)                                     # plain weights with exact zeros

Pipeline: robust pretraining (PGD / Gaussian noise hooks) -> ticket drawing (OMP, IMP / A-IMP, LMP;
unstructured, channel or N:M) -> transfer (full fine-tuning or linear evaluation) -> evaluation (clean,
PGD, OOD). See docs/tickets.md.
"""

from reparam.tickets.api import apply, fold
from reparam.tickets.attacks import PGDConfig, pgd, robust_accuracy
from reparam.tickets.config import Config
from reparam.tickets.hooks import AdversarialTraining, GaussianNoiseTraining
from reparam.tickets.masks import (
    MaskParam,
    apply_masks,
    fold_masks,
    get_masks,
    layer_sparsity,
    load_masks,
    prunable,
    save_masks,
    sparsity,
)
from reparam.tickets.patterns import Pattern, parse_pattern, select

__all__ = [
    "AdversarialTraining", "Config", "GaussianNoiseTraining", "MaskParam", "PGDConfig", "Pattern", "apply",
    "apply_masks", "fold", "fold_masks", "get_masks", "layer_sparsity", "load_masks", "parse_pattern", "pgd",
    "prunable", "robust_accuracy", "save_masks", "select", "sparsity",
]
