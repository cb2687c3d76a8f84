"""PRANC settings."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from reparam.core.errors import ReparamError

MODES = ("materialized", "streamed")
BASES = ("iid", "fastfood")
DISTRIBUTIONS = ("default-init", "gaussian")
INITS = ("e0", "l1-randn", "zero")
BUDGET_RULES = ("proportional", "uniform")
OTHER_PARAMS = ("train", "freeze")


@dataclass
class PrancConfig:
    """How a model is reparametrized as theta = sum_j alpha_j * basis_j.

    k:            number of coefficients in total (global layout), or the total that `budgets` splits.
    seed:         the basis seed (stored in the file; a different seed gives a different basis).
    basis:        "iid" = every basis entry drawn independently (the paper's; cost k*d per product);
                  "fastfood" = structured theta = S H G Pi H B alpha (Li et al. 2018), O(d log d) per
                  product whatever k is, with the same per-layer variance (mode and chunk do not apply).
    distribution: "default-init" = U(+-1/sqrt(fan_in)) per layer, weights and biases alike (official
                  code's main path); "gaussian" = N(0, sigma^2) (official code's on-the-fly path).
    sigma:        Gaussian std; None means per-layer std 1/sqrt(3 fan_in), i.e. the default-init variance.
    budgets:      None = one global alpha over all basis parameters (paper / official main path);
                  "proportional" or "uniform" = one alpha per layer, k split by size or evenly;
                  {layer_name: k_layer} or [k_layer, ...] in layer order = explicit per-layer budgets.
    mode:         "materialized" keeps the k x d basis in memory (fastest while it fits); "streamed"
                  regenerates `chunk` rows at a time in forward and backward (extra memory O(chunk*d)).
    chunk:        rows per generated chunk in streamed mode (and for reconstruction).
    init:         "e0" = alpha (1, 0, ..., 0) per block, training starts at basis network 0 (official
                  code); "l1-randn" = randn normalised to unit L1 norm per block (official otf path);
                  "zero" = all zeros. None (default): "e0", or "zero" in delta mode.
    other_params: non-basis parameters other than BatchNorm (LayerNorm/GroupNorm affine, ...): "train"
                  (trained directly, stored, counted) or "freeze" (kept at their initial values, stored).
                  BatchNorm affine parameters are always trained directly and stored, as in the paper.
    exclude_state: state_dict name prefixes not stored in the file because the architecture rebuilds them
                  deterministically (e.g. a Fourier-feature matrix derived from a seed).
    delta:        False: the basis tensors are generated, theta = sum_j alpha_j basis_j (the layers' values are
                  replaced). True: fine-tuning a pretrained model, W = W_pretrained + sum_j alpha_j basis_j with
                  W_pretrained kept (frozen) as the parametrization's original, alpha starting at zero (the
                  adapted model starts at the pretrained function) and every other parameter frozen.
    """

    k: int = 1000
    seed: int = 0
    basis: str = "iid"
    distribution: str = "default-init"
    sigma: float | None = None
    budgets: None | str | dict[str, int] | list[int] = None
    mode: str = "materialized"
    chunk: int = 64
    init: str | None = None
    include_bias: bool = True
    other_params: str = "train"
    exclude_state: list[str] = field(default_factory=list)
    delta: bool = False

    def __post_init__(self) -> None:
        if self.init is None:
            self.init = "zero" if self.delta is True else "e0"
        self.validate()

    def validate(self) -> PrancConfig:
        """Check every field (also run when the Config is built); returns self."""
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k <= 0:
            raise ReparamError(f"k must be a positive integer, got {self.k!r}")
        if self.basis not in BASES:
            raise ReparamError(f"unknown PRANC basis {self.basis!r}; allowed: {', '.join(BASES)}")
        if self.mode not in MODES:
            raise ReparamError(f"unknown PRANC mode {self.mode!r}; allowed: {', '.join(MODES)}")
        if self.distribution not in DISTRIBUTIONS:
            raise ReparamError(f"unknown basis distribution {self.distribution!r}; allowed: "
                               f"{', '.join(DISTRIBUTIONS)}")
        if self.sigma is not None and not self.sigma > 0:
            raise ReparamError(f"sigma must be > 0 (or None for fan-in matched), got {self.sigma}")
        if not isinstance(self.chunk, int) or self.chunk < 1:
            raise ReparamError(f"chunk must be a positive integer, got {self.chunk!r}")
        if self.init not in INITS:
            raise ReparamError(f"unknown coefficient init {self.init!r}; allowed: {', '.join(INITS)}")
        if not isinstance(self.delta, bool):
            raise ReparamError(f"delta must be True or False, got {self.delta!r}")
        if self.delta and self.init != "zero":
            raise ReparamError(f"init {self.init!r} is not allowed in delta mode: the adapted model starts at the "
                               "pretrained one, so alpha starts at zero (init 'zero', the default)")
        if self.other_params not in OTHER_PARAMS:
            raise ReparamError(f"other_params {self.other_params!r} is not allowed; allowed: "
                               f"{', '.join(OTHER_PARAMS)}")
        if isinstance(self.budgets, str) and self.budgets not in BUDGET_RULES:
            raise ReparamError(f"unknown budget rule {self.budgets!r}; allowed: {', '.join(BUDGET_RULES)}, "
                               "a {layer: k} mapping or a list of per-layer k")
        if not (-(2**63) <= int(self.seed) < 2**64):
            raise ReparamError(f"seed {self.seed} does not fit in 64 bits")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Config = PrancConfig   # reparam.pranc.Config, the protocol's name
