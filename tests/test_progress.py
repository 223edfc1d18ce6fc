from __future__ import annotations

import pandas as pd

from autoprune.progress import SearchProgress, reference_sparsity
from conftest import digits_space


def frame() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"number": 0, "state": "finished", "feasible": True, "pareto": True, "accuracy": 0.95, "sparsity": 0.9, "error": ""},
            {"number": 1, "state": "finished", "feasible": False, "pareto": False, "accuracy": 0.99, "sparsity": 0.95, "error": ""},
            {"number": 2, "state": "failed", "feasible": False, "pareto": False, "accuracy": None, "sparsity": None,
             "error": "RuntimeError: boom"},
            {"number": 3, "state": "running", "feasible": False, "pareto": False, "accuracy": None, "sparsity": None, "error": ""},
        ]
    )


def test_reference_sparsity_is_the_middle_of_the_target_range() -> None:
    assert reference_sparsity(digits_space(space={"target_sparsity": [0.5, 0.9]})) == 0.7


def test_counts_front_and_best_feasible_accuracy() -> None:
    lines: list[str] = []
    progress = SearchProgress(digits_space(space={"target_sparsity": [0.5, 0.9]}), dense_accuracy=0.97, total=10,
                              log=lines.append)
    progress.trial_done(frame(), 2)
    assert (progress.finished, progress.failed, progress.running, progress.front) == (2, 1, 1, 1)
    assert progress.best == 0.95  # the infeasible 0.99 never counts
    assert "[2/10 finished, 1 running, 1 failed]" in lines[0] and "trial 2 failed: RuntimeError: boom" in lines[0]


def test_quiet_prints_nothing() -> None:
    lines: list[str] = []
    progress = SearchProgress(digits_space(), dense_accuracy=0.97, total=10, quiet=True, log=lines.append)
    progress.trial_done(frame(), 0)
    assert lines == []
