"""The one trainer every method uses: a plain loop with hooks (callbacks)."""

from reparam.train.callbacks import Callback
from reparam.train.config import TrainConfig
from reparam.train.hooks import Hook, HookCallback, as_callback
from reparam.train.optim import make_optimizer, make_scheduler
from reparam.train.trainer import Trainer, TrainResult

__all__ = [
    "Callback",
    "Hook",
    "HookCallback",
    "as_callback",
    "TrainConfig",
    "Trainer",
    "TrainResult",
    "make_optimizer",
    "make_scheduler",
]
