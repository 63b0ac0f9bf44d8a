"""Codes and codebooks: the one representation that export, runtime and compression share.

A weight quantizer's ``encode(w)`` returns ``(codes, codebook)``:
- ``codes``: int64 tensor shaped like ``w``, values in [0, 2^bits);
- ``codebook``: float tensor of shape (L,) for a per-tensor codebook, or (C, L) for a codebook
  per output channel (dim 0 of ``w``), with L <= 2^bits level values.
``decode(codes, codebook)`` gives back the quantizer's forward output, bit for bit.
"""

from __future__ import annotations

import torch

from lowbit.functional.checks import tensor_arg


def decode(codes: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """``codebook[codes]`` per tensor, or ``codebook[c, codes[c]]`` per output channel c."""
    codes = tensor_arg(codes, "codes")
    codebook = tensor_arg(codebook, "codebook", table=True)
    if codebook.dim() == 1:
        return codebook[codes]
    if codebook.dim() != 2 or codebook.shape[0] != codes.shape[0]:
        raise ValueError(
            f"per-channel codebook of shape {tuple(codebook.shape)} does not match codes "
            f"of shape {tuple(codes.shape)}"
        )
    flat = codes.reshape(codes.shape[0], -1)
    return torch.gather(codebook, 1, flat).reshape(codes.shape)


def signed_to_codes(k: torch.Tensor, s: int) -> torch.Tensor:
    """Map signed level indices k in {-s..-1, 1..s} (no zero) to codes 0..2s-1."""
    k = tensor_arg(k, "k").to(torch.int64)
    return torch.where(k < 0, k + s, k + s - 1)
