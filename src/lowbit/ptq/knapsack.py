"""The multiple-choice knapsack behind a mixed-precision suggestion: pick one option per group
(one bit width per layer) so that the summed size stays within a capacity and the summed loss
is least.

Method: dynamic programming over the capacity (Kellerer, Pferschy, Pisinger, *Knapsack
Problems*, Springer 2004, sec. 11.5, the DP for the multiple-choice knapsack):
``best_i(c) = min_j best_{i-1}(c - size_ij) + loss_ij`` with ``best_0(c) = 0``, one numpy pass
per (group, option), then a walk back through the stored argmins. Sizes are integers (bytes);
the DP runs in units of their greatest common divisor, which loses nothing (every total is a
multiple of it), so the answer is the exact optimum. Only when capacity / unit exceeds
``max_units`` are sizes rounded *up* to a coarser unit: the answer still fits the true capacity
but may miss the optimum by what the rounding hides, and ``exact`` is False.
Ties go to the earlier option of a group (give options from most to fewest bits: a tie keeps
more bits). Test: tests/ptq/test_sensitivity.py (against brute force over all assignments).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lowbit.errors import LowbitError


def knapsack(sizes: Sequence[Sequence[int]], losses: Sequence[Sequence[float]],
             capacity: int, max_units: int = 1_000_000) -> tuple[list[int], bool]:
    """One option index per group, minimising the summed loss with the summed size <=
    ``capacity`` (module doc), and whether that is the exact optimum. Infeasible (even the
    smallest options do not fit): LowbitError naming the minimum size."""
    if len(sizes) != len(losses) or any(len(s) != len(v) or not s
                                        for s, v in zip(sizes, losses, strict=True)):
        raise ValueError("knapsack: sizes and losses must have one non-empty row per group, "
                         "of equal lengths")
    if any(int(x) < 0 for s in sizes for x in s):
        raise ValueError("knapsack: sizes must be >= 0")
    minimum = sum(min(int(x) for x in s) for s in sizes)
    if capacity < minimum:
        raise LowbitError(f"size budget {capacity:,} B is below the smallest assignment, "
                          f"{minimum:,} B")
    unit = math.gcd(*(int(x) for s in sizes for x in s)) or 1
    exact = capacity // unit <= max_units
    if not exact:
        unit = math.ceil(capacity / max_units)
    units = [[math.ceil(int(x) / unit) for x in s] for s in sizes]
    cap = capacity // unit
    if sum(min(u) for u in units) > cap:  # only possible after rounding up
        raise LowbitError(f"size budget {capacity:,} B: too tight for the coarse DP unit "
                          f"{unit} B; raise max_units")
    best = np.zeros(cap + 1)
    choices = []
    for u_row, l_row in zip(units, losses, strict=True):
        cand = np.full((len(u_row), cap + 1), np.inf)
        for j, (u, loss) in enumerate(zip(u_row, l_row, strict=True)):
            if u <= cap:  # an option larger than the capacity never fits
                cand[j, u:] = best[:cap + 1 - u] + float(loss)
        choices.append(np.argmin(cand, axis=0).astype(np.uint16))
        best = cand[choices[-1], np.arange(cap + 1)]
    picked, c = [], cap
    for u_row, choice in zip(reversed(units), reversed(choices), strict=True):
        j = int(choice[c])
        picked.append(j)
        c -= u_row[j]
    return picked[::-1], exact
