"""Reading a finished (or running) study back: its front as a table for the terminal.

``autoprune pareto --study NAME`` and the end of ``autoprune search`` use these. The Optuna
study in ``studies/<study>/optuna.db`` is read, not the CSV files, so the front is always
that of the trials the study holds now.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
import yaml
from rich.table import Table

from autoprune.errors import AutopruneError
from autoprune.paths import StudyPaths, study_paths, studies_root
from autoprune.policy import Policy
from autoprune.results import pareto_frame, trials_frame
from autoprune.space import SearchSpace, parse_space

SHOWN = ("accuracy", "accuracy_drop", "sparsity", "params", "macs", "latency_ms", "latency_ms_isolated", "speedup")


def open_existing(study: str, studies: str | Path | None = None) -> tuple[StudyPaths, SearchSpace, optuna.Study]:
    """The paths, space and Optuna study of an existing study; one-line errors otherwise."""
    paths = study_paths(study, studies)
    if not paths.space.is_file() or not paths.optuna_db.is_file():
        root = studies_root(studies)
        known = sorted(p.name for p in root.iterdir() if (p / "optuna.db").is_file()) if root.is_dir() else []
        listing = ", ".join(known) if known else "none"
        raise AutopruneError(f"--study {study}: no such study in {root}; studies there: {listing}")
    space = parse_space(yaml.safe_load(paths.space.read_text()), source=str(paths.space))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{paths.optuna_db}")
    try:
        handle = optuna.load_study(study_name=space.study.name, storage=storage)
    except KeyError:
        raise AutopruneError(f"{paths.optuna_db}: holds no study named {space.study.name!r}") from None
    return paths, space, handle


def load_front(study: str, studies: str | Path | None = None, *, sort: str | None = None) -> tuple[pd.DataFrame, dict[str, str]]:
    """The front of ``study`` (sorted by ``sort`` or the first objective) and its objectives."""
    _, space, handle = open_existing(study, studies)
    frame = trials_frame(handle.get_trials(deepcopy=False), space.objectives)
    front = pareto_frame(frame, space.objectives)
    if sort is not None:
        metrics = [c for c in frame.columns if c in SHOWN or c in space.objectives or c == "number"]
        if sort not in frame.columns:
            raise AutopruneError(f"--sort {sort}: unknown column; sortable: {', '.join(metrics)}")
        ascending = space.objectives.get(sort, "max" if sort in ("accuracy", "sparsity", "speedup") else "min") == "min"
        front = front.sort_values(sort, ascending=ascending).reset_index(drop=True)
    return front, dict(space.objectives)


def _policy_summary(row: pd.Series) -> str:
    policy = {k.removeprefix("policy."): v for k, v in row.items() if k.startswith("policy.")}
    nested: dict = {}
    for key, value in policy.items():
        if pd.isna(value) or key == "exclude":
            continue
        if key.startswith("layer_sparsity."):  # layer names contain dots: keep them whole
            nested.setdefault("layer_sparsity", {})[key.removeprefix("layer_sparsity.")] = value
            continue
        target = nested
        parts = key.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    try:
        return Policy.model_validate(nested).summary()
    except Exception:  # a summary must never break the table
        return ""


def front_table(front: pd.DataFrame, objectives: dict[str, str], *, title: str) -> Table:
    """A rich table of the front: trial number, the metrics and a one-line policy summary."""
    table = Table(title=title, title_justify="left")
    table.add_column("trial", justify="right")
    columns = list(dict.fromkeys([*objectives, *SHOWN]))
    for name in columns:
        arrow = {"max": " ↑", "min": " ↓"}.get(objectives.get(name, ""), "")
        table.add_column(name + arrow, justify="right")
    table.add_column("policy")
    for _, row in front.iterrows():
        cells = [str(int(row["number"]))]
        for name in columns:
            value = row.get(name)
            cells.append("-" if value is None or pd.isna(value) else _format(name, float(value)))
        cells.append(_policy_summary(row))
        table.add_row(*cells)
    return table


def _format(name: str, value: float) -> str:
    if name in ("params", "macs", "params_nonzero", "size_bytes"):
        return f"{value:,.0f}"
    if name == "latency_ms":
        return f"{value:.3f}"
    if name == "speedup":
        return f"{value:.2f}×"
    return f"{value:.4f}"
