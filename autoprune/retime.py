"""Honest latency for the Pareto front: every candidate re-timed alone, one after another.

Trials time themselves (``latency_ms``) while other trials run on the same machine, so their
latencies carry their neighbours' noise. After a study (the end of
:func:`autoprune.search.run_search`) and on demand (``autoprune retime --study NAME``) every
Pareto candidate is re-timed in one process, alone and sequentially, with the study's
``latency:`` settings (batch size, threads, repeats, warm-up), its runs interleaved with the
dense model's as in a trial (:func:`autoprune.measure.measure_latency_pair`).

**No trial is re-run.** Latency depends on the architecture, not on the weight values: a
candidate's architecture is rebuilt from the space's model and the trial's
``layer_channels`` (:func:`autoprune.artifacts.rebuild_architecture`), and each distinct
architecture is timed once, so candidates with the same shapes get the same value.
Unstructured masks leave the dense architecture: every unstructured candidate is timed as
the dense model (``speedup_isolated`` ≈ 1), because masks do not make dense kernels faster.

**Where the values go.** ``latency_ms_isolated``, ``speedup_isolated`` and
``dense_latency_ms_isolated`` are added to the trial's ``metrics`` user attribute in the
Optuna study, so they are columns of ``trials.csv`` and ``pareto.csv``, and are logged to the
trial's MLflow child run. When ``latency_ms`` (or ``speedup``) is an objective the front is
recomputed with the isolated value in its place wherever one exists (:func:`autoprune.results.trials_frame`);
a trial that joins the front that way is re-timed too, until every point of the front has
an isolated value. Once anything was re-timed, the study's ``pareto.html``/``pareto.png``
are redrawn from the new table (:func:`redraw_plots`), and the MLflow parent run gets the
new ``trials.csv``, ``pareto.csv`` and plots in place of those the search logged before the
re-timing (:func:`log_isolated`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import optuna
import pandas as pd
import torch
from torch import nn

from autoprune.context import StudySetup
from autoprune.errors import AutopruneError
from autoprune.paths import StudyPaths
from autoprune.results import pareto_frame, trials_frame, write_csv
from autoprune.space import SearchSpace

def architecture_of(trial: optuna.trial.FrozenTrial, dense_channels: Mapping[str, int]) -> dict[str, int] | None:
    """The trial's per-layer output channels, or ``None`` when they cannot be known.

    Trials record ``layer_channels``; an unstructured trial without them has the dense
    architecture; a channel-pruned trial without them (recorded before autoprune kept them)
    cannot be rebuilt.
    """
    channels = trial.user_attrs.get("layer_channels")
    if channels:
        return {name: int(count) for name, count in channels.items()}
    granularity = (trial.user_attrs.get("policy") or {}).get("granularity", "unstructured")
    return dict(dense_channels) if granularity == "unstructured" else None


@dataclass
class RetimeOutcome:
    """What one re-timing did."""

    timed: dict[int, dict[str, float]] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)
    architectures: int = 0
    front: list[int] = field(default_factory=list)
    frame: pd.DataFrame | None = None
    trials: list[optuna.trial.FrozenTrial] = field(default_factory=list)


class _Timer:
    """Times each distinct architecture once against the dense model (sequentially, alone)."""

    def __init__(self, space: SearchSpace, dense: nn.Module, input_shape: tuple[int, ...], output_layer: str) -> None:
        self.spec = space.latency
        self.dense = dense
        self.input_shape = input_shape
        self.output_layer = output_layer
        self.cache: dict[tuple[str, str], dict[str, float]] = {}

    def time(self, channels: Mapping[str, int], device: str) -> dict[str, float]:
        from autoprune.artifacts import rebuild_architecture
        from autoprune.measure import measure_latency_pair

        key = (device, json.dumps(dict(sorted(channels.items()))))
        if key not in self.cache:
            pruned = rebuild_architecture(self.dense, channels, self.input_shape, output_layer=self.output_layer)
            spec = self.spec
            timing = measure_latency_pair(self.dense, pruned, self.input_shape, batch_size=spec.batch_size,
                                          warmup=spec.warmup, repeats=spec.repeats, threads=spec.threads, device=device,
                                          runtime=spec.runtime)
            self.cache[key] = {"latency_ms_isolated": timing["latency_ms"], "speedup_isolated": timing["speedup"],
                               "dense_latency_ms_isolated": timing["dense_latency_ms"]}
        return self.cache[key]


def _device(trial: optuna.trial.FrozenTrial) -> str:
    """Where the trial ran (``cuda`` if it did and a GPU is here), else ``cpu``."""
    ran = str(trial.user_attrs.get("device", "cpu"))
    return "cuda" if ran.startswith("cuda") and torch.cuda.is_available() else "cpu"


def _has_isolated(trial: optuna.trial.FrozenTrial) -> bool:
    value = trial.user_attrs.get("metrics", {}).get("latency_ms_isolated")
    return isinstance(value, (int, float)) and math.isfinite(value)


def store_isolated(storage: optuna.storages.RDBStorage, trial: optuna.trial.FrozenTrial,
                   values: Mapping[str, float]) -> None:
    """Add ``values`` to the finished trial's ``metrics`` user attribute in the study's database.

    Optuna's API refuses to change a finished trial (``set_trial_user_attr`` checks the
    state), and isolated timings arrive after the trial finished; the attribute's row is
    therefore updated through the storage's own ORM model, with Optuna's JSON encoding.
    """
    from optuna.storages._rdb import models

    metrics = {**trial.user_attrs.get("metrics", {}), **{k: float(v) for k, v in values.items()}}
    session = storage.scoped_session()
    try:
        row = (session.query(models.TrialUserAttributeModel)
               .filter_by(trial_id=trial._trial_id, key="metrics").one_or_none())
        if row is None:
            session.add(models.TrialUserAttributeModel(trial_id=trial._trial_id, key="metrics",
                                                       value_json=json.dumps(metrics)))
        else:
            row.value_json = json.dumps(metrics)
        session.commit()
    except Exception:
        session.rollback()
        raise
    finally:
        session.close()


def retime_front(space: SearchSpace, paths: StudyPaths, dense: nn.Module, input_shape: tuple[int, ...],
                 output_layer: str, *, force: bool = False, log: Callable[[str], None] = print) -> RetimeOutcome:
    """Re-time the study's Pareto candidates (see the module docstring); rewrite the CSV tables.

    Args:
        dense: the space's dense model (architecture; its weight values do not matter).
        input_shape: one example's shape, e.g. ``(64,)`` or ``(1, 28, 28)``.
        output_layer: the classifier's output layer (never loses units).
        force: re-time candidates that already have an isolated latency.

    The caller holds the study (no driver may write it meanwhile).
    """
    from autoprune.models import prunable_layers
    from autoprune.prune import out_channels

    storage = optuna.storages.RDBStorage(f"sqlite:///{paths.optuna_db}",
                                         engine_kwargs={"connect_args": {"timeout": 30}})
    try:
        study_id = storage.get_study_id_from_name(space.study.name)
    except KeyError:
        raise AutopruneError(f"{paths.optuna_db}: holds no study named {space.study.name!r}") from None
    dense_channels = {name: out_channels(m) for name, m in prunable_layers(dense).items()}
    timer = _Timer(space, dense, input_shape, output_layer)
    outcome = RetimeOutcome()
    objectives = space.objectives
    while True:
        trials = storage.get_all_trials(study_id, deepcopy=False)
        frame = trials_frame(trials, objectives)
        front = [int(n) for n in frame.loc[frame["pareto"].astype(bool), "number"]] if len(frame) else []
        by_number = {t.number: t for t in trials}
        todo = [by_number[n] for n in front if n not in outcome.timed and n not in outcome.skipped
                and (force or not _has_isolated(by_number[n]))]
        if not todo:
            break
        for trial in todo:
            channels = architecture_of(trial, dense_channels)
            if channels is None:
                outcome.skipped[trial.number] = "channel-pruned trial without layer_channels (recorded by an older autoprune)"
                log(f"retime: trial {trial.number} skipped: {outcome.skipped[trial.number]}")
                continue
            try:
                values = timer.time(channels, _device(trial))
            except (AutopruneError, ValueError, RuntimeError) as exc:  # an architecture that cannot be rebuilt
                outcome.skipped[trial.number] = f"cannot rebuild its architecture ({exc})".splitlines()[0]
                log(f"retime: trial {trial.number} skipped: {outcome.skipped[trial.number]}")
                continue
            store_isolated(storage, trial, values)
            outcome.timed[trial.number] = dict(values)
    outcome.architectures = len(timer.cache)
    outcome.front = front
    outcome.frame = frame
    outcome.trials = list(trials)
    write_csv(frame, paths.trials_csv)
    write_csv(pareto_frame(frame, objectives), paths.pareto_csv)
    storage.remove_session()
    return outcome


def redraw_plots(space: SearchSpace, paths: StudyPaths, outcome: RetimeOutcome, *, tracking: bool,
                 log: Callable[[str], None] = print) -> list[Path]:
    """Redraw the study's ``pareto.html``/``pareto.png`` from the re-timed table; returns the files written.

    As in a search, only tracking draws plots a study does not have yet
    (:func:`autoprune.tracking.write_study_plots`, the tracker's own drawing); without it,
    plots already in the study folder (from a tracked search or ``autoprune baselines``) are
    redrawn so that they never show the front from before the re-timing. A drawing that
    fails is reported, not raised: the study and its tables already hold the re-timing.
    """
    from autoprune.plots import PLOT_FILES
    from autoprune.tracking import write_study_plots

    if outcome.frame is None or not (tracking or any((paths.folder / name).is_file() for name in PLOT_FILES)):
        return []
    try:
        return list(write_study_plots(space.study.name, space.objectives, paths, outcome.trials, outcome.frame))
    except Exception as exc:  # a drawing must not undo a finished re-timing
        log(f"retime: {' and '.join(PLOT_FILES)} not redrawn ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})")
        return []


def log_isolated(space: SearchSpace, paths: StudyPaths, outcome: RetimeOutcome, *, tracking_uri: str | None,
                 plots: Sequence[Path] = (), log: Callable[[str], None] = print) -> int:
    """Log the isolated metrics to the trials' MLflow child runs and refresh their ``pareto`` tags.

    The parent run then gets the study's ``trials.csv`` and ``pareto.csv`` and the ``plots``
    (:func:`redraw_plots`) again, replacing the artifacts of the same names. Does nothing
    when the store holds no parent run for the study (it was never tracked; a later tracked
    run logs the metrics with the child runs it creates). A store failure is reported in one
    line, not raised: the Optuna study already holds the values; a server that is away fails
    within seconds, not MLflow's minutes of retries. Returns the child runs updated.
    """
    from autoprune.tracking import client_for, find_parent_run, resolve_tracking_uri

    uri, _ = resolve_tracking_uri(tracking_uri, paths.root)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return 0
    try:
        files = [path for path in (paths.trials_csv, paths.pareto_csv, *plots) if path.is_file()]
        return _log_isolated(client_for(uri, fail_fast=True), space.study.name, outcome, find_parent_run, files)
    except Exception as exc:  # tracking must not undo a finished re-timing
        log(f"retime: MLflow not updated ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
        return 0


def _log_isolated(client: Any, name: str, outcome: RetimeOutcome, find_parent_run: Callable[..., Any],
                  files: Sequence[Path]) -> int:
    from mlflow.entities import Metric

    experiment = client.get_experiment_by_name(name)
    parent = find_parent_run(client, experiment.experiment_id, name) if experiment is not None else None
    if parent is None:
        return 0
    query = f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`autoprune.role` = 'trial'"
    runs, token = [], None
    while True:
        page = client.search_runs([experiment.experiment_id], filter_string=query, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    front = set(outcome.front)
    updated = 0
    for run in runs:
        number = int(run.data.tags.get("autoprune.trial", -1))
        values = outcome.timed.get(number)
        if values:
            now = int(pd.Timestamp.now().timestamp() * 1000)
            client.log_batch(run.info.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in values.items()])
            updated += 1
        wanted = "true" if number in front else "false"
        if run.data.tags.get("state") == "finished" and run.data.tags.get("pareto") != wanted:
            client.set_tag(run.info.run_id, "pareto", wanted)
    for path in files:
        client.log_artifact(parent.info.run_id, str(path))
    return updated


def retime_setup(setup: StudySetup, paths: StudyPaths, *, force: bool = False, tracking: bool = True,
                 tracking_uri: str | None = None, log: Callable[[str], None] = print) -> RetimeOutcome:
    """Re-time the front of a prepared study (the caller holds its lock), redraw its plots, update MLflow.

    ``setup`` is the study's :class:`~autoprune.context.StudySetup` (space, data, model).
    Plots and MLflow are left alone when nothing was re-timed.
    """
    space = setup.space
    outcome = retime_front(space, paths, setup.model, tuple(setup.data.input_shape), setup.output_layer,
                           force=force, log=log)
    if outcome.timed:
        plots = redraw_plots(space, paths, outcome, tracking=tracking, log=log)
        if tracking:
            log_isolated(space, paths, outcome, tracking_uri=tracking_uri, plots=plots, log=log)
        log(f"retime: {len(outcome.timed)} Pareto candidates re-timed alone ({outcome.architectures} distinct "
            f"architectures, {space.latency.repeats} repeats); latency_ms_isolated is in {paths.trials_csv.name}")
    return outcome


def retime_study(study: str, studies: str | Path | None = None, *, force: bool = False, tracking: bool = True,
                 tracking_uri: str | None = None, log: Callable[[str], None] = print) -> RetimeOutcome:
    """``autoprune retime``: re-time an existing study's front, holding the study's lock."""
    from autoprune.context import build_setup
    from autoprune.lock import StudyLock
    from autoprune.report import open_existing

    paths, space, _ = open_existing(study, studies)
    if tracking:  # a bad --tracking-uri is refused before the study is re-timed and written
        from autoprune.tracking import resolve_tracking_uri

        resolve_tracking_uri(tracking_uri, paths.root)
    setup = build_setup(space)
    with StudyLock(paths.lock, log=log):
        return retime_setup(setup, paths, force=force, tracking=tracking, tracking_uri=tracking_uri, log=log)
