"""PRANC: a network stored as one seed plus k coefficients over pseudo-random basis networks.

See docs/pranc.md. The protocol every method follows:
    handle = pranc.apply(model, pranc.Config(k=...), filter_fn=None)   # in place; handle.extra["core"]
    pranc.fold(model)                                                   # plain model, exact weights
    save_prnc / load_prnc / decode_prnc / inspect_prnc                  # the .prnc signature file
    reparam.core.generator.unit_block(seed, block, r0, r1, c0, c1)     # the portable basis generator
Old names (PrancConfig, apply_pranc, fold_pranc) stay for one release.
"""

from reparam.pranc.config import Config, PrancConfig
from reparam.pranc.core import (
    PrancCoefficients,
    apply,
    apply_pranc,
    fold,
    fold_pranc,
    pranc_core,
    set_inference,
)

__all__ = ["Config", "PrancCoefficients", "PrancConfig", "apply", "apply_pranc", "fold", "fold_pranc", "pranc_core",
           "set_inference"]
