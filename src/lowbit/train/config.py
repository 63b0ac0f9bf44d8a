"""TrainConfig: every knob of the plain training loop, as plain validated values."""

from __future__ import annotations

import math
from dataclasses import dataclass

from lowbit.data.augment import AUGMENTATIONS

OPTIMIZER_NAMES = ("adam", "sgd")
SCHEDULE_NAMES = ("cosine", "step", "none")
AUGMENT_NAMES = AUGMENTATIONS
PRECISION_NAMES = ("fp32", "bf16")


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"TrainConfig.{name} must be an int >= {minimum}, got {value!r}")


def _check_float(name: str, value: object, low: float, high: float, open_low: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low) and value < high
    if not ok:
        bracket = "(" if open_low else "["
        raise ValueError(f"TrainConfig.{name} must be in {bracket}{low}, {high}), got {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`lowbit.train.fit`.

    ``optimizer``: "adam" (Kingma & Ba 2015) or "sgd" (with ``momentum``, Nesterov off).
    ``schedule`` (stepped after every batch, :mod:`lowbit.train.optim`): "cosine" (Loshchilov &
    Hutter 2017, SGDR without restarts, to 0 over ``epochs`` x batches per epoch steps), "step"
    (x0.1 at the start of the epochs at 50% and 75% of ``epochs``, as He et al. 2016 for CIFAR)
    or "none". ``num_threads`` None leaves torch's thread count alone.
    ``grad_clip``: clip the gradients' global L2 norm to this value (None: no clipping).
    ``augment``: "none" or "crop-flip" (pad 4, random 32x32 crop, random horizontal flip: He et
    al. 2016's CIFAR augmentation; :mod:`lowbit.data.augment`), drawn from the epoch's seeded
    generator so resume stays exact. ``precision``: "fp32", or "bf16" to run the training
    forward/backward under ``torch.autocast(dtype=torch.bfloat16)`` (fp32 master weights and
    optimizer; evaluation stays fp32) — on CPUs with AMX this is the fast path
    (benchmarks/fast_path.py measures it). ``channels_last``: train in NHWC memory format.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    seed: int = 0
    label_smoothing: float = 0.0
    num_threads: int | None = None
    grad_clip: float | None = None
    augment: str = "none"
    precision: str = "fp32"
    channels_last: bool = False

    def __post_init__(self) -> None:
        _check_int("epochs", self.epochs, 1)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("seed", self.seed, 0)
        if self.seed >= 2**32:
            raise ValueError(f"TrainConfig.seed must be < 2**32, got {self.seed}")
        if self.num_threads is not None:
            _check_int("num_threads", self.num_threads, 1)
        _check_float("lr", self.lr, 0.0, math.inf, open_low=True)
        _check_float("momentum", self.momentum, 0.0, 1.0, open_low=False)
        _check_float("weight_decay", self.weight_decay, 0.0, math.inf, open_low=False)
        _check_float("label_smoothing", self.label_smoothing, 0.0, 1.0, open_low=False)
        if self.grad_clip is not None:
            _check_float("grad_clip", self.grad_clip, 0.0, math.inf, open_low=True)
        if self.optimizer not in OPTIMIZER_NAMES:
            raise ValueError(f"TrainConfig.optimizer must be one of {OPTIMIZER_NAMES}, "
                             f"got {self.optimizer!r}")
        for name, allowed in (("augment", AUGMENT_NAMES), ("precision", PRECISION_NAMES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"TrainConfig.{name} must be one of {allowed}, "
                                 f"got {getattr(self, name)!r}")
        if not isinstance(self.channels_last, bool):
            raise ValueError("TrainConfig.channels_last must be a bool, "
                             f"got {self.channels_last!r}")
        if self.schedule not in SCHEDULE_NAMES:
            raise ValueError(f"TrainConfig.schedule must be one of {SCHEDULE_NAMES}, "
                             f"got {self.schedule!r}")
