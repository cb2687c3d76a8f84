"""PRANC: a network stored as one seed plus k coefficients over pseudo-random basis networks.

See docs/pranc.md. Main entry points:
    apply_pranc(model, PrancConfig(k=...), filter_fn=None) -> PrancCoefficients (also model.pranc)
    save_prnc / load_prnc / decode_prnc / inspect_prnc     the .prnc signature file
    generator.unit_block(seed, block, r0, r1, c0, c1)      the portable counter-based basis generator
"""

from reparam.pranc.config import PrancConfig
from reparam.pranc.core import (
    PrancCoefficients,
    apply_pranc,
    fold_pranc,
    pranc_core,
    set_inference,
)

__all__ = ["PrancConfig", "PrancCoefficients", "apply_pranc", "fold_pranc", "pranc_core", "set_inference"]
