"""The Pareto front: which trials no other trial beats on every objective.

A study has several objectives (``objectives:`` in the space file, e.g. accuracy ↑, sparsity
↑, latency ↓), so there is no single best trial. Trial *a* **dominates** trial *b* when *a*
is at least as good as *b* on every objective and strictly better on one; the **front** is
the set of feasible trials that no feasible trial dominates. Infeasible trials (those that
break a constraint such as ``accuracy_drop``) are kept in the results but never on the front.

Example::

    points = [[0.95, 0.5], [0.90, 0.9], [0.85, 0.8]]
    non_dominated(points, ["max", "max"])   # [True, True, False]

**Hypervolume** measures a whole front with one number: the volume of objective space its
points dominate, up to a **reference point** that every counted point must beat. A better
front (more points, or points further out) has a larger hypervolume, and adding a trial can
never shrink it as long as the reference point stays the same: so the reference point of a
study is fixed before its first trial, from the dense model and the metrics' bounds
(:func:`reference_point`), and :func:`front_progress` gives the series the MLflow parent
run shows as ``hypervolume`` and ``pareto_size``::

    ref = reference_point({"accuracy": "max", "sparsity": "max"}, {"accuracy": 0.97})
    hypervolume([[0.9, 0.5], [0.8, 0.9]], ["max", "max"], list(ref.values()))   # 0.77
"""

from __future__ import annotations

from typing import Mapping, Sequence

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


# Hypervolume ---------------------------------------------------------------------------

#: Metrics with natural bounds: (worst value when maximised, worst value when minimised).
#: ``accuracy_drop`` lies in ``[dense - 1, dense]``; see :func:`reference_point`.
BOUNDED = {"accuracy": (0.0, 1.0), "sparsity": (0.0, 1.0)}
#: The margin given to the dense model's value for unbounded (cost-like) metrics.
DENSE_MARGIN = 1.1


def reference_point(objectives: Mapping[str, str], dense: Mapping[str, float]) -> dict[str, float]:
    """The hypervolume reference point of a study, fixed before its first trial.

    The rule, per objective (in the objective's own units and direction):

    * ``accuracy``, ``sparsity`` (bounded in [0, 1]): the worst bound — 0 when maximised,
      1 when minimised;
    * ``accuracy_drop`` (bounded in [dense − 1, dense]): the dense accuracy when minimised
      (a model that gets nothing right), dense accuracy − 1 when maximised;
    * every other metric (``latency_ms``, ``params``, ``params_nonzero``, ``macs``,
      ``size_bytes``, ``speedup``; the dense model's speedup is 1): the dense model's value
      with a 10% margin on the worse side — ``1.1 × dense`` when minimised, ``dense / 1.1``
      when maximised. A pruned model a little slower than the dense one (timing noise)
      still counts; one more than 10% worse contributes nothing.

    Args:
        objectives: metric name → ``"max"`` or ``"min"``.
        dense: the dense model's metrics (``accuracy`` and every unbounded objective).

    Raises:
        KeyError: ``dense`` lacks a value the rule needs.
    """
    reference = {}
    for name, direction in objectives.items():
        if name in BOUNDED:
            worst_max, worst_min = BOUNDED[name]
            reference[name] = worst_max if direction == "max" else worst_min
        elif name == "accuracy_drop":
            accuracy = float(dense["accuracy"])
            reference[name] = accuracy - 1.0 if direction == "max" else accuracy
        else:
            value = 1.0 if name == "speedup" else float(dense[name])
            reference[name] = value / DENSE_MARGIN if direction == "max" else value * DENSE_MARGIN
    return reference


def hypervolume(points: Sequence[Sequence[float]], directions: Sequence[str], reference: Sequence[float]) -> float:
    """The volume of objective space that ``points`` dominate, bounded by ``reference``.

    Computed by Optuna's exact implementation (WFG for three or more objectives) after
    turning every objective into one to minimise. Points not strictly better than the
    reference on every objective enclose no volume and are left out; so are points with a
    non-finite value. Adding a point never lowers the hypervolume.

    Args:
        points: ``n`` rows of one value per objective (feasible trials only: the caller
            decides what counts).
        directions: ``"max"`` or ``"min"`` per objective.
        reference: one value per objective, in the objectives' own units
            (see :func:`reference_point`).
    """
    from optuna._hypervolume import compute_hypervolume

    ref = _as_minimisation([list(reference)], directions)[0]
    if len(points) == 0:
        return 0.0
    costs = _as_minimisation(points, directions)
    inside = np.all(np.isfinite(costs), axis=1) & np.all(costs < ref, axis=1)
    if not inside.any():
        return 0.0
    return float(compute_hypervolume(costs[inside], ref))


class FrontProgress:
    """The feasible front and its hypervolume, kept up to date as points arrive one by one.

    :meth:`add` takes the points in the order trials finish; the front (feasible points with
    finite values that no such point dominates; duplicates all count, as in ``pareto.csv``)
    is updated incrementally and the hypervolume recomputed only when a point joins it. For
    a fixed reference point :attr:`volume` never decreases.
    """

    def __init__(self, directions: Sequence[str], reference: Sequence[float]) -> None:
        self.directions = list(directions)
        self.reference = list(reference)
        self._signs = np.array([-1.0 if d == "max" else 1.0 for d in self.directions])
        self._front = np.empty((0, len(self.directions)))
        self.volume = 0.0
        self.added = 0

    @property
    def size(self) -> int:
        """Points on the front now."""
        return len(self._front)

    def add(self, point: Sequence[float], feasible: bool) -> tuple[float, int]:
        """Add one point (infeasible ones only count as arrived); returns (volume, size)."""
        self.added += 1
        cost = np.asarray(point, dtype=float) * self._signs
        if feasible and np.all(np.isfinite(cost)):
            front = self._front
            beaten = np.any(np.all(front <= cost, axis=1) & np.any(front < cost, axis=1))
            if not beaten:
                survivors = ~(np.all(cost <= front, axis=1) & np.any(cost < front, axis=1))
                self._front = np.vstack([front[survivors], cost])
                self.volume = hypervolume(self._front * self._signs, self.directions, self.reference)
        return self.volume, self.size


def front_progress(
    points: Sequence[Sequence[float]], feasible: Sequence[bool], directions: Sequence[str], reference: Sequence[float]
) -> list[tuple[float, int]]:
    """Hypervolume and front size after each of ``points``, taken in order (finish order).

    Entry ``k`` describes the first ``k + 1`` points (see :class:`FrontProgress`).
    """
    progress = FrontProgress(directions, reference)
    return [progress.add(point, ok) for point, ok in zip(points, feasible)]
