"""The runtime's fast kernels (numba): each accelerates one path of
:mod:`lowbit.runtime.layers` and equals it exactly on integer and binary paths.

Imports numba (not torch): ``lowbit.runtime`` itself stays numpy-only and imports this package
only when a model is loaded with ``fast=True`` (:mod:`lowbit.runtime.fast`).
"""
