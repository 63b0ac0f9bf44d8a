"""Argument checks shared by every quantizer: bit widths and tensor contents.

Defined behaviour for bad input (tested in tests/functional/test_checks.py):
- a bit width that is not an ``int`` (``bool`` and ``float`` included) or lies outside the
  method's range raises :class:`~lowbit.errors.BitsError`;
- NaN or Inf in a *weight* raises :class:`~lowbit.errors.NonFiniteError` (weights are small,
  the check is cheap); activations propagate NaN like any torch op, and the trainer stops on a
  non-finite loss;
- an empty tensor returns an empty tensor where no statistic is needed, and raises
  :class:`~lowbit.errors.EmptyTensorError` where one is (max |w|, min/max observers).
"""

from __future__ import annotations

import torch

from lowbit.errors import BitsError, EmptyTensorError, NonFiniteError

FLOAT_BITS = 32  # "32 bits" means: leave this tensor in float


def check_bits(bits: object, lo: int = 1, hi: int = FLOAT_BITS, what: str = "bits") -> int:
    """Return ``bits`` if it is an int in ``[lo, hi]``; raise :class:`BitsError` otherwise."""
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise BitsError(f"{what} must be an integer, got {bits!r} ({type(bits).__name__})")
    if not lo <= bits <= hi:
        raise BitsError(f"{what} must be in {lo}..{hi}, got {bits}")
    return bits


def check_finite(x: torch.Tensor, what: str = "tensor") -> torch.Tensor:
    """Raise :class:`NonFiniteError` if ``x`` holds NaN or Inf."""
    if not bool(torch.isfinite(x).all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise NonFiniteError(f"{what} holds {n_nan} NaN and {n_inf} Inf values; cannot quantize")
    return x


def check_nonempty(x: torch.Tensor, what: str = "tensor") -> torch.Tensor:
    """Raise :class:`EmptyTensorError` if ``x`` has no elements."""
    if x.numel() == 0:
        raise EmptyTensorError(f"{what} is empty (shape {tuple(x.shape)}); nothing to quantize")
    return x
