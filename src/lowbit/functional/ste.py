"""Straight-through estimators (Bengio, Léonard, Courville, "Estimating or propagating gradients
through stochastic neurons", arXiv:1308.3432, 2013).

Forward: the rounding function. Backward: identity (dy/dx = 1). Written as
``x + (r(x) - x).detach()``, which gives the identity gradient with no custom Function.
Tested in tests/functional/test_ste.py.
"""

from __future__ import annotations

import torch

from lowbit.functional.checks import tensor_arg


def ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``q`` forward (e.g. ``codebook.decode(codes)``), identity gradient to ``x``: the one
    straight-through helper for quantizers whose backward is the identity. ``x + (q - x)``
    would round differently; the value returned is ``q`` exactly (bit for bit)."""
    x, q = tensor_arg(x, "x"), tensor_arg(q, "q")
    return _STE.apply(x, q.detach())


class _STE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, q):
        return q.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round half to even forward, identity gradient."""
    x = tensor_arg(x, "x")
    return x + (torch.round(x) - x).detach()


def ceil_ste(x: torch.Tensor) -> torch.Tensor:
    """ceil forward, identity gradient."""
    x = tensor_arg(x, "x")
    return x + (torch.ceil(x) - x).detach()


def floor_ste(x: torch.Tensor) -> torch.Tensor:
    """floor forward, identity gradient."""
    x = tensor_arg(x, "x")
    return x + (torch.floor(x) - x).detach()
