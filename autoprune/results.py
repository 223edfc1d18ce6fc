"""A study's results as tables: ``trials.csv`` and ``pareto.csv``.

The Optuna study (``studies/<study>/optuna.db``) is the single source of truth: every
finished trial is told to it by the driver, with its metrics, policy and error as user
attributes. :func:`trials_frame` turns its trials into one row each (number, state,
feasibility, Pareto membership, every metric, every policy parameter, error);
:func:`write_tables` writes ``trials.csv`` and ``pareto.csv`` atomically, so a reader never
sees a half-written file.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import optuna
import pandas as pd

from autoprune.pareto import non_dominated
from autoprune.policy import Policy

METRIC_COLUMNS = (
    "accuracy",
    "accuracy_drop",
    "sparsity",
    "params",
    "params_nonzero",
    "macs",
    "latency_ms",
    "speedup",
    "size_bytes",
)
STATES = {
    optuna.trial.TrialState.COMPLETE: "finished",
    optuna.trial.TrialState.FAIL: "failed",
    optuna.trial.TrialState.RUNNING: "running",
    optuna.trial.TrialState.WAITING: "waiting",
    optuna.trial.TrialState.PRUNED: "pruned",
}


def is_feasible(metrics: Mapping[str, float], constraints: Mapping[str, float | None]) -> bool:
    """Whether ``metrics`` respect every constraint (``accuracy_drop`` ≤ its bound)."""
    bound = constraints.get("accuracy_drop")
    return bound is None or metrics.get("accuracy_drop", math.inf) <= bound + 1e-12


def trial_row(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """One trial as a flat row (without the ``pareto`` column)."""
    attrs = trial.user_attrs
    metrics = attrs.get("metrics", {})
    row: dict[str, Any] = {"number": trial.number, "state": STATES.get(trial.state, trial.state.name.lower())}
    row["feasible"] = attrs.get("feasible", False) if trial.state == optuna.trial.TrialState.COMPLETE else False
    for name in METRIC_COLUMNS:
        row[name] = metrics.get(name, math.nan)
    for name, value in metrics.items():
        row.setdefault(name, value)
    if "policy" in attrs:
        for key, value in Policy.from_dict(attrs["policy"]).flat().items():
            row[f"policy.{key}"] = value
    duration = trial.duration.total_seconds() if trial.duration else math.nan
    row["duration_s"] = duration
    row["error"] = attrs.get("error", "")
    return row


def trials_frame(trials: Sequence[optuna.trial.FrozenTrial], objectives: Mapping[str, str]) -> pd.DataFrame:
    """All trials as a DataFrame, with a ``pareto`` column marking the feasible front."""
    rows = [trial_row(trial) for trial in sorted(trials, key=lambda t: t.number)]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=["number", "state", "feasible", "pareto", *METRIC_COLUMNS, "error"])
    frame.insert(3, "pareto", pareto_mask(isolated_values(frame, objectives), objectives))
    return frame


#: objective → the isolated re-timing (autoprune/retime.py) that replaces it in the front when measured
ISOLATED_SUBSTITUTES = {"latency_ms": "latency_ms_isolated", "speedup": "speedup_isolated"}


def isolated_values(frame: pd.DataFrame, objectives: Mapping[str, str]) -> pd.DataFrame:
    """``frame`` with each latency objective replaced by its isolated value where one exists."""
    view = frame.copy()
    for name, isolated in ISOLATED_SUBSTITUTES.items():
        if name in objectives and isolated in view:
            measured = view[isolated].astype(float)
            view[name] = measured.where(measured.notna(), view[name].astype(float))
    return view


def pareto_mask(frame: pd.DataFrame, objectives: Mapping[str, str]) -> list[bool]:
    """For each row: finished, feasible, with finite objectives, and not dominated by such a row."""
    names = list(objectives)
    eligible = (frame["state"] == "finished") & frame["feasible"].astype(bool)
    values = frame[names].astype(float)
    eligible &= values.notna().all(axis=1) & values.apply(lambda col: col.map(math.isfinite)).all(axis=1)
    mask = [False] * len(frame)
    indices = [i for i, ok in enumerate(eligible) if ok]
    front = non_dominated(values.iloc[indices].to_numpy(), [objectives[n] for n in names])
    for index, on_front in zip(indices, front):
        mask[index] = on_front
    return mask


def pareto_frame(frame: pd.DataFrame, objectives: Mapping[str, str]) -> pd.DataFrame:
    """The front's rows, sorted by the first objective (best first)."""
    if frame.empty or "pareto" not in frame:
        return frame
    front = frame[frame["pareto"].astype(bool)]
    first = next(iter(objectives))
    return front.sort_values(first, ascending=objectives[first] == "min").reset_index(drop=True)


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` to ``path`` atomically (a temporary file, then a rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)


def write_tables(
    trials: Sequence[optuna.trial.FrozenTrial], objectives: Mapping[str, str], trials_csv: Path, pareto_csv: Path
) -> pd.DataFrame:
    """Write ``trials.csv`` and ``pareto.csv``; returns the trials frame."""
    frame = trials_frame(trials, objectives)
    write_csv(frame, trials_csv)
    write_csv(pareto_frame(frame, objectives), pareto_csv)
    return frame
