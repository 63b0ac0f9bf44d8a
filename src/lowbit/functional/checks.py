"""Argument checks shared by every quantizer: bit widths and tensor contents.

Defined behaviour for bad input (tested in tests/functional/test_checks.py):
- a bit width that is not an integer (``int`` or a numpy integer such as ``np.int64(4)``, which
  is returned as a plain ``int``; ``bool`` and ``float`` are not integers here) or lies outside
  the method's range raises :class:`~lowbit.errors.BitsError`;
- tensor arguments (:func:`tensor_arg`): the data a function quantizes (``x``, ``w``, ``codes``)
  must be a ``torch.Tensor``, else ``TypeError`` naming the argument; parameter tables
  (``levels``, ``biases``, ``scale``, ``zero_point``, ``step``, ``alpha``, a codebook, ...) may
  also be a number, a (nested) list or tuple of numbers or a numpy array, converted by
  ``torch.as_tensor`` (to the data's floating dtype and device), else ``TypeError`` naming
  the argument;
- NaN or Inf in a *weight* raises :class:`~lowbit.errors.NonFiniteError` (weights are small,
  the check is cheap); the functions propagate NaN in activations like any torch op, and the
  quantized layers (:mod:`lowbit.nn.layers`) check their inputs and raise NonFiniteError
  naming the layer before any range statistic is updated; the trainer stops on a non-finite
  loss;
- an empty tensor returns an empty tensor where no statistic is needed, and raises
  :class:`~lowbit.errors.EmptyTensorError` where one is (max |w|, min/max observers).
"""

from __future__ import annotations

import numpy as np
import torch

from lowbit.errors import BitsError, EmptyTensorError, NonFiniteError

FLOAT_BITS = 32  # "32 bits" means: leave this tensor in float


def check_bits(bits: object, lo: int = 1, hi: int = FLOAT_BITS, what: str = "bits") -> int:
    """Return ``bits`` as a plain ``int`` if it is an integer (``int`` or numpy integer, not
    ``bool``) in ``[lo, hi]``; raise :class:`BitsError` otherwise."""
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer):
        raise BitsError(f"{what} must be an integer, got {bits!r} ({type(bits).__name__})")
    bits = int(bits)
    if not lo <= bits <= hi:
        raise BitsError(f"{what} must be in {lo}..{hi}, got {bits}")
    return bits


def tensor_arg(
    value: object, what: str, like: torch.Tensor | None = None, table: bool = False
) -> torch.Tensor:
    """The one rule for tensor arguments of ``lowbit.functional`` (see the module doc).

    A ``torch.Tensor`` is returned unchanged. With ``table=False`` (the data being quantized)
    anything else is a ``TypeError`` naming ``what``. With ``table=True`` (a parameter table
    such as levels, biases or a scale) a number, a list or tuple of numbers or a numpy array is
    converted by ``torch.as_tensor`` to a floating tensor: ``like``'s dtype and device when
    ``like`` is a floating tensor, else torch's default dtype (tables hold level values, not
    indices); strings, bools, ``None`` and ragged or non-numeric lists are a ``TypeError``
    naming ``what``.
    """
    if isinstance(value, torch.Tensor):
        return value
    kind = type(value).__name__
    if not table:
        raise TypeError(f"{what} must be a torch.Tensor, got {kind}; wrap it in torch.tensor()")
    if not isinstance(value, str | bool | np.bool_ | None):
        floating = like is not None and like.is_floating_point()
        dtype = like.dtype if floating else torch.get_default_dtype()
        try:
            return torch.as_tensor(value, dtype=dtype, device=like.device if floating else None)
        except (TypeError, ValueError, RuntimeError):
            pass
    raise TypeError(
        f"{what} must be a torch.Tensor, a number or a list of numbers, got {kind} {value!r:.80}"
    )


def check_finite(x: torch.Tensor, what: str = "tensor") -> torch.Tensor:
    """Raise :class:`NonFiniteError` if ``x`` holds NaN or Inf."""
    tensor_arg(x, what)
    if not bool(torch.isfinite(x).all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise NonFiniteError(f"{what} holds {n_nan} NaN and {n_inf} Inf values; cannot quantize")
    return x


def check_nonempty(x: torch.Tensor, what: str = "tensor") -> torch.Tensor:
    """Raise :class:`EmptyTensorError` if ``x`` has no elements."""
    tensor_arg(x, what)
    if x.numel() == 0:
        raise EmptyTensorError(f"{what} is empty (shape {tuple(x.shape)}); nothing to quantize")
    return x


def along(p: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """``p`` shaped to broadcast over ``x``: as it is per tensor (``axis`` None or 0-d ``p``),
    else its values along dimension ``axis`` of ``x`` (per channel)."""
    tensor_arg(p, "p")
    if axis is None or p.dim() == 0:
        return p
    shape = [1] * x.dim()
    shape[axis] = -1
    return p.reshape(shape)
