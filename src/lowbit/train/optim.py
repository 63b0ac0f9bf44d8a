"""Optimizer and learning-rate schedule from a TrainConfig (one literal table each).

The schedule is stepped once per optimizer step (per batch), not per epoch: a 1-epoch
fine-tune under "cosine" anneals within its epoch instead of training at a flat lr (issue 12,
item 5). Each schedule is a closed-form factor of the step index t (``LambdaLR``), so its value
at step t does not depend on how the run was split by checkpoints, and the checkpointed
``last_epoch`` (= steps taken) is all a resume needs.
  - "cosine": lr_t = lr * (1 + cos(pi t / T)) / 2 over T = epochs * batches_per_epoch steps
    (Loshchilov & Hutter 2017, SGDR eq. (5) with eta_min = 0 and no restart, per step as
    their T_cur counts iterations); the last step trains at lr (1 + cos(pi (T-1)/T)) / 2 > 0.
  - "step": x0.1 at the start of epoch epochs // 2 and again at (3 epochs) // 4, the same
    epoch boundaries as the per-epoch MultiStepLR before (He et al. 2016's CIFAR schedule).
  - "none": constant lr.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from lowbit.train.config import TrainConfig

STEPPED = "per batch"  # what the summary records as the schedule's stepping


def _adam(params: Iterable[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def _sgd(params: Iterable[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def cosine_factor(total: int) -> Callable[[int], float]:
    """t -> (1 + cos(pi t / total)) / 2: the cosine schedule's lr factor at step t."""
    return lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))


def step_factor(epochs: int, batches: int) -> Callable[[int], float]:
    """t -> 0.1 ** (milestones passed), milestones at epochs epochs//2 and (3 epochs)//4."""
    milestones = [epochs // 2 * batches, (3 * epochs) // 4 * batches]
    return lambda t: 0.1 ** sum(t >= m for m in milestones)


def _constant(t: int) -> float:
    return 1.0


def _cosine(epochs: int, batches: int) -> Callable[[int], float]:
    return cosine_factor(epochs * batches)


def _none(epochs: int, batches: int) -> Callable[[int], float]:
    return _constant


OPTIMIZERS = {"adam": _adam, "sgd": _sgd}
SCHEDULES = {"cosine": _cosine, "step": step_factor, "none": _none}


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer named by ``config.optimizer`` over all of ``model``'s parameters."""
    return OPTIMIZERS[config.optimizer](model.parameters(), config)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
                   batches_per_epoch: int) -> LRScheduler:
    """The schedule named by ``config.schedule`` over ``config.epochs`` epochs of
    ``batches_per_epoch`` steps, to be stepped after every optimizer step (module doc)."""
    if batches_per_epoch < 1:
        raise ValueError(f"batches_per_epoch must be >= 1, got {batches_per_epoch}")
    return LambdaLR(optimizer, SCHEDULES[config.schedule](config.epochs, batches_per_epoch))


def schedule_record(config: TrainConfig, batches_per_epoch: int) -> dict:
    """What schedule a run trained with, for its summary: name, stepping, total steps, base lr."""
    return {"name": config.schedule, "stepped": STEPPED, "batches_per_epoch": batches_per_epoch,
            "total_steps": config.epochs * batches_per_epoch, "base_lr": config.lr}
