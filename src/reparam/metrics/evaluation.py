from __future__ import annotations

import torch
from torch.utils.data import TensorDataset


@torch.no_grad()
def accuracy(model: torch.nn.Module, dataset: TensorDataset, batch_size: int = 512) -> float:
    """Top-1 accuracy (fraction) in eval mode; restores the model's train/eval mode."""
    x_all, y_all = dataset.tensors
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(y_all), batch_size):
        correct += (model(x_all[i:i + batch_size]).argmax(1) == y_all[i:i + batch_size]).sum().item()
    model.train(was_training)
    return correct / max(1, len(y_all))
