"""A plain own-loop training helper shared by the adapter tests (NOLA, PRANC delta mode)."""

import torch
import torch.nn.functional as F


def adam_steps(model, handle, x, y, steps: int, lr: float = 0.05) -> float:
    """`steps` full-batch Adam steps on the trainable parameters, calling the handle's per-step hook as a user's
    loop would; leaves the model in eval mode and returns the last loss."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        xb, yb = handle.before_forward(x, y)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return loss.item()
