"""Weight Compander (Cakaj, Mehnert, Yang; IJCNN 2023, arXiv 2306.16993).

Every weight is written as w = Psi(v) = a * arctan(v / b) and training updates v; weights are hard-bounded
by a*pi/2 and near-zero weights get larger updates. After training the parametrization is folded away, so
inference costs nothing extra. See docs/compander.md.

    h = compander.apply(model, compander.Config(a=0.8, b=0.5, wd=5e-4))   # -> reparam.core.protocol.Applied
    ... train (h.before_step(step) between backward and step: the decay on Psi(v)) ...
    compander.fold(model)                                                # plain weights, same function
"""

from reparam.compander.api import apply, fold
from reparam.compander.config import CompanderConfig, Config
from reparam.compander.functions import FUNCTIONS, dpsi, psi, psi_inverse
from reparam.compander.hooks import PsiDecay, WeightStatsCallback
from reparam.compander.optim import CompanderAdam, compander_adam
from reparam.compander.parametrization import (
    ABScale,
    Compander,
    add_psi_decay_grad,
    compander_layers,
    compander_tensors,
    latent_parameters,
    learned_scales,
    param_groups,
    plain_state_dict,
    psi_decay_penalty,
    scale_parameters,
)
from reparam.compander.stats import percentile_plot, weight_stats

__all__ = [
    "ABScale", "Compander", "CompanderAdam", "CompanderConfig", "Config", "FUNCTIONS", "PsiDecay",
    "WeightStatsCallback", "add_psi_decay_grad", "apply", "compander_adam", "compander_layers",
    "compander_tensors", "dpsi", "fold", "latent_parameters", "learned_scales", "param_groups",
    "percentile_plot", "plain_state_dict", "psi", "psi_decay_penalty", "psi_inverse", "scale_parameters",
    "weight_stats",
]
