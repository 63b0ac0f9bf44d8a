"""Optimizer and learning-rate schedule from a TrainConfig (one literal table each)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LRScheduler, MultiStepLR

from lowbit.train.config import TrainConfig


def _adam(params: Iterable[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def _sgd(params: Iterable[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def _constant(epoch: int) -> float:
    return 1.0


def _cosine(optimizer: torch.optim.Optimizer, epochs: int) -> LRScheduler:
    return CosineAnnealingLR(optimizer, T_max=epochs)


def _step(optimizer: torch.optim.Optimizer, epochs: int) -> LRScheduler:
    return MultiStepLR(optimizer, milestones=[epochs // 2, (3 * epochs) // 4], gamma=0.1)


def _none(optimizer: torch.optim.Optimizer, epochs: int) -> LRScheduler:
    return LambdaLR(optimizer, _constant)


OPTIMIZERS = {"adam": _adam, "sgd": _sgd}
SCHEDULES = {"cosine": _cosine, "step": _step, "none": _none}


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer named by ``config.optimizer`` over all of ``model``'s parameters."""
    return OPTIMIZERS[config.optimizer](model.parameters(), config)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> LRScheduler:
    """The per-epoch schedule named by ``config.schedule`` over ``config.epochs`` epochs."""
    return SCHEDULES[config.schedule](optimizer, config.epochs)
