"""The Pareto front: which trials no other trial beats on every objective.

A study has several objectives (``objectives:`` in the space file, e.g. accuracy ↑, sparsity
↑, latency ↓), so there is no single best trial. Trial *a* **dominates** trial *b* when *a*
is at least as good as *b* on every objective and strictly better on one; the **front** is
the set of feasible trials that no feasible trial dominates. Infeasible trials (those that
break a constraint such as ``accuracy_drop``) are kept in the results but never on the front.

Example::

    points = [[0.95, 0.5], [0.90, 0.9], [0.85, 0.8]]
    non_dominated(points, ["max", "max"])   # [True, True, False]
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _as_minimisation(points: Sequence[Sequence[float]], directions: Sequence[str]) -> np.ndarray:
    """``points`` with every ``max`` column negated, so that smaller is better everywhere."""
    array = np.asarray(points, dtype=float).reshape(len(points), len(directions))
    signs = np.array([-1.0 if d == "max" else 1.0 for d in directions])
    return array * signs


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """Whether ``a`` dominates ``b``: no worse on every objective and better on at least one."""
    pa, pb = _as_minimisation([a, b], directions)
    return bool(np.all(pa <= pb) and np.any(pa < pb))


def non_dominated(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[bool]:
    """For each point, whether no other point dominates it (duplicates are all kept).

    Args:
        points: ``n`` rows of one value per objective.
        directions: ``"max"`` or ``"min"`` per objective.
    """
    if len(points) == 0:
        return []
    costs = _as_minimisation(points, directions)
    keep = []
    for row in costs:
        dominated = np.any(np.all(costs <= row, axis=1) & np.any(costs < row, axis=1))
        keep.append(not bool(dominated))
    return keep
