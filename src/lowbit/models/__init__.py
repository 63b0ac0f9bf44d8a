"""Reference models for lowbit experiments, and the one name -> builder table.

Every model starts with :class:`Normalize` (inputs are images scaled to [0, 1]), uses a separate
``nn.ReLU`` instance for every activation, and registers its Linear/Conv2d layers in execution
order, so ``lowbit.quantize`` can find the first and last layer by module order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from lowbit.models.lenet import LeNet5, LeNet300
from lowbit.models.normalize import Normalize
from lowbit.models.resnet import BasicBlock, ResNet, resnet18, resnet20

__all__ = [
    "MODELS",
    "BasicBlock",
    "LeNet5",
    "LeNet300",
    "Normalize",
    "ResNet",
    "build_model",
    "resnet18",
    "resnet20",
]

MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet300": LeNet300,
    "lenet5": LeNet5,
    "resnet20": resnet20,
    "resnet18": resnet18,
}


def build_model(
    name: str,
    in_channels: int,
    image_size: int | Sequence[int],
    num_classes: int,
    mean: float | Sequence[float],
    std: float | Sequence[float],
) -> nn.Module:
    """Build the model called ``name`` in :data:`MODELS` for the given input and class count.

    ``mean``/``std`` hold one value per input channel (or one value for all channels).
    Raises ``ValueError`` for an unknown name (listing the known ones) or bad sizes.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    for label, value in (("in_channels", in_channels), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be a positive int, got {value!r}")
    for label, values in (("mean", mean), ("std", std)):
        count = 1 if isinstance(values, (int, float)) else len(values)
        if count not in (1, in_channels):
            raise ValueError(f"{label} has {count} values; expected 1 or {in_channels}")
    return MODELS[name](in_channels, image_size, num_classes, mean, std)
