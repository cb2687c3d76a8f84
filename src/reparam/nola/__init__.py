"""NOLA (Koohpayegani et al., ICLR 2024): fine-tune a pretrained model with a few hundred numbers.

    handle = nola.apply(model, nola.Config(k=16, rank=4), filter_fn=None)   # in place; base frozen
    ... train alpha and beta (handle.before_forward(x, y) keeps the base's BatchNorm statistics) ...
    nola.save_adapter("adapter.safetensors", model)     # seed + coefficients + the base's fingerprint
    nola.load_adapter("other.safetensors", model)       # another adapter on the same base (swaps numbers)
    nola.merge(model); nola.unmerge(model)              # plain weights and back, the base bit for bit
    nola.fold(model)                                    # merged for good: a plain nn.Module

delta W = s (sum_i alpha_i A_i)(B_0 + sum_j beta_j B_j) with matrices from reparam's portable generator.
See docs/adapters.md.
"""

from reparam.nola.config import Config
from reparam.nola.core import (
    LayerPlan,
    NolaCoefficients,
    NolaDelta,
    apply,
    base_is_kept,
    coefficients_state,
    fold,
    is_merged,
    merge,
    nola_core,
    remove,
    set_coefficients,
    unmerge,
)
from reparam.nola.fileio import load_adapter, read_adapter, round_coefficients, save_adapter

__all__ = ["Config", "LayerPlan", "NolaCoefficients", "NolaDelta", "apply", "base_is_kept", "coefficients_state",
           "fold", "is_merged", "load_adapter", "merge", "nola_core", "read_adapter", "remove",
           "round_coefficients", "save_adapter", "set_coefficients", "unmerge"]
