"""Input normalization as the first layer of every lowbit model.

Datasets hand models images scaled to [0, 1]; each model subtracts the per-channel mean and
divides by the per-channel standard deviation itself, so the saved model carries its own
preprocessing and the quantizers never see un-normalized inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def as_channel_values(values: float | Sequence[float], name: str) -> tuple[float, ...]:
    """Return ``values`` as a non-empty tuple of floats (a single float becomes a 1-tuple)."""
    if isinstance(values, (int, float)):
        return (float(values),)
    out = tuple(float(v) for v in values)
    if not out:
        raise ValueError(f"{name} must hold at least one value, got an empty sequence")
    return out


class Normalize(nn.Module):
    """``y[:, c] = (x[:, c] - mean[c]) / std[c]`` on inputs of shape (N, C, H, W).

    ``mean`` and ``std`` are buffers (saved in the state dict, never trained). A single value
    broadcasts over every channel.
    """

    def __init__(self, mean: float | Sequence[float], std: float | Sequence[float]) -> None:
        super().__init__()
        mean_t, std_t = as_channel_values(mean, "mean"), as_channel_values(std, "std")
        if len(mean_t) != len(std_t):
            raise ValueError(f"mean has {len(mean_t)} values but std has {len(std_t)}")
        if not all(s > 0 for s in std_t):
            raise ValueError(f"std values must be > 0, got {std_t}")
        self.register_buffer("mean", torch.tensor(mean_t).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std_t).view(-1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
