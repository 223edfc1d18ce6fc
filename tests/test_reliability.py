"""A study survives faults around it: real Ray local cluster, real Optuna, real MLflow, digits."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from autoprune.faults import FaultPlan
from autoprune.paths import StudyPaths
from autoprune.policy import Policy
from autoprune.search import SearchOptions, run_search
from autoprune.tracking import StudyTracker, client_for
from autoprune.ui import MlflowServer
from test_search import load, small_space
from test_ui import free_port

pytestmark = pytest.mark.timeout(600)


class Server(MlflowServer):
    """``mlflow server`` on a sqlite store in ``folder``, artifacts proxied through it (as a remote one is)."""

    def __init__(self, folder: Path) -> None:
        super().__init__(f"sqlite:///{folder / 'mlflow.db'}", host="127.0.0.1", port=free_port(), artifacts=None,
                         log_path=folder / "server.log")
        self.folder = folder

    def command(self) -> list[str]:
        return [*super().command(), "--artifacts-destination", str(self.folder / "artifacts")]


def runs(client: MlflowClient, study: str, role: str) -> list:
    experiment = client.get_experiment_by_name(study).experiment_id
    return client.search_runs([experiment], filter_string=f"tags.`autoprune.role` = '{role}'", max_results=1000)


def test_a_tracking_server_away_for_two_trials_is_caught_up_during_the_study(tmp_path: Path, monkeypatch) -> None:
    server = Server(tmp_path / "mlflow")
    seconds: list[float] = []  # how long each trial's MLflow update held the driver
    logged: list[int] = []  # child runs the tracker knew after each trial
    original = StudyTracker.trial_done

    def trial_done(self: StudyTracker, trials, frame=None) -> None:
        began = time.monotonic()
        original(self, trials, frame)
        seconds.append(time.monotonic() - began)
        logged.append(len(self.children))
        if len(seconds) == 2:
            server.stop()  # gone after two trials are logged ...
        elif len(seconds) == 4:
            server.start()  # ... and back, same port and store, after two more ended

    monkeypatch.setattr(StudyTracker, "trial_done", trial_done)
    notes: list[str] = []
    server.start()
    try:
        outcome = run_search(small_space("outage", 6), SearchOptions(studies=tmp_path / "studies", concurrency=1, quiet=True,
                                                                     tracking_uri=server.url, retime=False),
                             log=notes.append)
    finally:
        server.stop()
    assert (outcome.finished, outcome.failed) == (6, 0)
    assert logged == [1, 2, 2, 2, 5, 6]  # nothing logged while away; the first trial after it is back catches up
    assert max(seconds[2:4]) < 5  # a server that is away does not hold the study up
    warnings = [n for n in notes if n.startswith("MLflow: cannot log")]
    assert warnings == [n for n in notes if "connection refused" in n] and len(warnings) == 1
    assert f"cannot log to {server.url} (connection refused: the server is not running)" in warnings[0]
    assert "will catch up" in warnings[0] and "MLflow: caught up" in notes and not any("still fails" in n for n in notes)

    client = MlflowClient(tracking_uri=server.uri)  # the server's own store, read directly
    trials = load(tmp_path / "studies", "outage").trials
    table = pd.read_csv(tmp_path / "studies" / "outage" / "trials.csv").set_index("number")
    (parent,) = runs(client, "outage", "parent")
    assert parent.info.status == "FINISHED"
    children = runs(client, "outage", "trial")
    numbers = sorted(int(run.data.tags["autoprune.trial"]) for run in children)
    assert numbers == [t.number for t in trials] == list(table.index) == [0, 1, 2, 3, 4, 5]
    for run in children:
        trial = trials[int(run.data.tags["autoprune.trial"])]
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.params == {k: str(v) for k, v in Policy.from_dict(trial.user_attrs["policy"]).flat().items()}
        for name, value in zip(("accuracy", "sparsity"), trial.values):
            assert run.data.metrics[name] == pytest.approx(value) == pytest.approx(table.loc[trial.number, name])
        artifacts = tmp_path / "mlflow" / "artifacts" / parent.info.experiment_id / run.info.run_id / "artifacts"
        assert (artifacts / "policy.yaml").is_file()
    steps = [m.step for m in client.get_metric_history(parent.info.run_id, "hypervolume")]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]


def test_a_store_still_away_at_the_end_fails_fast_and_says_how_to_catch_up(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there any more
    notes: list[str] = []
    tracker = StudyTracker(small_space("away", 1), StudyPaths(tmp_path, "away").create(), uri=uri, log=notes.append)
    tracker.client, tracker.experiment_id, tracker.parent_id = client_for(uri, fail_fast=True), "1", "parent"
    study = optuna.create_study(directions=["maximize", "maximize"])
    study.add_trial(optuna.trial.create_trial(values=[0.9, 0.5], user_attrs={
        "metrics": {"accuracy": 0.9, "sparsity": 0.5}, "feasible": True, "policy": Policy().to_dict()}))
    began = time.monotonic()
    tracker.trial_done(study.get_trials())
    tracker.finish(study)
    assert time.monotonic() - began < 5  # MLflow's own retries would take minutes
    assert len(notes) == 2 and f"cannot log to {uri} (connection refused" in notes[0]
    assert f"logging to {uri} still fails; 1 of 1 ended trials are not logged there yet" in notes[1]
    assert "Run the same autoprune search command again once the store is back" in notes[1]


def test_a_trial_out_of_memory_is_recorded_failed_with_its_cause_and_replaced(tmp_path: Path) -> None:
    faults = FaultPlan(memory_error_on=(1,))
    outcome = run_search(small_space("oom", 3), SearchOptions(studies=tmp_path, concurrency=1, quiet=True, faults=faults,
                                                              retime=False), log=lambda _: None)
    assert (outcome.finished, outcome.failed) == (3, 1)
    study = load(tmp_path, "oom")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    cause = "MemoryError: injected out-of-memory in trial 1"
    assert study.trials[1].user_attrs["error"] == cause
    table = pd.read_csv(tmp_path / "oom" / "trials.csv").set_index("number")
    assert table.loc[1, "state"] == "failed" and table.loc[1, "error"] == cause
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    child = next(r for r in runs(client, "oom", "trial") if r.data.tags["autoprune.trial"] == "1")
    assert child.info.status == "FAILED" and child.data.tags["state"] == "failed" and child.data.tags["error"] == cause
