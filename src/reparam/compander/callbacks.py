"""The old home of the compander's training hooks; they live in `reparam.compander.hooks` now.

Kept for one release so `from reparam.compander.callbacks import PsiDecay, WeightStatsCallback` still works.
"""

from reparam.compander.hooks import PsiDecay, WeightStatsCallback

__all__ = ["PsiDecay", "WeightStatsCallback"]
