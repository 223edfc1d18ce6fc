"""The search driver on a real local Ray cluster, real Optuna and real torch on digits."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from autoprune.errors import AutopruneError
from autoprune.faults import FaultPlan
from autoprune.pareto import non_dominated
from autoprune.procs import command_line, descendants, process_stats
from autoprune.search import SearchOptions, run_search
from conftest import digits_space

pytestmark = pytest.mark.timeout(600)


def small_space(name: str, trials: int, **space: dict):
    section = {
        "scorer": ["magnitude", "taylor", "random"],
        "allocation": ["uniform", "global"],
        "target_sparsity": [0.3, 0.95],
        "finetune": {"epochs": [0.2, 0.6], "lr": {"low": 0.005, "high": 0.05, "log": True}},
    }
    section.update(space)
    return digits_space(
        study={"name": name, "trials": trials, "sampler": "tpe", "seed": 0},
        constraints={"accuracy_drop": 0.05},
        space=section,
    )


def load(root: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{root / name / 'optuna.db'}")


@pytest.fixture(scope="module")
def six(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A 6-trial study run two trials at a time (shared by the tests that read it)."""
    root = tmp_path_factory.mktemp("studies")
    outcome = run_search(small_space("six", 6), SearchOptions(studies=root, concurrency=2, quiet=True), log=lambda _: None)
    return root, outcome


def test_six_trials_two_at_a_time_and_an_honest_front(six) -> None:
    tmp_path, outcome = six
    assert (outcome.finished, outcome.failed, outcome.interrupted) == (6, 0, False)
    trials = pd.read_csv(tmp_path / "six" / "trials.csv")
    assert len(trials) == 6 and set(trials["state"]) == {"finished"}
    feasible = trials[trials["feasible"]]
    expected = feasible[non_dominated(feasible[["accuracy", "sparsity"]].to_numpy(), ["max", "max"])]
    front = pd.read_csv(tmp_path / "six" / "pareto.csv")
    assert sorted(front["number"]) == sorted(expected["number"]) and len(front) >= 1
    assert (tmp_path / "six" / "space.yaml").is_file() and (tmp_path / "six" / "dense.pt").is_file()
    spans = [load(tmp_path, "six").trials[i].user_attrs["worker_seconds"] for i in range(6)]
    assert max_overlap(spans) == 2


def test_pareto_command_prints_the_front(six, capsys: pytest.CaptureFixture[str]) -> None:
    from autoprune.cli import main

    root, _ = six
    with pytest.raises(SystemExit) as done:
        main(["pareto", "--study", "six", "--studies", str(root), "--csv", "--sort", "sparsity"])
    assert done.value.code == 0
    printed = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    expected = pd.read_csv(root / "six" / "pareto.csv")
    assert sorted(printed["number"]) == sorted(expected["number"])
    assert list(printed["sparsity"]) == sorted(printed["sparsity"], reverse=True)
    with pytest.raises(SystemExit) as done:
        main(["pareto", "--study", "six", "--studies", str(root)])
    assert done.value.code == 0 and "Pareto front of six" in capsys.readouterr().out


def test_pareto_command_names_unknown_studies_and_columns(six, capsys: pytest.CaptureFixture[str]) -> None:
    from autoprune.cli import main

    root, _ = six
    for argv, message in [(["--study", "nope"], "no such study"), (["--study", "six", "--sort", "bogus"], "unknown column")]:
        with pytest.raises(SystemExit) as done:
            main(["pareto", "--studies", str(root), *argv])
        err = capsys.readouterr().err
        assert done.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def max_overlap(spans: list[list[float]]) -> int:
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = best = 0
    for _, delta in events:
        running += delta
        best = max(best, running)
    return best


def test_declared_gpus_run_four_trials_at_once_on_distinct_devices(tmp_path: Path) -> None:
    outcome = run_search(small_space("gpus", 8), SearchOptions(studies=tmp_path, gpus=4, quiet=True), log=lambda _: None)
    assert outcome.finished == 8
    study = load(tmp_path, "gpus")
    devices = [t.user_attrs["device"] for t in study.trials]
    assert all(d.startswith("cpu CUDA_VISIBLE_DEVICES=") for d in devices)  # fell back to CPU
    assert {d.split("=")[1] for d in devices} == {"0", "1", "2", "3"}
    assert max_overlap([t.user_attrs["worker_seconds"] for t in study.trials]) == 4


def test_more_gpus_than_the_cluster_has_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AutopruneError, match="--gpus-per-trial 2: must be more than 0 and at most --gpus"):
        run_search(small_space("toomany", 2), SearchOptions(studies=tmp_path, gpus=1, gpus_per_trial=2, quiet=True),
                   log=lambda _: None)


def test_failing_and_nan_trials_are_recorded_and_the_study_finishes(tmp_path: Path) -> None:
    faults = FaultPlan(raise_on=(1,), nan_on=(2,))
    outcome = run_search(small_space("faults", 4), SearchOptions(studies=tmp_path, concurrency=2, quiet=True, faults=faults),
                         log=lambda _: None)
    assert (outcome.finished, outcome.failed) == (4, 2)
    trials = pd.read_csv(tmp_path / "faults" / "trials.csv").set_index("number")
    assert trials.loc[1, "state"] == "failed" and "injected failure in trial 1" in trials.loc[1, "error"]
    assert trials.loc[2, "state"] == "failed" and "diverged" in trials.loc[2, "error"]
    study = load(tmp_path, "faults")
    assert [t.state.name for t in study.trials].count("COMPLETE") == 4
    assert "diverged" in study.trials[2].user_attrs["error"]


def test_a_killed_worker_is_retried(tmp_path: Path) -> None:
    faults = FaultPlan(kill_once_on=(0,), marker_dir=str(tmp_path / "markers"))
    outcome = run_search(small_space("killed", 2), SearchOptions(studies=tmp_path, concurrency=1, retries=1, quiet=True,
                                                                 faults=faults), log=lambda _: None)
    assert (outcome.finished, outcome.failed) == (2, 0)
    assert (tmp_path / "markers" / "killed-0").exists()


def test_seed_baselines_enqueue_known_policies(tmp_path: Path) -> None:
    run_search(small_space("seeded", 3), SearchOptions(studies=tmp_path, concurrency=1, quiet=True, seed_baselines=True),
               log=lambda _: None)
    first = load(tmp_path, "seeded").trials[0]
    assert first.params["scorer"] == "magnitude" and first.params["allocation"] == "uniform"


def test_a_different_space_under_the_same_name_is_refused(tmp_path: Path) -> None:
    run_search(small_space("same", 1), SearchOptions(studies=tmp_path, concurrency=1, quiet=True), log=lambda _: None)
    with pytest.raises(AutopruneError, match="already exists with a different space"):
        run_search(small_space("same", 1, scorer="l2"), SearchOptions(studies=tmp_path, quiet=True), log=lambda _: None)


def cli_search(space_file: Path, studies: Path, log: Path, *extra: str) -> subprocess.Popen:
    """``autoprune search`` in a subprocess, its output in ``log`` (a file, so it never blocks)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "autoprune.cli", "search", "--space", str(space_file), "--studies", str(studies),
             *extra],
            stdout=out, stderr=subprocess.STDOUT, text=True, env=env,
        )


def wait_for_finished_trials(trials_csv: Path, count: int, timeout: float = 300) -> None:
    """Wait until ``trials.csv`` lists ``count`` finished trials.

    The CSV, not the Optuna database, is polled: opening ``optuna.db`` while the driver is
    still creating it races with Optuna's schema set-up.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if (pd.read_csv(trials_csv)["state"] == "finished").sum() >= count:
                return
        except (OSError, pd.errors.EmptyDataError, KeyError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"fewer than {count} trials finished in {timeout} s")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_interrupted_driver_resumes_to_exactly_the_requested_trials(tmp_path: Path, sig: signal.Signals) -> None:
    name = f"resume-{sig.name.lower()}"
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(small_space(name, 8).to_yaml_dict()))
    studies = tmp_path / "studies"
    driver = cli_search(space_file, studies, tmp_path / "first.log", "--concurrency", "2")
    wait_for_finished_trials(studies / name / "trials.csv", 3)
    driver.send_signal(sig)
    driver.wait(timeout=120)
    if sig == signal.SIGINT:
        assert driver.returncode == 130 and "--resume" in (tmp_path / "first.log").read_text()
    finished_before = len(load(studies, name).get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    assert finished_before < 8
    resumed = cli_search(space_file, studies, tmp_path / "resumed.log", "--resume", "--quiet")
    resumed.wait(timeout=400)
    assert resumed.returncode == 0, (tmp_path / "resumed.log").read_text()[-2000:]
    study = load(studies, name)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 8 and "RUNNING" not in states
    trials = pd.read_csv(studies / name / "trials.csv")
    assert trials["number"].is_unique and (trials["state"] == "finished").sum() == 8
    finished_numbers_before = {t.number for t in study.trials[: finished_before]}
    assert len(finished_numbers_before) == finished_before


def test_attach_to_an_existing_cluster(tmp_path: Path) -> None:
    ray = Path(sys.executable).parent / "ray"
    port = "6391"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([str(ray), "start", "--head", f"--port={port}", "--num-cpus=2", "--node-ip-address=127.0.0.1",
                    "--include-dashboard=false", "--disable-usage-stats"], check=True, env=env, capture_output=True)
    try:
        outcome = run_search(small_space("attached", 2), SearchOptions(studies=tmp_path, address=f"127.0.0.1:{port}",
                                                                       quiet=True), log=lambda _: None)
        assert outcome.finished == 2
        with pytest.raises(AutopruneError, match="--gpus 2: the Ray cluster has only 0 GPUs"):
            run_search(small_space("attached", 3), SearchOptions(studies=tmp_path, address=f"127.0.0.1:{port}",
                                                                 gpus=2, quiet=True), log=lambda _: None)
    finally:
        stop_cluster_on(port)


def stop_cluster_on(port: str) -> None:
    """Stop the cluster whose GCS listens on ``port`` and no other (``ray stop`` stops every cluster).

    Its GCS, raylet and log monitor name the port on their command line; the agents and
    workers are their descendants.
    """
    pattern = re.compile(rf"(--gcs[-_]address=\S*:{port}|--gcs_server_port={port})(\s|$)")  # any host: Ray may swap it
    ours = [pid for pid, _ in process_stats() if pid != os.getpid() and pattern.search(command_line(pid))]
    for pid in descendants(ours):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_a_second_driver_on_a_running_study_is_refused(tmp_path: Path) -> None:
    from autoprune.lock import StudyLock

    (tmp_path / "locked").mkdir()
    with StudyLock(tmp_path / "locked" / ".lock"):
        with pytest.raises(AutopruneError, match="the study is being run by process"):
            run_search(small_space("locked", 1), SearchOptions(studies=tmp_path, quiet=True), log=lambda _: None)
    assert sorted(p.name for p in (tmp_path / "locked").iterdir()) == []


def test_seed_baselines_respect_what_the_space_allows() -> None:
    from autoprune.search import _seed_baselines

    study = optuna.create_study(directions=["maximize", "maximize"])
    assert _seed_baselines(study, small_space("allowed", 3)) == 6
    assert _seed_baselines(optuna.create_study(directions=["maximize", "maximize"]),
                           small_space("fixed-scorer", 3, scorer="taylor")) == 0
    queued = optuna.create_study(directions=["maximize", "maximize"])
    assert _seed_baselines(queued, small_space("uniform-only", 3, allocation="uniform")) == 3
    fixed = [t.system_attrs["fixed_params"] for t in queued.get_trials()]
    assert all(set(params) == {"scorer", "target_sparsity"} for params in fixed)


def test_mlflow_updates_run_in_order_off_the_trial_path() -> None:
    import threading

    from autoprune.tracking_thread import TrackingThread

    class SlowTracker:
        def __init__(self) -> None:
            self.calls: list[tuple[str, object]] = []
            self.release = threading.Event()

        def start(self, study, dense) -> None:
            self.calls.append(("start", dense))

        def trial_done(self, trials, frame=None) -> None:
            self.release.wait(5)
            self.calls.append(("trial", len(trials)))

        def finish(self, study, *, status: str = "FINISHED") -> None:
            self.calls.append(("finish", status))

    tracker = SlowTracker()
    tracking = TrackingThread(tracker, log=lambda _: None)
    tracking.start(None, {"accuracy": 1.0})
    began = time.monotonic()
    for count in (1, 2, 3):
        tracking.trial_done(list(range(count)))
    assert time.monotonic() - began < 0.5  # the driver does not wait for MLflow
    tracker.release.set()
    tracking.finish(None, status="KILLED")  # waits for the queued updates, then ends the parent run
    assert tracker.calls == [("start", {"accuracy": 1.0}), ("trial", 1), ("trial", 2), ("trial", 3), ("finish", "KILLED")]
    assert tracking.calls == 3 and tracking.busy_seconds > 0
