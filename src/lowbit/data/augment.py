"""Training-time augmentation of image batches, deterministic under a seeded generator.

``crop-flip`` is the CIFAR augmentation of He et al. 2016 (sec. 4.2, "4 pixels are padded on each
side, and a 32x32 crop is randomly sampled from the padded image or its horizontal flip"), which
every CIFAR-10 quantization paper trains its ResNets with (yang2019 sec. 4.1 follows it).
"""

from __future__ import annotations

import torch

AUGMENTATIONS = ("none", "crop-flip")


def crop_flip(
    x: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero-pad ``x`` (N, C, H, W) by ``pad`` pixels, take one random HxW crop per image, and
    mirror it left-right with probability 1/2.

    All offsets and flips are drawn from ``generator`` (offsets uniform in 0..2*pad, inclusive),
    in one gather, so it costs one copy of the batch. Returns a new tensor; ``x`` is unchanged.
    """
    if x.dim() != 4:
        raise ValueError(f"crop_flip expects (N, C, H, W) images, got shape {tuple(x.shape)}")
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"pad must be an int >= 0, got {pad!r}")
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    cols = torch.arange(w)
    cols = torch.where(flip[:, None], cols.flip(0)[None, :], cols[None, :]) + dx[:, None]
    rows = torch.arange(h)[None, :] + dy[:, None]
    batch = torch.arange(n)[:, None, None]
    # advanced indexing on dims 0, 2, 3 puts the channel dim last: (N, H, W, C)
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def augment_batch(x: torch.Tensor, kind: str, generator: torch.Generator | None) -> torch.Tensor:
    """Apply the augmentation named ``kind`` (one of :data:`AUGMENTATIONS`) to a float batch.

    ``crop-flip`` pads by H/8 pixels (4 for CIFAR's 32x32, the paper's value; 1 for 8x8 digits).
    """
    if kind == "none":
        return x
    if kind == "crop-flip":  # pad 4 at 32x32 as He et al.; scaled as H/8 for other sizes
        return crop_flip(x, max(1, x.shape[-2] // 8), generator)
    raise ValueError(f"unknown augmentation {kind!r}; choose from {AUGMENTATIONS}")
