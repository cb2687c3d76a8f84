"""TRP: Trained Rank Pruning (Xu et al., arXiv 1812.02402).

Training alternates SGD with a truncated-SVD projection of every target conv every m steps (optionally
plus a nuclear-norm sub-gradient), so the weights end up low-rank; each conv is then split into two
cheaper convs with no fine-tuning.

    targets = select_targets(model)                      # 3x3+ convs, stem excluded
    cb = TRPCallback(targets, TRPConfig(scheme="channel", energy=0.05, period=1))
    Trainer(model, data, cfg, callbacks=[cb]).fit()
    small, plans = decompose_model(model, "channel", "value:0.05")
"""

from reparam.trp.config import TRPConfig
from reparam.trp.decompose import LayerPlan, MultiPathConv, decompose_conv, decompose_model, skeleton
from reparam.trp.flops import conv_macs, formula_macs, speedup
from reparam.trp.project import (
    default_filter,
    low_rank,
    nuclear_norm,
    nuclear_subgradient,
    project_,
    project_model_,
    select_targets,
)
from reparam.trp.rank import RankRule, energy_rank, fixed_rank, fraction_rank, value_rank
from reparam.trp.reshape import from_matrix, max_rank, to_matrix


def __getattr__(name: str):
    # the callback imports the trainer; load it only when asked for
    if name == "TRPCallback":
        from reparam.trp.callback import TRPCallback

        return TRPCallback
    raise AttributeError(name)


__all__ = [
    "LayerPlan", "MultiPathConv", "RankRule", "TRPCallback", "TRPConfig", "conv_macs", "decompose_conv",
    "decompose_model", "default_filter", "energy_rank", "fixed_rank", "formula_macs", "fraction_rank",
    "from_matrix", "low_rank", "max_rank", "nuclear_norm", "nuclear_subgradient", "project_",
    "project_model_", "select_targets", "skeleton", "speedup", "to_matrix", "value_rank",
]
