"""Tiny synthetic data and models for the training-loop tests (a helper, not a conftest, so
its name cannot clash with other test folders' conftest modules)."""

from __future__ import annotations

import torch
from torch import nn


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Separable 1x4x4 uint8 images: class 1 is bright (150..255), class 0 dark (0..105)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    noise = torch.randint(0, 106, (n, 1, 4, 4), generator=g)
    images = (noise + 150 * labels.view(-1, 1, 1, 1)).to(torch.uint8)
    return images, labels


def make_model(seed: int = 0) -> nn.Module:
    """A tiny MLP with dropout, so resuming must restore the global RNG to be exact."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 2)
    )
