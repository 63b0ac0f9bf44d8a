"""Fused numba kernels for the hot paths of training (GUIDE.md, "kernels/"): each accelerates
exactly one definition of :mod:`lowbit.functional`, which chooses between it and its torch
reference, and declares its exactness (:mod:`lowbit.kernels.fused`'s docstring). Nothing here
imports ``lowbit.functional``: the math lives there, the speed here."""
