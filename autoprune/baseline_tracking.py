"""MLflow mirror of a study's baselines: one ``baselines`` run, one child run per point.

The runs live in the study's experiment (the one ``autoprune search`` logs to), next to the
study's parent run, so the MLflow UI compares baselines and searched trials side by side:

* **``baselines`` run** (tags ``autoprune.study=<name>``, ``autoprune.role=baselines``): the
  schedule and finetune budget as params; ``baselines.csv`` and, when the study has trials,
  the ``pareto.html``/``pareto.png`` with the baselines drawn on them.
* **Child runs** (tags ``autoprune.role=baseline``, ``method``, ``target_sparsity``,
  ``state``, ``feasible``; a failed point ends FAILED with an ``error`` tag): the point's
  recipe (method, scorer, allocation, sparsity, schedule, budget, seed) as params and every
  metric.

``baselines.csv`` is the source of truth, as the Optuna study is for trials: every call
logs the rows that have no child run yet (a child is identified by its row key, tag
``autoprune.baseline``), so a run interrupted, or one whose store was away, is caught up by
the next, and no point gets two child runs. A store error is reported once and does not
stop the baselines.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from autoprune.baselines import KEY_COLUMNS, BaselineSettings, row_key
from autoprune.errors import AutopruneError
from autoprune.paths import StudyPaths
from autoprune.results import METRIC_COLUMNS
from autoprune.space import SearchSpace
from autoprune.tracking import client_for, ensure_experiment

ROLE = "baselines"


def _key_tag(row: Mapping[str, Any]) -> str:
    return "|".join(str(part) for part in row_key(row))


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


class BaselineTracker:
    """Keeps the ``baselines`` run of one study level with ``baselines.csv`` (module docstring)."""

    def __init__(self, space: SearchSpace, paths: StudyPaths, settings: BaselineSettings, *, uri: str,
                 log: Callable[[str], None] = print) -> None:
        self.name = space.study.name
        self.paths = paths
        self.settings = settings
        self.uri = uri
        self.log = log
        self.client: Any = None
        self.experiment_id = ""
        self.run_id = ""
        self.logged: set[str] = set()
        self._failing = False

    def start(self, dense_accuracy: float, frame: pd.DataFrame) -> None:
        """Find or create the experiment and the ``baselines`` run, then log rows not logged yet."""
        try:
            self.client = client_for(self.uri, fail_fast=True)
            self.experiment_id = ensure_experiment(self.client, self.name, self.uri, self.paths.root)
            self.run_id = self._find_or_create_run(dense_accuracy)
            self.logged = self._logged_keys()
            self._log_missing(frame)
        except Exception as exc:  # the store cannot be used at all: one line, nothing runs
            raise AutopruneError(f"MLflow store {self.uri}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
        self.log(f"MLflow: run 'baselines' in experiment {self.name!r} ({self.uri})")

    def point_done(self, row: Mapping[str, Any]) -> None:
        """Log one finished or failed point as a child run."""
        self._guarded(lambda: self._log_child(row))

    def finish(self, frame: pd.DataFrame, files: Sequence[Path], *, status: str = "FINISHED") -> None:
        """Catch up, attach ``baselines.csv`` and the overlaid plots, and end the run with ``status``."""
        def work() -> None:
            self._log_missing(frame)
            for path in (self.paths.baselines_csv, *files):
                if Path(path).is_file():
                    self.client.log_artifact(self.run_id, str(path))
            self.client.set_terminated(self.run_id, status=status)

        self._guarded(work)

    def _guarded(self, work: Callable[[], None]) -> None:
        if self.client is None:
            return
        try:
            work()
        except Exception as exc:  # tracking never stops the baselines; the next call catches up
            if not self._failing:
                self.log(f"MLflow: logging failed ({type(exc).__name__}); baselines.csv keeps every point and "
                         "the next `autoprune baselines` run logs what is missing")
            self._failing = True
            return
        self._failing = False

    def _find_or_create_run(self, dense_accuracy: float) -> str:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`autoprune.study` = '{self.name}' and tags.`autoprune.role` = '{ROLE}'",
            order_by=["attributes.start_time ASC"], max_results=1,
        )
        if runs:
            run_id = runs[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(
            self.experiment_id, run_name=ROLE,
            tags={"autoprune.study": self.name, "autoprune.role": ROLE,
                  "mlflow.note.content": f"No-search baselines of {self.name}: one child run per method and sparsity."},
        )
        run_id = run.info.run_id
        self.client.log_param(run_id, "budget", self.settings.budget())
        self.client.log_metric(run_id, "dense_accuracy", float(dense_accuracy))
        return run_id

    def _logged_keys(self) -> set[str]:
        keys, token = set(), None
        query = f"tags.`mlflow.parentRunId` = '{self.run_id}' and tags.`autoprune.role` = 'baseline'"
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=query, max_results=1000,
                                           page_token=token)
            for run in page:
                key = run.data.tags.get("autoprune.baseline", "")
                if run.info.status == "RUNNING" or key in keys:  # half-written or a duplicate
                    self.client.delete_run(run.info.run_id)
                else:
                    keys.add(key)
            token = page.token
            if not token:
                return keys

    def _log_missing(self, frame: pd.DataFrame) -> None:
        for row in frame.to_dict("records"):
            if row.get("state") in ("finished", "failed") and _key_tag(row) not in self.logged:
                self._log_child(row)

    def _log_child(self, row: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric, Param

        key = _key_tag(row)
        if key in self.logged:
            return
        finished = row["state"] == "finished"
        tags = {
            "mlflow.parentRunId": self.run_id, "autoprune.study": self.name, "autoprune.role": "baseline",
            "autoprune.baseline": key, "method": str(row["method"]), "target_sparsity": f"{row['target_sparsity']:g}",
            "state": str(row["state"]), "feasible": "true" if finished and bool(row.get("feasible")) else "false",
        }
        if not finished:
            tags["error"] = str(row.get("error", ""))[:8000]
        run = self.client.create_run(self.experiment_id, run_name=f"{row['method']}-{row['target_sparsity']:g}",
                                     tags=tags)
        names = (*KEY_COLUMNS, "scorer", "allocation")
        params = [Param(name, str(row[name])) for name in names if name in row]
        now = int(time.time() * 1000)
        metrics = [Metric(name, float(row[name]), now, 0) for name in (*METRIC_COLUMNS, "duration_s")
                   if name in row and _finite(row[name])]
        self.client.log_batch(run.info.run_id, params=params, metrics=metrics)
        self.client.set_terminated(run.info.run_id, status="FINISHED" if finished else "FAILED")
        self.logged.add(key)
