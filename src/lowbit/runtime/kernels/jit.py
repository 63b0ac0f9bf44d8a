"""Copies of a numba kernel's Python source under their own names.

numba's on-disk cache keys a function by its qualified name, source and signature -- not by
the globals it reads. Variants of one loop that differ in a global (a one-thread copy, a
micro-kernel for another ISA) must therefore be separate functions under separate names, or
one variant's cached code is served to the other (issue 12's landing session: the AVX2 GEMM
ran in a VNNI process, SIGFPE). :func:`named_copy` makes such a variant from one source.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

from numba import njit


def named_copy(func: Callable, name: str, jit: dict[str, Any] | None = None,
               **bind: Any) -> Callable:
    """``njit(**jit)`` of ``func``'s Python code (``func`` plain or a numba dispatcher) as a
    function named ``name`` whose globals are ``func``'s with ``bind`` replacing some."""
    py = getattr(func, "py_func", func)
    g = types.FunctionType(py.__code__, {**py.__globals__, **bind} if bind else py.__globals__,
                           name, py.__defaults__, py.__closure__)
    g.__qualname__ = name
    g.__doc__ = py.__doc__
    return njit(**(jit or {"cache": True}))(g)
