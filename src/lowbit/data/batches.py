"""A fast in-memory mini-batch iterator over uint8 images (no DataLoader, no worker processes)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


def iterate_batches(
    images_uint8: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(images float32 in [0, 1], labels)`` batches.

    Only the batch being yielded is converted (``x.float() / 255``), so memory stays at the uint8
    size of the dataset. With ``shuffle`` the order is ``torch.randperm(N, generator=generator)``,
    hence deterministic for a seeded generator; without it batches come in storage order.
    ``drop_last`` drops a final batch smaller than ``batch_size``. Arguments are checked at the
    call, not at the first ``next()``.
    """
    images_uint8 = torch.as_tensor(images_uint8)
    labels = torch.as_tensor(labels)
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"images must be uint8, got {images_uint8.dtype}")
    if len(images_uint8) != len(labels):
        raise ValueError(f"{len(images_uint8)} images but {len(labels)} labels")
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int | np.integer)
        or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    batch_size = int(batch_size)
    order = torch.randperm(len(labels), generator=generator) if shuffle else None
    return _batches(images_uint8, labels, batch_size, order, drop_last)


def _batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    order: torch.Tensor | None,
    drop_last: bool,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    n = len(labels)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            x, y = images[start : start + batch_size], labels[start : start + batch_size]
        else:
            index = order[start : start + batch_size]
            x, y = images[index], labels[index]
        yield x.float().div_(255.0), y
