"""MixtureGrowth (Pham et al., WACV 2024): grow a network by recombining learned parameter templates.

Public API (the protocol every reparam method follows):
    Config, apply(model, config, filter_fn) -> Applied    template-mixing layers on a plain network
    set_member / member_mode                              run small network m, or the grown one (None)
    grow(model, layout, coef_init, fusion=...)            grow two members into one twice as wide
    fold(model, member=None)                              templates -> a plain network
    build_wrn(name, ..., half=)                           the zoo's WRN in the paper's setting
    forward_macs, ledger, solve_budget                    FLOPs accounting (see flops.py)
Old names kept as aliases for one release: MixtureGrowthConfig (= Config), fold_to_plain (= fold).
"""

from reparam.mixturegrowth.apply import Config, MixtureGrowthConfig, apply
from reparam.mixturegrowth.grow import COEF_INITS, LAYOUTS, GrowthInfo, fold, fold_to_plain, grow
from reparam.mixturegrowth.layers import (
    MemberBatchNorm2d,
    TemplateMix,
    current_member,
    is_grown,
    is_template_mixing,
    member_mode,
    param_groups,
    set_member,
    template_layers,
)
from reparam.mixturegrowth.wrn import WideResNet, build_wrn

__all__ = [
    "COEF_INITS", "LAYOUTS", "Config", "GrowthInfo", "MemberBatchNorm2d", "MixtureGrowthConfig", "TemplateMix",
    "WideResNet", "apply", "build_wrn", "current_member", "fold", "fold_to_plain", "grow", "is_grown",
    "is_template_mixing", "member_mode", "param_groups", "set_member", "template_layers",
]
