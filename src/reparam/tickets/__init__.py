"""Robust tickets (Fu et al., DAC 2023): sparse subnetworks drawn from adversarially pretrained models.

Pipeline: robust pretraining (PGD / Gaussian noise) -> ticket drawing (OMP, IMP / A-IMP, LMP; unstructured,
channel or N:M) -> transfer (full fine-tuning or linear evaluation) -> evaluation (clean, PGD, OOD).
"""

from reparam.tickets.attacks import (
    AdversarialTraining,
    GaussianNoiseTraining,
    PGDConfig,
    pgd,
    robust_accuracy,
)
from reparam.tickets.masks import (
    apply_masks,
    get_masks,
    layer_sparsity,
    load_masks,
    prunable,
    save_masks,
    sparsity,
)
from reparam.tickets.patterns import Pattern, parse_pattern, select

__all__ = [
    "AdversarialTraining", "GaussianNoiseTraining", "PGDConfig", "pgd", "robust_accuracy",
    "apply_masks", "get_masks", "layer_sparsity", "load_masks", "prunable", "save_masks", "sparsity",
    "Pattern", "parse_pattern", "select",
]
