"""MLflow tracking of real studies: real Ray, Optuna, torch on digits and MLflow on sqlite."""

from __future__ import annotations

import itertools
import socket
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from autoprune.errors import AutopruneError
from autoprune.faults import FaultPlan
from autoprune.pareto import hypervolume
from autoprune.paths import StudyPaths
from autoprune.policy import Policy, load_policy
from autoprune.results import trials_frame
from autoprune.search import SearchOptions, run_search
from autoprune.tracking import StudyTracker, curve_metrics
from autoprune.trial import METRICS
from test_plots import CHROMEDRIVER, CHROMIUM, READ_PLOTS, WebDriver, save_artifact
from test_search import small_space

pytestmark = pytest.mark.timeout(600)


def quiet(_: str) -> None:
    pass


def client_of(root: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def runs_of(root: Path, study: str, role: str) -> list:
    client = client_of(root)
    experiment = client.get_experiment_by_name(study)
    query = f"tags.`autoprune.role` = '{role}'"
    return client.search_runs([experiment.experiment_id], filter_string=query, max_results=1000)


def tracked_space(trials: int):
    """The tests' study: sparsities low enough that most trials are feasible, so there is a front."""
    return small_space("tracked", trials, scorer=["magnitude", "taylor"], target_sparsity=[0.2, 0.6])


def optuna_trials(root: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=f"sqlite:///{root / study / 'optuna.db'}").trials


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Trials 0-2 run untracked (trial 1 fails), then the study resumes tracked to 4 finished trials.

    The resume catches MLflow up with the three earlier trials before running two more.
    """
    root = tmp_path_factory.mktemp("studies")
    faults = FaultPlan(raise_on=(1,))
    run_search(tracked_space(2), SearchOptions(studies=root, concurrency=2, quiet=True, faults=faults,
                                                        tracking=False), log=quiet)
    assert not (root / "mlflow.db").exists()
    outcome = run_search(tracked_space(4), SearchOptions(studies=root, concurrency=2, quiet=True, faults=faults),
                         log=quiet)
    assert (outcome.finished, outcome.failed) == (4, 0)
    return root


def test_one_parent_run_with_the_study_summary_and_the_dense_model(tracked: Path) -> None:
    (parent,) = runs_of(tracked, "tracked", "parent")
    params, metrics, tags = parent.data.params, parent.data.metrics, parent.data.tags
    assert parent.info.status == "FINISHED" and parent.info.run_name == "tracked"
    assert params["sampler"] == "tpe" and params["seed"] == "0" and params["objectives"] == "accuracy:max, sparsity:max"
    assert params["constraints.accuracy_drop"] == "0.05" and params["space.scorer"] == "{magnitude, taylor}"
    assert params["hypervolume.reference.accuracy"] == "0" and params["hypervolume.reference.sparsity"] == "0"
    assert 0.8 < metrics["dense_accuracy"] <= 1 and metrics["dense_latency_ms"] > 0 and metrics["dense_params"] > 0
    assert tags["autoprune.version"] and tags["autoprune.study"] == "tracked"
    experiment = client_of(tracked).get_experiment(parent.info.experiment_id)
    assert experiment.artifact_location == (tracked / "mlartifacts" / "tracked").as_uri()
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's model-training view
    artifacts = {a.path for a in client_of(tracked).list_artifacts(parent.info.run_id)}
    assert {"pareto.csv", "trials.csv", "pareto.html", "pareto.png", "space.yaml"} <= artifacts
    assert (tracked / "tracked" / "pareto.html").is_file() and (tracked / "tracked" / "pareto.png").is_file()


def test_one_child_run_per_trial_with_policy_metrics_and_curves(tracked: Path) -> None:
    children = {int(run.data.tags["autoprune.trial"]): run for run in runs_of(tracked, "tracked", "trial")}
    trials = optuna_trials(tracked, "tracked")
    assert sorted(children) == [t.number for t in trials] == [0, 1, 2, 3, 4]
    (parent,) = runs_of(tracked, "tracked", "parent")
    client = client_of(tracked)
    for trial in trials:
        run = children[trial.number]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        policy = Policy.from_dict(trial.user_attrs["policy"])
        assert run.data.params == {k: str(v) for k, v in policy.flat().items()}
        assert run.data.tags["policy"] == policy.summary()
        path = client.download_artifacts(run.info.run_id, "policy.yaml", str(tracked / f"download-{trial.number}"))
        assert load_policy(path) == policy
        if trial.state == optuna.trial.TrialState.FAIL:
            assert run.info.status == "FAILED" and run.data.tags["state"] == "failed"
            assert "injected failure in trial 1" in run.data.tags["error"] and not run.data.metrics
            continue
        assert run.info.status == "FINISHED" and run.data.tags["state"] == "finished"
        assert run.data.tags["feasible"] == str(trial.user_attrs["feasible"]).lower()
        assert set(METRICS) <= set(run.data.metrics)
        assert run.data.metrics["accuracy"] == pytest.approx(trial.user_attrs["metrics"]["accuracy"])
        reached = client.get_metric_history(run.info.run_id, "schedule/sparsity")
        assert [m.step for m in reached] == [s["step"] for s in trial.user_attrs["steps"]]
        loss = client.get_metric_history(run.info.run_id, "finetune/loss")
        assert len(loss) == len(trial.user_attrs["curve"]) >= 1


def test_pareto_tags_are_exactly_the_front(tracked: Path) -> None:
    front = set(pd.read_csv(tracked / "tracked" / "pareto.csv")["number"])
    assert front
    tagged = {int(r.data.tags["autoprune.trial"]) for r in runs_of(tracked, "tracked", "trial")
              if r.data.tags["pareto"] == "true"}
    assert tagged == front
    client = client_of(tracked)
    experiment = client.get_experiment_by_name("tracked").experiment_id
    filtered = client.search_runs([experiment], filter_string='tags.pareto = "true"')
    assert {int(r.data.tags["autoprune.trial"]) for r in filtered} == front


def test_hypervolume_series_is_stepped_by_finished_trials_and_never_decreases(tracked: Path) -> None:
    (parent,) = runs_of(tracked, "tracked", "parent")
    client = client_of(tracked)
    volumes = sorted(client.get_metric_history(parent.info.run_id, "hypervolume"), key=lambda m: m.step)
    sizes = sorted(client.get_metric_history(parent.info.run_id, "pareto_size"), key=lambda m: m.step)
    assert [m.step for m in volumes] == [m.step for m in sizes] == [1, 2, 3, 4]
    assert all(b.value >= a.value for a, b in itertools.pairwise(volumes))
    trials = pd.read_csv(tracked / "tracked" / "trials.csv")
    feasible = trials[(trials["state"] == "finished") & trials["feasible"]]
    expected = hypervolume(feasible[["accuracy", "sparsity"]].to_numpy(), ["max", "max"], [0.0, 0.0])
    assert volumes[-1].value == pytest.approx(expected) and expected > 0
    assert sizes[-1].value == len(pd.read_csv(tracked / "tracked" / "pareto.csv"))


def test_a_rerun_repairs_half_written_and_lost_runs_without_duplicates(tracked: Path) -> None:
    client = client_of(tracked)
    (parent,) = runs_of(tracked, "tracked", "parent")
    children = runs_of(tracked, "tracked", "trial")
    # as if a driver had been killed while writing trial 0's run again, and trial 2's run were lost
    half = client.create_run(parent.info.experiment_id, run_name="trial-0", tags={
        "mlflow.parentRunId": parent.info.run_id, "autoprune.role": "trial", "autoprune.trial": "0"})
    lost = next(r for r in children if r.data.tags["autoprune.trial"] == "2")
    client.delete_run(lost.info.run_id)
    outcome = run_search(tracked_space(4), SearchOptions(studies=tracked, quiet=True), log=quiet)
    assert outcome.finished == 4  # nothing left to run: only MLflow is caught up
    after = runs_of(tracked, "tracked", "trial")
    assert sorted(int(r.data.tags["autoprune.trial"]) for r in after) == [0, 1, 2, 3, 4]
    assert half.info.run_id not in {r.info.run_id for r in after}
    deleted = client.search_runs([parent.info.experiment_id], run_view_type=ViewType.DELETED_ONLY)
    assert {r.info.run_id for r in deleted} == {half.info.run_id, lost.info.run_id}
    assert sorted(m.step for m in client.get_metric_history(parent.info.run_id, "hypervolume")) == [1, 2, 3, 4]
    assert [r.info.run_id for r in runs_of(tracked, "tracked", "parent")] == [parent.info.run_id]


def test_an_unreachable_tracking_server_is_refused_before_the_study_starts(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(AutopruneError, match=f"--tracking-uri http://127.0.0.1:{port}: cannot reach the MLflow server"):
        run_search(small_space("nowhere", 1), SearchOptions(studies=tmp_path, tracking_uri=f"http://127.0.0.1:{port}"),
                   log=quiet)
    with pytest.raises(AutopruneError, match="not a tracking URI; use sqlite:///PATH/mlflow.db"):
        run_search(small_space("nowhere", 1), SearchOptions(studies=tmp_path, tracking_uri="mlflow.db"), log=quiet)
    assert not (tmp_path / "nowhere").exists()


def test_curves_are_stepped_across_schedule_steps() -> None:
    steps = [{"step": 1, "sparsity": 0.3, "accuracy": 0.9, "loss": 0.2, "target": 0.3},
             {"step": 2, "sparsity": 0.6, "accuracy": 0.8, "loss": 0.4, "target": 0.6}]
    curve = [{"step": 50, "loss": 1.0, "lr": 0.1, "schedule_step": 1}, {"step": 60, "loss": 0.9, "lr": 0.1, "schedule_step": 1},
             {"step": 50, "loss": 0.8, "lr": 0.1, "schedule_step": 2}, {"step": 55, "loss": 0.7, "lr": 0.1, "schedule_step": 2}]
    logged = curve_metrics(steps, curve)
    assert [(v, s) for name, v, s in logged if name == "finetune/loss"] == [(1.0, 50), (0.9, 60), (0.8, 110), (0.7, 115)]
    assert [(v, s) for name, v, s in logged if name == "schedule/sparsity"] == [(0.3, 1), (0.6, 2)]


def test_a_store_failing_mid_study_is_reported_once_and_does_not_stop_it(tmp_path: Path) -> None:
    class Broken:
        def __getattr__(self, name: str):
            raise ConnectionError("server went away")

    trial = optuna.trial.create_trial(values=[0.9, 0.5], user_attrs={
        "metrics": {"accuracy": 0.9, "sparsity": 0.5}, "feasible": True, "policy": Policy().to_dict()})
    notes: list[str] = []
    tracker = StudyTracker(small_space("broken", 1), StudyPaths(tmp_path, "broken").create(), uri="http://127.0.0.1:1",
                           log=notes.append)
    tracker.client = Broken()
    frame = trials_frame([trial], {"accuracy": "max", "sparsity": "max"})
    tracker.trial_done([trial], frame)
    tracker.trial_done([trial], frame)
    assert len(notes) == 1 and "server went away" in notes[0] and "catch up" in notes[0]


def finished_trial(accuracy: float, sparsity: float) -> optuna.trial.FrozenTrial:
    metrics = {"accuracy": accuracy, "sparsity": sparsity, "accuracy_drop": 0.97 - accuracy}
    return optuna.trial.create_trial(values=[accuracy, sparsity], user_attrs={
        "metrics": metrics, "feasible": True, "policy": Policy(target_sparsity=sparsity).to_dict()})


def test_a_child_run_cut_short_by_a_store_error_is_written_again_not_twice(tmp_path: Path) -> None:
    class Flaky:
        """The real client, except that one artifact upload fails."""

        def __init__(self, client: MlflowClient) -> None:
            self.client, self.failures = client, 1

        def __getattr__(self, name: str):
            if name == "log_artifact" and self.failures:
                self.failures -= 1
                raise ConnectionError("upload interrupted")
            return getattr(self.client, name)

    study = optuna.create_study(directions=["maximize", "maximize"])
    study.add_trial(finished_trial(0.95, 0.4))
    notes: list[str] = []
    tracker = StudyTracker(small_space("flaky", 2), StudyPaths(tmp_path, "flaky").create(),
                           uri=f"sqlite:///{tmp_path / 'mlflow.db'}", log=notes.append)
    tracker.start(study, {"accuracy": 0.97})
    tracker.client = Flaky(tracker.client)
    study.add_trial(finished_trial(0.93, 0.6))
    trials = study.get_trials()
    frame = trials_frame(trials, {"accuracy": "max", "sparsity": "max"})
    tracker.trial_done(trials, frame)  # trial 1's run is created, then its policy.yaml upload fails
    tracker.trial_done(trials, frame)  # the next call deletes that run and writes it again
    children = runs_of(tmp_path, "flaky", "trial")
    assert sorted(int(r.data.tags["autoprune.trial"]) for r in children) == [0, 1]
    assert all(r.info.status == "FINISHED" for r in children) and {r.data.tags["pareto"] for r in children} == {"true"}
    deleted = client_of(tmp_path).search_runs([children[0].info.experiment_id], run_view_type=ViewType.DELETED_ONLY)
    assert [r.data.tags["autoprune.trial"] for r in deleted] == ["1"]
    assert any("upload interrupted" in note for note in notes) and notes[-1] == "MLflow: caught up"


def test_space_yaml_on_the_parent_is_the_space_that_ran(tracked: Path) -> None:
    (parent,) = runs_of(tracked, "tracked", "parent")
    path = client_of(tracked).download_artifacts(parent.info.run_id, "space.yaml", str(tracked / "download-space"))
    assert yaml.safe_load(Path(path).read_text()) == yaml.safe_load((tracked / "tracked" / "space.yaml").read_text())


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                    reason="headless Chromium needs the Debian packages chromium and chromium-driver")
def test_the_study_pareto_html_shows_each_feasible_trial_once_in_chromium(tracked: Path, tmp_path: Path) -> None:
    browser = WebDriver(tmp_path / "profile")
    try:
        browser.open((tracked / "tracked" / "pareto.html").as_uri())
        views = browser.script(READ_PLOTS)
        shot = browser.screenshot(tmp_path / "tracked-pareto-html.png")
    finally:
        browser.close()
    save_artifact(shot)
    trials = pd.read_csv(tracked / "tracked" / "trials.csv")
    feasible = sorted(trials.loc[(trials["state"] == "finished") & trials["feasible"], "number"])
    assert len(views) == 4 and all(v["rendered"] for v in views) and feasible
    for view in views:
        traces = {t["name"]: t["trials"] for t in view["traces"]}
        assert sorted(traces["pareto front"] + traces["feasible"]) == feasible
