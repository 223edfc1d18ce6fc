"""MLflow tracking of a study: one parent run per study, one nested child run per trial.

The Optuna study is the source of truth; MLflow is a faithful, reviewable mirror of it,
written by the driver process alone (one writer). :class:`StudyTracker` keeps the mirror:

* **Store.** ``studies/mlflow.db`` (sqlite, next to the study folders) with artifacts under
  ``studies/mlartifacts/<study>/``, unless ``--tracking-uri`` or ``MLFLOW_TRACKING_URI``
  names another store (:func:`resolve_tracking_uri`). One experiment per study name,
  created with an explicit artifact location (an ``http(s)`` server keeps its own).
* **Parent run** (tags ``autoprune.study=<name>``, ``autoprune.role=parent``): the space
  summary, sampler, seed, objectives and constraints as params; the dense model's metrics
  (``dense_accuracy``, ``dense_latency_ms``, ...); ``hypervolume`` and ``pareto_size``
  stepped by the number of finished trials; artifacts ``space.yaml``, ``trials.csv``,
  ``pareto.csv`` (every trial), ``pareto.html`` and ``pareto.png`` (every few trials, at
  most every 30 s, and at the end; also written to the study folder). An isolated re-timing
  (:mod:`autoprune.retime`: the end of a search, ``autoprune retime``) that timed anything
  redraws the plots (:func:`write_study_plots`) and logs the four tables and plots again.
* **Child runs** (tags ``autoprune.role=trial``, ``autoprune.trial=<number>``, ``state``,
  ``feasible``, ``pareto``, ``policy``; failed trials end FAILED with an ``error`` tag): the
  flattened policy as params, every metric, the curve of each schedule step
  (``schedule/sparsity``, ``schedule/accuracy``, ``schedule/loss`` stepped by schedule
  step) and the finetune loss (``finetune/loss``, ``finetune/lr`` stepped by optimizer
  step), and the trial's ``policy.yaml``.

**Reconciliation, not events.** Every call (:meth:`~StudyTracker.start`,
:meth:`~StudyTracker.trial_done`, :meth:`~StudyTracker.finish`) compares the study's ended
trials with the child runs it knows and creates what is missing, updates only the
``pareto`` tags that changed, and logs the front metrics for steps not logged yet. So a
resumed study (or one that ran with ``--no-tracking``) is caught up at start, a child run
left half-written by a killed driver is deleted and written again, and no trial ever gets
two runs.

**A store that goes away** never stops or stalls the study. Calls to a server fail fast
(:mod:`autoprune.mlflow_http`: one immediate retry, 10 s per attempt, instead of MLflow's
minutes of back-off); the first failure is reported in one warning, and after each later
trial a 2 s ``/health`` check decides whether to try again. When the store answers, the
tracker re-reads the parent's child runs (a run cut short is deleted, a run the store
finished although its answer was lost is kept) and catches up: every ended trial gets
exactly one child run. If the store is still away when the study ends, the next
``autoprune search`` of the study (nothing reruns) catches MLflow up.

**Hypervolume** uses the reference point of :func:`autoprune.pareto.reference_point`,
computed once from the dense model and stored in the Optuna study (user attribute
``hypervolume_reference``), so the series stays comparable across resumes.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import optuna
import pandas as pd

from autoprune.baselines import read_baselines
from autoprune.errors import AutopruneError
from autoprune.mlflow_http import FailFastClient, failure_reason, server_answers
from autoprune.pareto import FrontProgress, reference_point
from autoprune.paths import StudyPaths
from autoprune.plots import write_plots
from autoprune.policy import Policy, save_policy
from autoprune.results import write_tables
from autoprune.space import SearchSpace

FINISHED = optuna.trial.TrialState.COMPLETE
FAILED = optuna.trial.TrialState.FAIL
REFERENCE_ATTR = "hypervolume_reference"
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
MAX_PARAM = 6000  # MLflow's limit on a param value
MAX_TAG = 8000  # and on a tag value
BATCH = 100  # params or tags per log_batch call
#: URI schemes MLflow keeps runs and registered models in (``+driver`` suffixes allowed)
TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "file", "databricks")


def resolve_tracking_uri(explicit: str | None, root: Path) -> tuple[str, str]:
    """The tracking URI and where it came from (for messages).

    ``explicit`` (``--tracking-uri``) wins, then ``$MLFLOW_TRACKING_URI``, then the default
    store ``sqlite:///<root>/mlflow.db``.
    """
    if explicit:
        uri, source = explicit, f"--tracking-uri {explicit}"
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        uri = os.environ["MLFLOW_TRACKING_URI"]
        source = f"MLFLOW_TRACKING_URI={uri}"
    else:
        return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}", f"studies folder {Path(root).resolve()}"
    if "://" not in uri and not uri.startswith("databricks"):
        raise AutopruneError(f"{source}: not a tracking URI; use sqlite:///PATH/mlflow.db or http://HOST:PORT")
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower()
    if "://" in uri and scheme not in TRACKING_SCHEMES:
        raise AutopruneError(f"{source}: unsupported scheme {scheme!r}; use sqlite:///PATH/mlflow.db, "
                             "http(s)://HOST:PORT, or a postgresql://, mysql://, mssql:// or file:// store")
    return uri, source


def is_server(uri: str) -> bool:
    """Whether ``uri`` is an MLflow tracking server (HTTP) rather than a database."""
    return uri.startswith(("http://", "https://"))


def check_tracking_uri(uri: str, source: str, *, timeout: float = 5.0) -> None:
    """Refuse a store that cannot be used, before the study starts (one-line errors).

    A server must answer ``/health`` within ``timeout`` seconds; a sqlite file must be in a
    folder that exists or can be created.
    """
    if is_server(uri):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
                response.read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AutopruneError(
                f"{source}: cannot reach the MLflow server ({reason}); start it, fix the URI, or use --no-tracking"
            ) from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AutopruneError(f"{source}: cannot create {folder} ({exc.strerror})") from None


def artifact_root(uri: str, root: Path) -> Path | None:
    """Where a store keeps artifacts: ``<db folder>/mlartifacts``; ``None`` for a server."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts"
    if is_server(uri):
        return None
    return Path(root).resolve() / "mlartifacts"


def quiet_mlflow_logs() -> None:
    """Keep MLflow's and alembic's INFO lines (database set-up) out of the search output."""
    for name in ("mlflow.store.db.utils", "alembic", "mlflow.tracking._tracking_service.client"):
        logging.getLogger(name).setLevel(logging.WARNING)


def client_for(uri: str, *, fail_fast: bool = False) -> Any:
    """An ``MlflowClient`` on ``uri`` (imported lazily: mlflow takes seconds to import).

    With ``fail_fast``, calls to a server give up after one retry (:class:`FailFastClient`).
    """
    quiet_mlflow_logs()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return FailFastClient(client) if fail_fast and is_server(uri) else client


def ensure_experiment(client: Any, name: str, uri: str, root: Path) -> str:
    """The experiment called ``name`` (restored if deleted), created with its artifact location if missing.

    Tagged as a model-training experiment, so that MLflow 3's UI opens it with runs,
    metrics and artifacts rather than its GenAI views.
    """
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        if existing.lifecycle_stage == "deleted":
            client.restore_experiment(existing.experiment_id)
        if existing.tags.get(EXPERIMENT_KIND[0]) is None:
            client.set_experiment_tag(existing.experiment_id, *EXPERIMENT_KIND)
        return existing.experiment_id
    folder = artifact_root(uri, root)
    location = (folder / name).as_uri() if folder is not None else None
    return client.create_experiment(name, artifact_location=location,
                                    tags={"autoprune.study": name, EXPERIMENT_KIND[0]: EXPERIMENT_KIND[1]})


def find_parent_run(client: Any, experiment_id: str, study: str) -> Any | None:
    """The study's parent run in ``experiment_id`` (the oldest if a crash left two), or ``None``."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`autoprune.study` = '{study}' and tags.`autoprune.role` = 'parent'",
        order_by=["attributes.start_time ASC"],
        max_results=10,
    )
    return runs[0] if runs else None


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI address of one run, opened in the UI's "Model training" view."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def dense_metrics(context: Any) -> dict[str, float]:
    """The dense model's metrics, measured once in the driver like a trial measures its model.

    ``context`` is the study's :class:`~autoprune.context.TrialContext`. Latency uses the
    space's ``latency:`` settings; ``speedup`` is 1 and ``accuracy_drop`` 0 by definition.
    """
    from autoprune.measure import measure_latency, measure_model, prunable_weight_count

    model = context.dense_model().eval()
    shape = tuple(context.data.input_shape)
    metrics = measure_model(model, dense_prunable=prunable_weight_count(model)[0], input_shape=shape)
    spec = context.latency
    metrics["latency_ms"] = measure_latency(model, shape, batch_size=spec.batch_size, warmup=spec.warmup,
                                            repeats=spec.repeats, threads=spec.threads, device=context.device,
                                            runtime=spec.runtime)
    metrics.update(accuracy=float(context.dense.accuracy), accuracy_drop=0.0, speedup=1.0)
    if context.dense.test_accuracy is not None:
        metrics["test_accuracy"] = float(context.dense.test_accuracy)
    return metrics


def git_commit(folder: Path) -> str | None:
    """The commit checked out where ``folder`` lives, if it is in a git work tree."""
    try:
        done = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def _ms(moment: datetime | None) -> int:
    return int((moment.timestamp() if moment else time.time()) * 1000)


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def curve_metrics(steps: Sequence[Mapping[str, Any]], curve: Sequence[Mapping[str, Any]]) -> list[tuple[str, float, int]]:
    """A trial's history as ``(metric, value, step)``.

    ``schedule/<key>`` for each schedule step's ``sparsity``, ``target``, ``accuracy`` and
    ``loss`` (step = schedule step, from 1); ``finetune/loss`` and ``finetune/lr`` for the
    finetune log, stepped by optimizer steps counted across the whole trial (each schedule
    step restarts its own count, so earlier steps' counts are added).
    """
    out = []
    for record in steps:
        for key in ("sparsity", "target", "accuracy", "loss"):
            if _finite(record.get(key)):
                out.append((f"schedule/{key}", float(record[key]), int(record.get("step", 0))))
    offset = last = 0
    current = None
    for entry in curve:
        if entry.get("schedule_step") != current:
            offset += last
            current = entry.get("schedule_step")
        last = int(entry.get("step", 0))
        for key in ("loss", "lr"):
            if _finite(entry.get(key)):
                out.append((f"finetune/{key}", float(entry[key]), offset + last))
    return out


def trial_policy(attrs: Mapping[str, Any]) -> Policy | None:
    """The policy a trial recorded in its user attributes, or ``None`` (none recorded, or unreadable)."""
    try:
        return Policy.from_dict(attrs["policy"]) if "policy" in attrs else None
    except AutopruneError:
        return None


def write_study_plots(name: str, objectives: Mapping[str, str], paths: StudyPaths,
                      trials: Sequence[optuna.trial.FrozenTrial], frame: pd.DataFrame) -> tuple[Path, Path]:
    """Draw the study's ``pareto.html`` and ``pareto.png`` into its folder; returns both paths.

    ``frame`` is the trials table of ``trials`` (:func:`autoprune.results.trials_frame`);
    each trial's policy summary is shown on hover, and the study's baselines
    (:func:`autoprune.baselines.read_baselines`) are drawn as crosses.
    """
    summaries = {}
    for trial in trials:
        policy = trial_policy(trial.user_attrs)
        if policy is not None:
            summaries[trial.number] = policy.summary()
    return write_plots(frame, objectives, paths.folder, title=f"Pareto front of {name}", summaries=summaries,
                       baselines=read_baselines(paths))


@dataclass
class ChildRun:
    """What the tracker knows of one trial's child run."""

    run_id: str
    pareto: bool


class StudyTracker:
    """The MLflow mirror of one study (see the module docstring); the driver's only MLflow writer.

    Args:
        space: the study's space (name, objectives, constraints, search dimensions).
        paths: the study's files (CSV tables and plots are written there, then logged).
        layers: the model's layers (:class:`~autoprune.layers.LayerInfo`), for the space summary.
        uri: the tracking URI (:func:`resolve_tracking_uri`).
        log: where progress notes and warnings go.
        plot_every, plot_seconds: while the study runs, ``pareto.html``/``pareto.png`` are
            redrawn once at least ``plot_every`` more trials have finished *and*
            ``plot_seconds`` have passed since the last drawing (a drawing takes a second or
            two, during which Ray Tune starts no trial); always at start and end when
            something changed. Every other trial costs the tracker a few small writes.
    """

    def __init__(self, space: SearchSpace, paths: StudyPaths, *, layers: Sequence[Any] = (), uri: str,
                 log: Callable[[str], None] = print, plot_every: int = 5, plot_seconds: float = 30.0) -> None:
        self.space = space
        self.name = space.study.name
        self.objectives = dict(space.objectives)
        self.paths = paths
        self.layers = list(layers)
        self.uri = uri
        self.log = log
        self.plot_every = plot_every
        self.plot_seconds = plot_seconds
        self.client: Any = None
        self.experiment_id = ""
        self.parent_id = ""
        self.children: dict[int, ChildRun] = {}
        self.reference: dict[str, float] = {}
        self._front: FrontProgress | None = None
        self._front_order: list[int] = []
        self._logged_steps: set[int] = set()
        self._pending: list[Any] = []  # front metrics not logged yet
        self._plotted = (0, 0)  # (finished, ended) trials when the plots were last drawn
        self._plotted_time = -math.inf  # time.monotonic() then
        self._failing = False
        self._orphans: list[str] = []  # child runs started but not completed (a store error in between)

    # -- life cycle ------------------------------------------------------------------

    def start(self, study: optuna.Study, dense: Mapping[str, float]) -> None:
        """Find or create the experiment and parent run, then catch up with the study."""
        try:
            self.client = client_for(self.uri, fail_fast=True)
            self.experiment_id = ensure_experiment(self.client, self.name, self.uri, self.paths.root)
            self.reference = self._reference(study, dense)
            parent = find_parent_run(self.client, self.experiment_id, self.name)
            if parent is None:
                self.parent_id = self._create_parent(dense)
            else:
                self.parent_id = parent.info.run_id
                self.client.update_run(self.parent_id, status="RUNNING")
                self._logged_steps = {m.step for m in self.client.get_metric_history(self.parent_id, "hypervolume")}
            self.client.set_tag(self.parent_id, "trials_wanted", str(self.space.study.trials))
            self._load_children()
            self._sync(study.get_trials(deepcopy=False), None, plots=True)
        except AutopruneError:
            raise
        except Exception as exc:  # any store failure: one line, the study does not start
            raise AutopruneError(f"MLflow store {self.uri}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
        self.log(f"MLflow: experiment {self.name!r} ({self.uri}), parent run {self.parent_id}; "
                 f"browse with: autoprune ui --study {self.name}")

    def trial_done(self, trials: Sequence[optuna.trial.FrozenTrial], frame: pd.DataFrame | None = None) -> None:
        """After each ended trial: its child run, changed ``pareto`` tags, the front metrics, CSVs."""
        self._guarded(lambda: self._sync(trials, frame, plots=False))

    def finish(self, study: optuna.Study, *, status: str = "FINISHED") -> None:
        """At the end: catch up, regenerate the plots, and end the parent run with ``status``.

        ``status`` is ``FINISHED`` (the study has all its trials), ``KILLED`` (interrupted) or
        ``FAILED`` (stopped by too many failures).
        """
        def work() -> None:
            self._sync(study.get_trials(deepcopy=False), None, plots=True)
            self.client.set_terminated(self.parent_id, status=status)

        self._guarded(work)
        if self._failing:
            ended = [t for t in study.get_trials(deepcopy=False) if t.state in (FINISHED, FAILED)]
            missing = sum(t.number not in self.children for t in ended)
            self.log(f"MLflow: logging to {self.uri} still fails; {missing} of {len(ended)} ended trials are not "
                     "logged there yet (the Optuna study has them all). Run the same autoprune search command "
                     "again once the store is back: MLflow catches up and no trial reruns")

    def _guarded(self, work: Callable[[], None]) -> None:
        """Run ``work``; a failure is reported (once until it recovers) instead of stopping the study.

        While the store is known to be away, a server is first asked ``/health`` (2 s) and
        nothing else is tried until it answers; then the child runs are re-read from the store
        before ``work`` catches up.
        """
        if self.client is None:
            return
        if self._failing and is_server(self.uri) and not server_answers(self.uri):
            return
        try:
            if self._failing:
                self._load_children()
                self._orphans.clear()  # _load_children deleted those the store did not finish
            work()
        except Exception as exc:  # tracking must never stop a study; the next call catches up
            if not self._failing:
                self.log(f"MLflow: cannot log to {self.uri} ({failure_reason(exc)}); the study goes on without "
                         "waiting, and MLflow will catch up with every trial once the store answers again (checked "
                         "after each trial, or at the next autoprune search of this study)")
            self._failing = True
            return
        if self._failing:
            self.log("MLflow: caught up")
        self._failing = False

    # -- experiment and parent --------------------------------------------------------

    def _reference(self, study: optuna.Study, dense: Mapping[str, float]) -> dict[str, float]:
        """The study's hypervolume reference point: stored in the Optuna study at its first tracked run."""
        stored = study.user_attrs.get(REFERENCE_ATTR)
        if isinstance(stored, dict) and set(stored) == set(self.objectives):
            return {name: float(stored[name]) for name in self.objectives}
        reference = reference_point(self.objectives, dense)
        study.set_user_attr(REFERENCE_ATTR, reference)
        return reference

    def _create_parent(self, dense: Mapping[str, float]) -> str:
        from mlflow.entities import Metric, Param

        import autoprune

        tags = {"autoprune.study": self.name, "autoprune.role": "parent", "autoprune.version": autoprune.__version__,
                "mlflow.note.content": f"autoprune study {self.name}: one child run per trial; "
                                       "filter tags.pareto = \"true\" for the Pareto front."}
        commit = git_commit(Path(autoprune.__file__).parent)
        if commit:
            tags["mlflow.source.git.commit"] = commit
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=self.name)
        run_id = run.info.run_id
        params = [Param(key, str(value)[:MAX_PARAM]) for key, value in self._space_params().items()]
        now = _ms(None)
        metrics = [Metric(f"dense_{key}", float(value), now, 0) for key, value in dense.items() if _finite(value)]
        for chunk in _chunks(params, BATCH):
            self.client.log_batch(run_id, params=chunk)
        self.client.log_batch(run_id, metrics=metrics)
        if self.paths.space.is_file():
            self.client.log_artifact(run_id, str(self.paths.space))
        return run_id

    def _space_params(self) -> dict[str, Any]:
        """The parent's params: what the study searches and how (all fixed for the study's life)."""
        from autoprune.suggest import search_dimensions

        space = self.space
        params: dict[str, Any] = {
            "study": self.name,
            "sampler": space.study.sampler,
            "seed": space.study.seed,
            "objectives": ", ".join(f"{name}:{d}" for name, d in self.objectives.items()),
            "constraints.accuracy_drop": space.constraints.accuracy_drop,
            "model": f"{space.model.name} {dict(space.model.args) or ''}".strip(),
            "data": space.data.name,
        }
        for name, description in search_dimensions(space.space, self.layers).items():
            params[f"space.{name}"] = description
        for name, value in self.reference.items():
            params[f"hypervolume.reference.{name}"] = f"{value:.6g}"
        return params

    # -- child runs -------------------------------------------------------------------

    def _load_children(self) -> None:
        """Read the parent's child runs; delete half-written ones and duplicates (kept: the first)."""
        runs, token = [], None
        query = f"tags.`mlflow.parentRunId` = '{self.parent_id}' and tags.`autoprune.role` = 'trial'"
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=query, max_results=1000,
                                           order_by=["attributes.start_time ASC"], page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                break
        self.children = {}
        for run in runs:
            number = int(run.data.tags.get("autoprune.trial", -1))
            if run.info.status == "RUNNING" or number in self.children:
                self.client.delete_run(run.info.run_id)
                continue
            self.children[number] = ChildRun(run.info.run_id, run.data.tags.get("pareto") == "true")

    def _log_child(self, trial: optuna.trial.FrozenTrial, pareto: bool) -> None:
        from mlflow.entities import Metric, Param

        attrs = trial.user_attrs
        finished = trial.state == FINISHED
        policy = trial_policy(attrs)
        tags = {
            "mlflow.parentRunId": self.parent_id, "autoprune.study": self.name, "autoprune.role": "trial",
            "autoprune.trial": str(trial.number), "state": "finished" if finished else "failed",
            "feasible": _flag(finished and bool(attrs.get("feasible"))), "pareto": _flag(pareto),
        }
        if policy is not None:
            tags["policy"] = policy.summary()
        if not finished:
            tags["error"] = str(attrs.get("error", "unknown error"))[:MAX_TAG]
        run = self.client.create_run(self.experiment_id, start_time=_ms(trial.datetime_start), tags=tags,
                                     run_name=f"trial-{trial.number}")
        run_id = run.info.run_id
        self._orphans.append(run_id)  # until it is complete: deleted and written again if anything fails
        when = _ms(trial.datetime_complete)
        params = [Param(k, str(v)[:MAX_PARAM]) for k, v in policy.flat().items()] if policy is not None else []
        metrics = [Metric(k, float(v), when, 0) for k, v in attrs.get("metrics", {}).items() if _finite(v)] if finished else []
        metrics += [Metric(k, v, when, step) for k, v, step in curve_metrics(attrs.get("steps", []), attrs.get("curve", []))]
        for chunk in _chunks(params, BATCH):
            self.client.log_batch(run_id, params=chunk)
        for chunk in _chunks(metrics, 1000):
            self.client.log_batch(run_id, metrics=chunk)
        if policy is not None:
            self._log_policy(run_id, trial, policy)
        self.client.set_terminated(run_id, status="FINISHED" if finished else "FAILED", end_time=when)
        self._orphans.remove(run_id)
        self.children[trial.number] = ChildRun(run_id, pareto)

    def _log_policy(self, run_id: str, trial: optuna.trial.FrozenTrial, policy: Policy) -> None:
        sections: dict[str, Any] = {"study": self.name, "trial": trial.number}
        if trial.state == FINISHED:
            sections["metrics"] = {k: v for k, v in trial.user_attrs.get("metrics", {}).items() if _finite(v)}
        else:
            sections["error"] = trial.user_attrs.get("error", "")
        with tempfile.TemporaryDirectory(prefix="autoprune-policy-") as folder:
            path = save_policy(Path(folder) / "policy.yaml", policy, **sections)
            self.client.log_artifact(run_id, str(path))

    # -- reconciliation ---------------------------------------------------------------

    def _sync(self, trials: Sequence[optuna.trial.FrozenTrial], frame: pd.DataFrame | None, *, plots: bool) -> None:
        """Bring MLflow level with ``trials`` (``frame``: their table, written here when ``None``)."""
        if frame is None:
            frame = write_tables(trials, self.objectives, self.paths.trials_csv, self.paths.pareto_csv)
        while self._orphans:
            self.client.delete_run(self._orphans[0])
            self._orphans.pop(0)
        front = set(frame.loc[frame["pareto"].astype(bool), "number"].astype(int)) if len(frame) else set()
        for trial in sorted(trials, key=lambda t: t.number):
            if trial.state in (FINISHED, FAILED) and trial.number not in self.children:
                self._log_child(trial, trial.number in front)
        for number, child in self.children.items():
            wanted = number in front
            if child.pareto != wanted:
                self.client.set_tag(child.run_id, "pareto", _flag(wanted))
                child.pareto = wanted
        finished = self._log_front(trials)
        for path in (self.paths.trials_csv, self.paths.pareto_csv):
            if path.is_file():
                self.client.log_artifact(self.parent_id, str(path))
        ended = len(self.children)
        due = (finished - self._plotted[0] >= self.plot_every
               and time.monotonic() - self._plotted_time >= self.plot_seconds)
        if ended and (due or (plots and (finished, ended) != self._plotted)):
            self._plots(trials, frame)
            self._plotted = (finished, ended)
            self._plotted_time = time.monotonic()

    def _log_front(self, trials: Sequence[optuna.trial.FrozenTrial]) -> int:
        """Log ``hypervolume``/``pareto_size`` for finish counts not logged yet; returns the count."""
        from mlflow.entities import Metric

        done = sorted((t for t in trials if t.state == FINISHED),
                      key=lambda t: (t.datetime_complete or datetime.max, t.number))
        order = [t.number for t in done]
        if self._front is None or order[: len(self._front_order)] != self._front_order:
            self._front = FrontProgress(list(self.objectives.values()), list(self.reference.values()))
            self._front_order = []
        for trial in done[len(self._front_order):]:
            values = [float(trial.user_attrs.get("metrics", {}).get(name, math.nan)) for name in self.objectives]
            volume, size = self._front.add(values, bool(trial.user_attrs.get("feasible", False)))
            self._front_order.append(trial.number)
            step = len(self._front_order)
            if step not in self._logged_steps:
                when = _ms(trial.datetime_complete)
                self._pending += [Metric("hypervolume", volume, when, step), Metric("pareto_size", float(size), when, step)]
                self._logged_steps.add(step)
        while self._pending:  # kept until logged, so a store error delays these metrics, never loses them
            self.client.log_batch(self.parent_id, metrics=self._pending[:1000])
            del self._pending[:1000]
        return len(done)

    def _plots(self, trials: Sequence[optuna.trial.FrozenTrial], frame: pd.DataFrame) -> None:
        for path in write_study_plots(self.name, self.objectives, self.paths, trials, frame):
            self.client.log_artifact(self.parent_id, str(path))


def make_tracker(space: SearchSpace, paths: StudyPaths, *, uri: str | None, layers: Sequence[Any] = (),
                 log: Callable[[str], None] = print) -> StudyTracker:
    """A :class:`StudyTracker` for the study, its store checked first (one-line errors)."""
    resolved, source = resolve_tracking_uri(uri, paths.root)
    check_tracking_uri(resolved, source)
    return StudyTracker(space, paths, layers=layers, uri=resolved, log=log)

