"""MixtureGrowth (Pham et al., WACV 2024): grow a network by recombining learned parameter templates.

Public API:
    MixtureGrowthConfig, apply(model, config, filter_fn)   template-mixing layers on a plain network
    set_member / member_mode                                  run small network m, or the grown one (None)
    grow(model, layout, coef_init, fusion=...)                grow two members into one twice as wide
    fold_to_plain(model, member=None)                          templates -> plain weights
    build_wrn(name, ..., half=)                                the pre-activation WRN used throughout
    forward_macs, ledger, solve_budget                         FLOPs accounting (see flops.py)
"""

from reparam.mixturegrowth.grow import COEF_INITS, LAYOUTS, GrowthInfo, fold_to_plain, grow
from reparam.mixturegrowth.layers import (
    MemberBatchNorm2d,
    MixtureGrowthConfig,
    TemplateMix,
    apply,
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
    "COEF_INITS", "LAYOUTS", "GrowthInfo", "MemberBatchNorm2d", "MixtureGrowthConfig", "TemplateMix",
    "WideResNet", "apply", "build_wrn", "current_member", "fold_to_plain", "grow", "is_grown",
    "is_template_mixing", "member_mode", "param_groups", "set_member", "template_layers",
]
