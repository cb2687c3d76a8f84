"""Shared machinery: errors, runtime settings, registries, the file format and parametrizations."""

from reparam.core.errors import ReparamError, TrainingDiverged
from reparam.core.runtime import seed_everything, set_threads

__all__ = ["ReparamError", "TrainingDiverged", "seed_everything", "set_threads"]
