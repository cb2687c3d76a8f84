"""The Powerprop-style modified Adam for reparameterized weights (spec §1.6).

Plain Adam on v normalizes away Psi'(v): its step is roughly sign(dL/dv) * lr whatever the slope, so the
compander's "bigger updates near zero" disappears. The modified Adam keeps Adam's moments on dL/dw and
multiplies the step by Psi'(v):

    g_w = v.grad / Psi'(v)                 (= dL/dw, by the chain rule dL/dv = dL/dw * Psi'(v))
    m, s = Adam moments of g_w (bias-corrected)
    v <- v - lr * m_hat / (sqrt(s_hat) + eps) * Psi'(v)

Parameters without a derivative (BN, biases, learnable a and b) get the ordinary Adam step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn as nn

from reparam.compander.parametrization import compander_tensors

Derivative = Callable[[torch.Tensor], torch.Tensor]


class CompanderAdam(torch.optim.Optimizer):
    """Adam whose moments live in w-space for the parameters listed in `derivatives` {param: Psi'}.

    weight_decay is coupled L2 (added to the gradient, as torch.optim.Adam), applied to the raw gradient
    of each parameter before the conversion to w-space.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0,
                 derivatives: dict[torch.Tensor, Derivative] | None = None):
        if lr < 0 or eps < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1) or weight_decay < 0:
            raise ValueError(f"invalid CompanderAdam settings lr={lr} betas={betas} eps={eps} "
                             f"weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self._derivatives = {id(p): f for p, f in (derivatives or {}).items()}

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["weight_decay"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                deriv = self._derivatives.get(id(p))
                slope = deriv(p) if deriv is not None else None
                if slope is not None:
                    grad = grad / slope
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                m, s = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                s.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                m_hat = m / (1 - beta1 ** t)
                s_hat = s / (1 - beta2 ** t)
                update = m_hat / (s_hat.sqrt() + group["eps"])
                if slope is not None:
                    update = update * slope
                p.add_(update, alpha=-group["lr"])
        return loss


def compander_adam(model: nn.Module, param_groups: list[dict] | Iterable, lr: float = 1e-3,
                   **kwargs) -> CompanderAdam:
    """A CompanderAdam over `param_groups` with Psi' registered for every compandered tensor's v.

    A compander after PRANC has no v: PRANC's coefficients get the ordinary Adam step."""
    derivs: dict[torch.Tensor, Derivative] = {}
    for _, module, t, comp in compander_tensors(model):
        plist = module.parametrizations[t]
        if plist[0] is comp:
            derivs[plist.original] = comp.dpsi
    return CompanderAdam(param_groups, lr=lr, derivatives=derivs, **kwargs)
