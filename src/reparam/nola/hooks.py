"""NOLA's one training hook: the base's BatchNorm statistics stay the pretrained ones.

NOLA changes no batch and edits no gradient; alpha and beta are ordinary parameters. The hook it hands
out (`handle.hooks`) is the shared `reparam.train.hooks.KeepNormStatistics`: call `handle.before_forward(x,
y)` in your loop (reparam's Trainer does) so that normalization layers run in eval mode while training.
"""

from reparam.train.hooks import KeepNormStatistics

__all__ = ["KeepNormStatistics"]
