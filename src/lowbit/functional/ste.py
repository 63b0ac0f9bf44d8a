"""Straight-through estimators (Bengio, Léonard, Courville, "Estimating or propagating gradients
through stochastic neurons", arXiv:1308.3432, 2013).

:func:`ste` returns the quantized value ``q`` forward (exactly: ``x + (q - x).detach()``
would round) and passes the gradient to ``x`` unchanged (dy/dx = 1).
Tested in tests/functional/test_codebook.py::test_ste_returns_q_exactly_with_the_identity_gradient.
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
