"""NOLA (Koohpayegani et al., ICLR 2024): LoRA's two factors as linear combinations of frozen random matrices.

For a layer with pretrained weight W (out x in; a convolution's [out, in/groups, kh, kw] read as out x
in/groups*kh*kw, MultiheadAttention's in_proj_weight as 3E x E):

    W' = W + s * A B,   A = sum_i alpha_i A_i (out x r),   B = B_0 + sum_j beta_j B_j (r x in)

A_i, B_j and B_0 come from reparam's portable counter-based generator (`core.generator.unit_block`): entries
U(-1, 1)/sqrt(k) for A_i, U(-1, 1)/sqrt(l) for B_j and U(+-1/sqrt(in)) for B_0 (the bound of torch's
default init, which NOLA's code gives LoRA's input-side factor). Every (layer, factor) is its own generator
block, so no matrix repeats. alpha and beta start at zero: s * A B = 0 and the adapted model starts at the
pretrained function; B_0 != 0 gives alpha a gradient from the first step. s = lora_alpha / r.

Only elementwise IEEE multiplies and adds, in a fixed order, combine the coefficients with the matrices and
the two factors with each other (a pairwise tree over the k (or l) matrices, then the r outer products
added in order), in training and in evaluation alike. The delta is therefore a pure function of the
coefficients and the seed: bit-identical on any device and however the model is evaluated, and an adapter
file decodes to exactly the weights the model was validated with.

The pretrained tensor stays the parametrization's `original` (frozen); `merge` swaps in plain weights
(keeping the base tensor aside) and `unmerge` puts the very same base tensor back; `fold` merges for good.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from reparam.core import generator
from reparam.core.adapter import fake_quantize, has_base, keep_base, pop_base
from reparam.core.errors import ReparamError
from reparam.core.generator import tree_sum
from reparam.core.parametrize import FilterFn, SharedCoreParam
from reparam.core.protocol import (
    Applied,
    ReparamWarning,
    bake_method,
    claim,
    report_left_dense,
    select,
    tag,
    untag,
    weight_tensors,
)
from reparam.nola.config import Config

# NOLA's generator blocks sit far above PRANC's (0, 1, ...): block = NOLA_STREAM + 4 * tensor index + factor
NOLA_STREAM = 0x4E4F4C41 << 24
FACTOR_A, FACTOR_B, FACTOR_B0 = 0, 1, 2
TAKEN = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.MultiheadAttention)
_MERGED = "_nola_merged"       # module attribute {tensor: NolaDelta} while merged


def block_id(index: int, factor: int) -> int:
    return NOLA_STREAM + 4 * index + factor


def _f32(x: float) -> float:
    return float(torch.tensor(x, dtype=torch.float32).item())


@dataclass(frozen=True)
class LayerPlan:
    """One adapted tensor: where it is, its matrix shape, and where its coefficients sit."""

    module: str
    tensor: str
    shape: tuple[int, ...]
    index: int             # tensor index: its generator blocks are block_id(index, factor)
    out: int
    inn: int
    alpha_offset: int
    beta_offset: int

    @property
    def state_name(self) -> str:
        return f"{self.module}.{self.tensor}" if self.module else self.tensor

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


class NolaCoefficients(nn.Module):
    """alpha and beta (ordinary parameters, zero at the start), the plan, and the generated matrices."""

    def __init__(self, config: Config, layers: list[LayerPlan], device: torch.device):
        super().__init__()
        self.config = config
        self.layers = layers
        shared = config.sharing == "shared"
        k, l = config.k, config.n_beta
        self.alpha = nn.Parameter(torch.zeros(k if shared else k * len(layers), device=device))
        self.beta = nn.Parameter(torch.zeros(l if shared else l * len(layers), device=device))
        self._tensors: list[NolaDelta] = []
        self.frozen: list[tuple[nn.Parameter, bool]] = []   # base parameters apply froze, with their old flag
        r = config.rank
        sa, sb = _f32(1.0 / math.sqrt(k)), _f32(1.0 / math.sqrt(l))
        for p in layers:
            # non-persistent: regenerated from the seed, moved by model.to, never in the state_dict
            self.register_buffer(f"A_{p.index}", self._units(p.index, FACTOR_A, k, p.out * r, device).mul_(sa),
                                 persistent=False)
            self.register_buffer(f"B_{p.index}", self._units(p.index, FACTOR_B, l, r * p.inn, device).mul_(sb),
                                 persistent=False)
            b0 = self._units(p.index, FACTOR_B0, 1, r * p.inn, device)[0].mul_(_f32(1.0 / math.sqrt(p.inn)))
            self.register_buffer(f"B0_{p.index}", b0, persistent=False)

    def _units(self, index: int, factor: int, rows: int, cols: int, device) -> torch.Tensor:
        return generator.unit_block(int(self.config.seed), block_id(index, factor), 0, rows, 0, cols, "uniform",
                                    device)

    def coefficients(self, plan: LayerPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha, beta) of one layer (the whole vectors when shared), quantized when training is quantization-aware."""
        k, l = self.config.k, self.config.n_beta
        if self.config.sharing == "shared":
            a, b = self.alpha, self.beta
        else:
            a = self.alpha[plan.alpha_offset:plan.alpha_offset + k]
            b = self.beta[plan.beta_offset:plan.beta_offset + l]
        if self.config.quant_bits is not None:
            a, b = fake_quantize(a, self.config.quant_bits), fake_quantize(b, self.config.quant_bits)
        return a, b

    def segments(self, which: str) -> list[tuple[int, int]]:
        """(offset, length) of every coefficient vector of `which` ("alpha" or "beta"): the units of quantization."""
        n = self.config.k if which == "alpha" else self.config.n_beta
        if self.config.sharing == "shared":
            return [(0, n)]
        return [(i * n, n) for i in range(len(self.layers))]

    def factors(self, plan: LayerPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """A (out x r) and B (r x in) of one layer."""
        a, b = self.coefficients(plan)
        r = self.config.rank
        A = tree_sum(a[:, None] * getattr(self, f"A_{plan.index}")).view(plan.out, r)
        B = (getattr(self, f"B0_{plan.index}") + tree_sum(b[:, None] * getattr(self, f"B_{plan.index}")))
        return A, B.view(r, plan.inn)

    def delta(self, plan: LayerPlan) -> torch.Tensor:
        """s * A B in the tensor's shape: the r outer products added in order (elementwise, no matmul)."""
        A, B = self.factors(plan)
        acc = A[:, 0:1] * B[0:1, :]
        for t in range(1, self.config.rank):
            acc = acc + A[:, t:t + 1] * B[t:t + 1, :]
        s = self.config.scaling
        if s != 1.0:
            acc = acc * _f32(s)
        return acc.view(plan.shape)

    @property
    def stored(self) -> int:
        return self.alpha.numel() + self.beta.numel()

    def extra_repr(self) -> str:
        c = self.config
        return (f"layers={len(self.layers)}, rank={c.rank}, k={c.k}, l={c.n_beta}, sharing={c.sharing}, "
                f"seed={c.seed}, stored={self.stored}")


class NolaDelta(SharedCoreParam):
    """Parametrization of one adapted tensor: original (the pretrained tensor, frozen) + s * A B."""

    reparam_method = "nola"

    def __init__(self, core: NolaCoefficients, plan: LayerPlan, holds_core: bool = False):
        super().__init__(core, holds_core)   # alpha and beta live in one NolaDelta (SharedCoreParam)
        self.plan = plan

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return original + self._core.delta(self.plan).to(original.dtype)

    def shared_storage(self) -> list[tuple[str, torch.Tensor]]:
        """alpha and beta serve every NOLA tensor (reparam.summary counts them once)."""
        return [("nola alpha", self._core.alpha), ("nola beta", self._core.beta)]

    def extra_repr(self) -> str:
        return f"{self.plan.state_name} {list(self.plan.shape)} rank {self._core.config.rank}"


# -- apply ------------------------------------------------------------------------------------------------
def _targets(model: nn.Module, filter_fn: FilterFn | None):
    """(layer name, layer, tensor) NOLA takes, and (layer, why) for weight layers it cannot take."""
    taken, skipped = [], []
    for name, m in select(model, lambda mod: bool(weight_tensors(mod)), filter_fn):
        if isinstance(m, TAKEN):
            taken += [(name, m, t) for t in weight_tensors(m)]
        else:
            skipped.append((name, f"nola adapts Conv, Linear and MultiheadAttention weights, not {type(m).__name__}"))
    return taken, skipped


def plan_layers(model: nn.Module, config: Config, filter_fn: FilterFn | None = None
                ) -> tuple[list[LayerPlan], list[tuple[str, str]]]:
    taken, skipped = _targets(model, filter_fn)
    if not taken:
        raise ReparamError("nola found no layer to adapt: filter_fn must keep a Conv, Linear or MultiheadAttention "
                           "layer")
    plans = []
    for i, (name, m, t) in enumerate(taken):
        w = getattr(m, t)
        if w.ndim < 2:
            raise ReparamError(f"nola cannot adapt {name}.{t}: shape {list(w.shape)} is not a matrix")
        out, inn = int(w.shape[0]), int(math.prod(w.shape[1:]))
        per = config.sharing != "shared"
        plans.append(LayerPlan(name, t, tuple(w.shape), i, out, inn, i * config.k if per else 0,
                               i * config.n_beta if per else 0))
    return plans, skipped


def apply(model: nn.Module, config: Config | None = None, filter_fn: FilterFn | None = None) -> Applied:
    """NOLA on `model` in place: a delta on every Conv, Linear and MultiheadAttention weight `filter_fn`
    keeps (default: all of them, the head included). Every base parameter is frozen (the flags come back
    with `remove` / `fold`); alpha and beta, zero at the start, are the only trainable numbers. The
    handle's hook keeps the base's BatchNorm statistics (call `handle.before_forward` in your loop).
    Refuses, leaving the model untouched, a tensor another method holds (NOLA composes with none)."""
    from reparam.train.hooks import KeepNormStatistics

    config = config or Config()
    if not isinstance(config, Config):
        raise ReparamError(f"config must be a reparam.nola.Config, got {type(config).__name__}")
    config.validate()
    plans, skipped = plan_layers(model, config, filter_fn)
    modules = dict(model.named_modules())
    claim("nola", [(p.module, modules[p.module], p.tensor) for p in plans], may_follow=())
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    core = NolaCoefficients(config, plans, device)
    for p in model.parameters():
        core.frozen.append((p, p.requires_grad))
        p.requires_grad_(False)
    for i, plan in enumerate(plans):
        parametrize.register_parametrization(modules[plan.module], plan.tensor, NolaDelta(core, plan, i == 0),
                                             unsafe=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")    # the frozen base is not "left dense" in a way worth a warning
        rest, dense_total = report_left_dense("nola", model, skipped)
    if skipped:   # the frozen base's other parameters are the base, not "left dense": only skipped layers warn
        warnings.warn(f"nola did not take {len(skipped)} layer(s): "
                      + "; ".join(f"{layer} ({why})" for layer, why in skipped[:4]), ReparamWarning, stacklevel=2)
    layers = list(dict.fromkeys(p.module for p in plans))
    what = (f"seed + {core.stored:,} coefficients (rank {config.rank}, k={config.k}, l={config.n_beta}, "
            f"{config.sharing})")
    return Applied("nola", config, layers, [p.state_name for p in plans], core.stored, what, dense_total, rest,
                   skipped=skipped, hooks=[KeepNormStatistics(model)], extra={"core": core})


# -- the coefficient module of a model ------------------------------------------------------------------
def nola_core(model: nn.Module) -> NolaCoefficients:
    """The coefficient module of a NOLA model (merged or not)."""
    for module in model.modules():
        if isinstance(module, NolaDelta):
            return module._core
        merged = module.__dict__.get(_MERGED)
        if merged:
            return next(iter(merged.values()))._core
    raise ReparamError("the model has no NOLA adapter (use reparam.nola.apply)")


def is_merged(model: nn.Module) -> bool:
    return any(module.__dict__.get(_MERGED) for module in model.modules())


# -- merge / unmerge / remove / fold ----------------------------------------------------------------------
def _own_class(module: nn.Module) -> None:
    """A copy.deepcopy'd parametrized module shares its generated class; removing a parametrization deletes
    the tensor's property from that class. Give the module a class of its own first (as core.protocol.bake)."""
    cls = type(module)
    module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))


@torch.no_grad()
def merge(model: nn.Module) -> nn.Module:
    """Plain weights base + delta (no generation at run time), the base tensors kept aside: `unmerge` puts
    them back bit for bit (nothing is subtracted). Coefficients are not trainable while merged."""
    core = nola_core(model)
    if is_merged(model):
        return model
    for t in list(core._tensors):
        module = model.get_submodule(t.plan.module)
        tensor = t.plan.tensor
        plist = module.parametrizations[tensor]
        if len(plist) != 1:
            raise ReparamError(f"cannot merge {t.plan.state_name}: another parametrization is chained on NOLA")
        value = getattr(module, tensor).detach().clone()
        base = plist.original
        _own_class(module)
        parametrize.remove_parametrizations(module, tensor, leave_parametrized=False)
        keep_base(module, tensor, base)
        module.__dict__.setdefault(_MERGED, {})[tensor] = t
        delattr(module, tensor)
        module.register_parameter(tensor, nn.Parameter(value, requires_grad=False))
        tag(module, tensor, "nola")
    return model


@torch.no_grad()
def unmerge(model: nn.Module) -> nn.Module:
    """Undo `merge`: the very base tensors come back under the NOLA parametrizations."""
    for _, module in list(model.named_modules()):
        merged = module.__dict__.get(_MERGED)
        if not merged:
            continue
        for tensor in list(merged):
            t = merged.pop(tensor)
            base = pop_base(module, tensor)
            delattr(module, tensor)
            module.register_parameter(tensor, base)
            untag(module, tensor, "nola")
            parametrize.register_parametrization(module, tensor, t, unsafe=True)
        module.__dict__.pop(_MERGED, None)
    return model


def _restore_flags(core: NolaCoefficients) -> None:
    for p, flag in core.frozen:
        p.requires_grad_(flag)


@torch.no_grad()
def remove(model: nn.Module) -> nn.Module:
    """Take the adapter off: the base tensors (the same objects) back, their requires_grad flags restored."""
    core = nola_core(model)
    unmerge(model)
    for t in list(core._tensors):
        module = model.get_submodule(t.plan.module)
        _own_class(module)
        t.release()
        parametrize.remove_parametrizations(module, t.plan.tensor, leave_parametrized=False)
    _restore_flags(core)
    return model


def fold(model: nn.Module) -> nn.Module:
    """Merge for good: plain parameters base + delta (the exact weights the adapter file decodes to), the
    coefficients dropped, the base parameters' requires_grad flags restored."""
    core = nola_core(model)
    unmerge(model)
    flags = {id(p): f for p, f in core.frozen}
    originals = {t.plan.state_name: flags.get(id(model.get_submodule(t.plan.module).parametrizations[
        t.plan.tensor].original), True) for t in core._tensors}
    was_training = model.training
    bake_method(model, "nola")
    model.train(was_training)
    _restore_flags(core)
    for name, flag in originals.items():
        module_name, _, tensor = name.rpartition(".")
        getattr(model.get_submodule(module_name), tensor).requires_grad_(flag)
    return model


def coefficients_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the adapter's numbers ({"alpha", "beta"}): keep several in memory, switch with set_coefficients."""
    core = nola_core(model)
    return {"alpha": core.alpha.detach().clone(), "beta": core.beta.detach().clone()}


@torch.no_grad()
def set_coefficients(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Switch to another adapter of the same layout (the base is not touched; a merged model is re-merged)."""
    core = nola_core(model)
    for name in ("alpha", "beta"):
        have, new = getattr(core, name), state[name]
        if new.shape != have.shape:
            raise ReparamError(f"nola {name} has {new.numel()} numbers, this adapter layout takes {have.numel()}")
    merged = is_merged(model)
    if merged:
        unmerge(model)
    core.alpha.copy_(state["alpha"].to(core.alpha))
    core.beta.copy_(state["beta"].to(core.beta))
    if merged:
        merge(model)


def base_is_kept(model: nn.Module) -> bool:
    """True when every NOLA tensor still has its base (parametrization original, or kept aside when merged)."""
    core = nola_core(model)
    for t in core._tensors:
        m = model.get_submodule(t.plan.module)
        if not (parametrize.is_parametrized(m, t.plan.tensor) or has_base(m, t.plan.tensor)):
            return False
    return True
