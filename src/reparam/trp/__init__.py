"""TRP: Trained Rank Pruning (Xu et al., arXiv 1812.02402).

Training alternates SGD with a truncated-SVD projection of every target layer every m steps (optionally
plus a nuclear-norm sub-gradient), so the weights end up low-rank; each layer is then split into two
cheaper ones with no fine-tuning.

    handle = trp.apply(model, trp.Config(scheme="channel", energy=0.05, period=1))  # 3x3+ convs, stem skipped
    Trainer(model, data, cfg, callbacks=handle.hooks).fit()      # or handle.before_step/after_step in a loop
    small, plans = trp.decompose(model)                          # two convs (or two Linears) per layer
    ranks, rows = trp.make_plan(model, trp.layers(model), "channel", "value:0.05", input_shape=(3, 32, 32),
                                batches=(1, 128), table=trp.CostTable())   # split only what runs faster here
    small, plans = trp.decompose(model, ranks)                   # None = layer kept whole

Old names kept for one release: TRPConfig (= Config), TRPCallback (the hook without apply),
decompose_model (decomposes the convs a filter picks in any model: the post-hoc baseline).
"""

from reparam.trp.apply import apply, choose, fold, layers
from reparam.trp.config import Config, TRPConfig
from reparam.trp.decompose import (
    LayerPlan,
    MultiPathConv,
    decompose,
    decompose_conv,
    decompose_linear,
    decompose_model,
    skeleton,
)
from reparam.trp.export import RUNTIMES, compare, fold_batchnorm, module_times, prepare
from reparam.trp.flops import conv_macs, formula_macs, speedup
from reparam.trp.latency import CostTable, peak_forward_bytes
from reparam.trp.plan import PLANS, PlanRow, fast_ranks, make_plan, tighten
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
    # the hooks import the trainer's hook interface; load them only when asked for
    if name in ("TRPHook", "TRPCallback"):
        from reparam.trp import hooks

        return getattr(hooks, name)
    raise AttributeError(name)


__all__ = [
    "PLANS", "RUNTIMES", "Config", "CostTable", "LayerPlan", "MultiPathConv", "PlanRow", "RankRule", "TRPCallback",
    "TRPConfig", "TRPHook", "apply", "choose", "compare", "conv_macs", "decompose", "decompose_conv",
    "decompose_linear", "decompose_model", "default_filter", "energy_rank", "fast_ranks", "fixed_rank", "fold",
    "fold_batchnorm", "formula_macs", "fraction_rank", "from_matrix", "layers", "low_rank", "make_plan", "max_rank",
    "module_times", "nuclear_norm", "nuclear_subgradient", "peak_forward_bytes", "prepare", "project_",
    "project_model_", "select_targets", "skeleton", "speedup", "tighten", "to_matrix", "value_rank",
]
