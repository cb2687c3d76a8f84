"""`Config` and `apply`: turn a plain target-width network into a template-mixing one, or refuse.

Growth changes the width of every layer on the grown path, so MixtureGrowth cannot leave a layer of that
path dense: `apply` takes every module `filter_fn` keeps (default: all of them) that holds parameters or
normalizes channels, and refuses the whole model (nothing changed) if one of them is not an ungrouped,
bias-free Conv2d / Linear with splittable widths or an affine BatchNorm2d. Layers outside the grown path
(an input adapter before the stem, an auxiliary branch) are excluded with `filter_fn` and stay as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn.utils import parametrize as tparam

from reparam.core.errors import ReparamError
from reparam.core.protocol import Applied, claim, report_left_dense, select
from reparam.mixturegrowth.layers import (
    TEMPLATE_INITS,
    MemberBatchNorm2d,
    TemplateMix,
    coefficient_parameters,
    set_member,
    template_layers,
)

METHOD = "mixturegrowth"
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


@dataclass
class Config:
    """How `apply` builds the template-mixing network.

    g: growth factor; 2 (the paper's and the official code's only setting).
    n_templates: templates per set (paper: 2; with g=2, 2 sets x 2 templates = the full layer's parameters).
    share_templates: paper's cross-layer sharing; pairs of consecutive same-shape layers share template
        tensors and keep their own coefficients (the CIFAR code default is no sharing).
    train_end_coefs: the stem's and classifier's coefficients are trainable (official no-bank code);
        the paper (default, False) keeps them fixed at their initial values.
    template_init: "per-template" (default: each template kaiming-normal with its layer's fan-in) or
        "stacked" (the official code: kaiming-normal over the stacked [T, out, in, k, k] tensor, so
        templates are sqrt(out) times smaller; see docs/mixturegrowth.md, paper vs code).
    full_input / full_output: names of the layers that keep their full input (stem) / full output
        (classifier); None = the first / last selected Conv2d/Linear.
    """

    g: int = 2
    n_templates: int = 2
    share_templates: bool = False
    train_end_coefs: bool = False
    full_input: tuple[str, ...] | None = None
    full_output: tuple[str, ...] | None = None
    template_init: str = "per-template"

    def __post_init__(self) -> None:
        if self.template_init not in TEMPLATE_INITS:
            raise ReparamError(f"template_init must be one of {', '.join(TEMPLATE_INITS)}, got {self.template_init!r}")
        if not _is_int(self.g) or self.g != 2:
            raise ReparamError(f"g: growth factor must be 2 (the paper's setting; no other is supported), "
                               f"got {self.g!r}")
        if not _is_int(self.n_templates) or self.n_templates < 1:
            raise ReparamError(f"n_templates: templates per set must be an integer >= 1, got {self.n_templates!r}")
        for name in ("share_templates", "train_end_coefs"):
            if not isinstance(getattr(self, name), bool):
                raise ReparamError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("full_input", "full_output"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, str) or not isinstance(value, (tuple, list)) or not all(
                    isinstance(v, str) for v in value):
                raise ReparamError(f"{name} must be None or a tuple of layer names (str), got {value!r}")
            setattr(self, name, tuple(value))


MixtureGrowthConfig = Config


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _candidate(module: nn.Module) -> bool:
    """A module growth would have to widen: a layer with weights, a norm, anything with parameters."""
    if isinstance(module, MemberBatchNorm2d):
        return False          # its BatchNorms are candidates (and already MixtureGrowth's: claim refuses)
    return (isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.Embedding,
                                nn.MultiheadAttention) + _NORMS)
            or any(True for _ in module.parameters(recurse=False)))


def _refusal(name: str, module: nn.Module) -> str | None:
    """Why MixtureGrowth cannot take `module` (None: it can)."""
    kind = type(module).__name__
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            what = "depthwise" if module.groups == module.in_channels else "grouped"
            return (f"it is a {what} convolution (groups={module.groups}); template mixing grows ungrouped "
                    "Conv2d layers only")
        if module.bias is not None:
            return "it has a bias; template-mixing layers have none (paper §3.1): build it with bias=False"
        return None
    if type(module) is nn.BatchNorm2d:
        if not (module.affine and module.track_running_stats):
            return "a BatchNorm2d without affine parameters or running statistics cannot be split per member"
        if module.num_features % 2:
            return f"its {module.num_features} channels do not split into 2 member halves"
        return None
    if isinstance(module, _NORMS):
        return f"{kind} cannot be grown (only BatchNorm2d becomes a per-member BatchNorm)"
    if isinstance(module, (nn.Conv1d, nn.Conv3d, nn.Embedding, nn.MultiheadAttention)):
        return f"{kind} cannot be a template-mixing layer (Conv2d and Linear only)"
    return f"{kind} holds parameters that MixtureGrowth cannot grow"


def _dims(module: nn.Module) -> tuple[int, int, tuple[int, ...]]:
    if isinstance(module, nn.Conv2d):
        return module.out_channels, module.in_channels, tuple(module.kernel_size)
    return module.out_features, module.in_features, ()


def apply(model: nn.Module, config: Config | None = None, filter_fn=None) -> Applied:
    """Make `model` (a plain network of the target width) a template-mixing network, in place.

    Every selected Conv2d/Linear gets a TemplateMix parametrization (its dense weight is replaced by an
    empty tensor) and every selected BatchNorm2d becomes a MemberBatchNorm2d. The first selected layer
    keeps its full input (stem), the last its full output (classifier). Afterwards the model runs
    member 0 (`set_member` / `member_mode` switch; `grow` makes it the grown network). Everything is
    checked before anything changes: a refusal (ReparamError naming the layer) leaves the model as it was.
    """
    config = Config() if config is None else config
    if not isinstance(config, Config):
        raise ReparamError(f"config must be a reparam.mixturegrowth.Config, got {type(config).__name__}")
    chosen = select(model, _candidate, filter_fn)
    layers = [(n, m) for n, m in chosen if isinstance(m, (nn.Conv2d, nn.Linear))]
    bns = [(n, m) for n, m in chosen if type(m) is nn.BatchNorm2d]
    # m.bias, not getattr(m, "weight"): reading a parametrized weight would run its parametrization.
    targets = [(n, m, "weight") for n, m in layers] + [(n, m, "bias") for n, m in layers if m.bias is not None]
    targets += [(n, m, t) for n, m in bns for t in ("weight", "bias")]
    claim(METHOD, targets)
    for name, module in chosen:
        why = _refusal(name, module)
        if why is not None:
            raise ReparamError(f"mixturegrowth cannot take layer {name or '(the model)'!r}: {why}; exclude it "
                               "with filter_fn only if it lies outside the grown path")
    if len(layers) < 2:
        raise ReparamError("template mixing needs at least a first and a last Conv2d/Linear layer; "
                           f"filter_fn left {len(layers)}")
    names = [n for n, _ in layers]
    for field in ("full_input", "full_output"):
        unknown = [n for n in getattr(config, field) or () if n not in names]
        if unknown:
            raise ReparamError(f"{field} names {unknown[0]!r}, which is not a selected Conv2d/Linear layer")
    full_in = set(config.full_input) if config.full_input is not None else {names[0]}
    full_out = set(config.full_output) if config.full_output is not None else {names[-1]}
    g = config.g
    plan = []
    for name, module in layers:
        c_out, c_in, k = _dims(module)
        g_out = 1 if name in full_out else g
        g_in = 1 if name in full_in else g
        if c_out % g_out or c_in % g_in:
            raise ReparamError(f"mixturegrowth cannot take layer {name!r}: its {c_out}x{c_in} weight is not "
                               f"divisible into {g_out}x{g_in} blocks")
        plan.append((name, module, (c_out // g_out, c_in // g_in, *k), (g_out, g_in)))
    dense_params = sum(p.numel() for p in model.parameters())

    # Checked: from here on nothing can fail. Templates are drawn in layer order (seeded runs depend on it).
    prev: TemplateMix | None = None
    prev_shared = False
    for _name, module, block, (g_out, g_in) in plan:
        share = None
        if (config.share_templates and prev is not None and not prev_shared and g_out == g_in == g
                and prev.block_shape == block and prev.grid_shape == (g, g)):
            share = prev
        p = TemplateMix(block, (g_out, g_in), config.n_templates, num_sets=g, share_from=share,
                        template_init=config.template_init)
        if (g_out == 1 or g_in == 1) and not config.train_end_coefs:
            for c in p.coefs:
                c.requires_grad_(False)
        # Only templates and coefficients are stored: drop the dense weight.
        module.weight = nn.Parameter(torch.empty(0), requires_grad=False)
        tparam.register_parametrization(module, "weight", p, unsafe=True)
        prev, prev_shared = p, share is not None
    for name, bn in bns:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child,
                MemberBatchNorm2d(bn.num_features, g, eps=bn.eps, momentum=bn.momentum))
    set_member(model, 0)
    left, _ = report_left_dense(METHOD, model)      # warns (at the caller) when much is left dense
    return _handle(model, config, names, [n for n, _ in bns], dense_params, left)


def _handle(model: nn.Module, config: Config, layers: list[str], bns: list[str], dense_params: int,
            left: list[tuple[str, int]]) -> Applied:
    templates = {id(t): t.numel() for _, _, p in template_layers(model) for t in p.templates}
    n_templates = sum(templates.values())
    n_coefs = sum(c.numel() for c in coefficient_parameters(model))
    n_bn = sum(p.numel() for m in model.modules() if isinstance(m, MemberBatchNorm2d) for p in m.parameters())
    return Applied(
        method=METHOD, config=config, layers=layers + bns,
        tensors=[f"{n}.weight" for n in layers] + [f"{n}.{t}" for n in bns for t in ("weight", "bias")],
        stored=n_templates + n_coefs + n_bn,
        stored_what=(f"{n_templates:,} template numbers + {n_coefs:,} coefficients + {n_bn:,} BatchNorm "
                     f"parameters ({config.g} members)"),
        dense_params=dense_params, left_dense=left,
        extra={"template_layers": len(layers), "batchnorms": len(bns), "member": 0})
