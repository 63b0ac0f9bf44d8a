"""A plain training loop (no framework): fit, evaluate, atomic checkpoints, JSON-lines metrics."""

from lowbit.train.checkpoint import atomic_save, load_checkpoint
from lowbit.train.config import TrainConfig
from lowbit.train.loop import evaluate, fit

__all__ = ["TrainConfig", "atomic_save", "evaluate", "fit", "load_checkpoint"]
