"""Non-dominated sorting, the hypervolume reference point and the live front (plain data)."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from autoprune.pareto import (
    FrontProgress,
    dominates,
    front_progress,
    hypervolume,
    non_dominated,
    reference_point,
)

DENSE = {"accuracy": 0.96, "latency_ms": 2.0, "params": 1000.0, "macs": 5000.0, "size_bytes": 4000.0,
         "params_nonzero": 1000.0}


def test_dominance_and_the_front_keep_duplicates() -> None:
    assert dominates([0.9, 0.9], [0.9, 0.8], ["max", "max"])
    assert not dominates([0.9, 0.9], [0.9, 0.9], ["max", "max"])
    assert non_dominated([[0.95, 0.5], [0.9, 0.9], [0.85, 0.8], [0.9, 0.9]], ["max", "max"]) == [True, True, False, True]


def test_two_objective_hypervolume_is_the_union_of_rectangles() -> None:
    # accuracy ↑, sparsity ↑ from (0, 0): 0.9·0.5 + 0.8·0.9 − 0.8·0.5
    assert hypervolume([[0.9, 0.5], [0.8, 0.9]], ["max", "max"], [0.0, 0.0]) == pytest.approx(0.77)


def test_three_objective_hypervolume_with_a_minimised_latency() -> None:
    # boxes [0,0.9]×[0,0.5]×[latency 1,2] and [0,0.5]×[0,0.9]×[1.5,2] overlap in 0.5·0.5·0.5
    volume = hypervolume([[0.9, 0.5, 1.0], [0.5, 0.9, 1.5]], ["max", "max", "min"], [0.0, 0.0, 2.0])
    assert volume == pytest.approx(0.9 * 0.5 * 1.0 + 0.5 * 0.9 * 0.5 - 0.5 * 0.5 * 0.5)


def test_one_objective_and_points_outside_the_reference_point() -> None:
    assert hypervolume([[0.7], [0.9]], ["max"], [0.0]) == pytest.approx(0.9)
    # slower than the reference latency, or not finite: no volume, and no error
    assert hypervolume([[0.9, 2.5], [math.nan, 1.0]], ["max", "min"], [0.0, 2.0]) == 0.0
    assert hypervolume([], ["max", "min"], [0.0, 2.0]) == 0.0


def test_reference_point_rule() -> None:
    objectives = {"accuracy": "max", "sparsity": "max", "latency_ms": "min", "accuracy_drop": "min",
                  "speedup": "max", "macs": "min"}
    reference = reference_point(objectives, DENSE)
    assert reference == pytest.approx({"accuracy": 0.0, "sparsity": 0.0, "latency_ms": 2.2, "accuracy_drop": 0.96,
                                       "speedup": 1 / 1.1, "macs": 5500.0})
    assert reference_point({"accuracy": "min", "sparsity": "min"}, DENSE) == {"accuracy": 1.0, "sparsity": 1.0}


def test_dense_model_itself_is_inside_the_reference_box() -> None:
    objectives = {"accuracy": "max", "latency_ms": "min"}
    reference = list(reference_point(objectives, DENSE).values())
    assert hypervolume([[DENSE["accuracy"], DENSE["latency_ms"]]], ["max", "min"], reference) > 0


def test_series_never_decreases_and_matches_a_fresh_computation() -> None:
    rng = random.Random(1)
    directions = ["max", "max", "min"]
    reference = [0.0, 0.0, 2.2]
    points = [[rng.random(), rng.random(), rng.uniform(0.5, 2.5)] for _ in range(40)]
    feasible = [rng.random() > 0.3 for _ in points]
    series = front_progress(points, feasible, directions, reference)
    volumes = [volume for volume, _ in series]
    assert all(b >= a for a, b in itertools.pairwise(volumes)) and volumes[-1] > 0
    for k in (1, 7, 20, 40):
        chosen = [p for p, ok in zip(points[:k], feasible[:k]) if ok]
        assert volumes[k - 1] == pytest.approx(hypervolume(chosen, directions, reference))
        assert series[k - 1][1] == (sum(non_dominated(chosen, directions)) if chosen else 0)


def test_infeasible_points_move_the_step_but_not_the_front() -> None:
    progress = FrontProgress(["max", "max"], [0.0, 0.0])
    assert progress.add([0.9, 0.9], feasible=False) == (0.0, 0)
    assert progress.add([0.5, 0.5], feasible=True) == (pytest.approx(0.25), 1)
    assert progress.add([0.5, 0.5], feasible=True) == (pytest.approx(0.25), 2)  # a duplicate joins the front
    assert progress.add([0.6, 0.6], feasible=True) == (pytest.approx(0.36), 1)
    assert progress.added == 4
