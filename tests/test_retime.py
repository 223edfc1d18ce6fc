"""Isolated re-timing of Pareto candidates: rebuilt architectures, the study update, the front."""

from __future__ import annotations

import json
import math
import socket
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from autoprune.artifacts import rebuild_architecture
from autoprune.cli import main
from autoprune.context import TrialContext
from autoprune.pareto import non_dominated
from autoprune.paths import StudyPaths
from autoprune.policy import Policy
from autoprune.results import isolated_values, trials_frame
from autoprune.retime import RetimeOutcome, log_isolated, retime_study
from autoprune.space import load_space
from autoprune.tracking import StudyTracker, find_parent_run
from autoprune.trial import run_trial
from conftest import digits_space

NAME = "rt"
OBJECTIVES = {"accuracy": "max", "latency_ms": "min"}
DENSE = {"classifier.0": 64, "classifier.2": 32, "classifier.4": 10}
SMALL = {"classifier.0": 32, "classifier.2": 16, "classifier.4": 10}
MEDIUM = {"classifier.0": 48, "classifier.2": 24, "classifier.4": 10}


def fake_trial(accuracy: float, latency_ms: float, granularity: str, channels: dict[str, int] | None) -> optuna.trial.FrozenTrial:
    """A finished, feasible trial as the search driver records it (metrics, policy, channels)."""
    metrics = {"accuracy": accuracy, "accuracy_drop": 0.96 - accuracy, "sparsity": 0.5, "latency_ms": latency_ms}
    attrs = {"metrics": metrics, "feasible": True, "device": "cpu",
             "policy": Policy(granularity=granularity, target_sparsity=0.5).to_dict()}
    if channels is not None:
        attrs["layer_channels"] = channels
    return optuna.trial.create_trial(values=[accuracy, latency_ms], user_attrs=attrs,
                                     state=optuna.trial.TrialState.COMPLETE)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A study whose trial latencies were timed under load.

    Trial 0 (dense architecture) was timed absurdly fast, so it hides trial 2 (a channel-pruned
    architecture, slightly less accurate) from the front; timed alone, trial 0 is slower than
    trial 2's recorded latency and trial 2 joins the front.
    """
    space = digits_space(study={"name": NAME, "trials": 4, "seed": 0}, objectives=OBJECTIVES,
                         latency={"repeats": 5, "warmup": 1})
    folder = tmp_path / NAME
    folder.mkdir()
    (folder / "space.yaml").write_text(yaml.safe_dump(space.to_yaml_dict(), sort_keys=False))
    study = optuna.create_study(storage=f"sqlite:///{folder / 'optuna.db'}", study_name=NAME,
                                directions=["maximize", "minimize"])
    study.add_trial(fake_trial(0.96, 1e-6, "unstructured", DENSE))
    study.add_trial(fake_trial(0.90, 1e-7, "channel", SMALL))
    study.add_trial(fake_trial(0.95, 2e-6, "channel", MEDIUM))
    study.add_trial(fake_trial(0.96, 1e-6, "unstructured", None))  # recorded before layer_channels existed
    return tmp_path


def front_drawn(page: str) -> set[int]:
    """The trials of the "pareto front" trace in the first 2-D view of a ``pareto.html``."""
    start = page.index("[", page.index("Plotly.newPlot(", page.index('id="view-1"')))
    traces, _ = json.JSONDecoder().raw_decode(page, start)
    (front,) = [trace for trace in traces if trace["name"] == "pareto front"]
    return {int(point[0]) for point in front.get("customdata", [])}


def metrics(root: Path) -> dict[int, dict[str, float]]:
    study = optuna.load_study(study_name=NAME, storage=f"sqlite:///{root / NAME / 'optuna.db'}")
    return {t.number: t.user_attrs["metrics"] for t in study.trials}


def test_rebuilt_architecture_has_the_shapes_of_a_channel_trial(digits_ctx: TrialContext) -> None:
    policy = Policy(granularity="channel", target_sparsity=0.4, finetune={"epochs": 0.2, "lr": 0.02})
    result = run_trial(policy, digits_ctx, threads=1)
    rebuilt = rebuild_architecture(digits_ctx.dense_model(), result.layer_channels,
                                   tuple(digits_ctx.data.input_shape), output_layer=digits_ctx.output_layer)
    rebuilt.load_state_dict(result.model.state_dict())
    x = digits_ctx.data.split("val")[0][:32]
    assert torch.allclose(rebuilt.eval()(x), result.model.eval()(x))


def test_front_is_retimed_alone_until_every_front_point_has_an_isolated_latency(root: Path) -> None:
    outcome = retime_study(NAME, root, tracking=False, log=lambda _: None)
    assert 2 in outcome.timed  # joined the front once trial 0 was timed honestly
    after = metrics(root)
    assert after[0]["latency_ms_isolated"] > 2e-6 and after[2]["latency_ms_isolated"] > 0
    assert after[0]["latency_ms_isolated"] == after[3]["latency_ms_isolated"]  # one architecture, one timing
    assert after[0]["latency_ms"] == 1e-6 and math.isfinite(after[0]["speedup_isolated"])  # trial's value kept
    trials = pd.read_csv(root / NAME / "trials.csv")
    assert trials["latency_ms_isolated"].notna().all()  # every trial was on the front at some point
    honest = non_dominated(trials[["accuracy", "latency_ms_isolated"]].to_numpy(), ["max", "min"])
    assert list(trials["pareto"]) == honest
    assert sorted(pd.read_csv(root / NAME / "pareto.csv")["number"]) == sorted(trials.loc[honest, "number"])


def test_retiming_redraws_the_plots_and_replaces_the_parent_runs_tables_and_plots(root: Path) -> None:
    """The search logged the front timed under load to the parent run; the re-timed front replaces it.

    Trial 4 has trial 0's architecture and accuracy but was timed slower, so trial 0 hides it
    until both get the dense architecture's one isolated timing: then trial 4 is on the front.
    """
    uri = f"sqlite:///{root / 'mlflow.db'}"
    study = optuna.load_study(study_name=NAME, storage=f"sqlite:///{root / NAME / 'optuna.db'}")
    study.add_trial(fake_trial(0.96, 1e-5, "unstructured", DENSE))
    paths = StudyPaths(root, NAME)
    tracker = StudyTracker(load_space(paths.space), paths, uri=uri, log=lambda _: None)
    tracker.start(study, {"accuracy": 0.96, "latency_ms": 1.0})
    tracker.finish(study)
    assert 4 not in front_drawn((paths.folder / "pareto.html").read_text())
    notes: list[str] = []
    retime_study(NAME, root, tracking_uri=uri, log=notes.append)
    assert not [note for note in notes if "not updated" in note or "not redrawn" in note]
    front = pd.read_csv(paths.pareto_csv)
    assert 4 in set(front["number"]) and front["latency_ms_isolated"].notna().all()
    assert front_drawn((paths.folder / "pareto.html").read_text()) == set(front["number"])
    client = MlflowClient(tracking_uri=uri)
    parent = find_parent_run(client, client.get_experiment_by_name(NAME).experiment_id, NAME)
    logged = {name: Path(client.download_artifacts(parent.info.run_id, name, str(root / "download")))
              for name in ("trials.csv", "pareto.csv", "pareto.html", "pareto.png")}
    pd.testing.assert_frame_equal(pd.read_csv(logged["pareto.csv"]), front)
    pd.testing.assert_frame_equal(pd.read_csv(logged["trials.csv"]), pd.read_csv(paths.trials_csv))
    for name in ("pareto.html", "pareto.png"):
        assert logged[name].read_bytes() == (paths.folder / name).read_bytes()


def test_without_tracking_plots_already_drawn_are_redrawn_and_none_are_created(root: Path) -> None:
    retime_study(NAME, root, tracking=False, log=lambda _: None)
    assert not (root / NAME / "pareto.html").exists() and not (root / NAME / "pareto.png").exists()
    (root / NAME / "pareto.html").write_text("drawn before the re-timing")
    retime_study(NAME, root, force=True, tracking=False, log=lambda _: None)
    front = set(pd.read_csv(root / NAME / "pareto.csv")["number"])
    assert front_drawn((root / NAME / "pareto.html").read_text()) == front and (root / NAME / "pareto.png").is_file()


def test_candidates_already_timed_are_skipped_unless_forced(root: Path) -> None:
    retime_study(NAME, root, tracking=False, log=lambda _: None)
    assert retime_study(NAME, root, tracking=False, log=lambda _: None).timed == {}
    assert retime_study(NAME, root, force=True, tracking=False, log=lambda _: None).timed


def test_a_channel_trial_without_channels_is_skipped_with_a_reason(root: Path) -> None:
    study = optuna.load_study(study_name=NAME, storage=f"sqlite:///{root / NAME / 'optuna.db'}")
    study.add_trial(fake_trial(0.97, 1e-8, "channel", None))
    outcome = retime_study(NAME, root, tracking=False, log=lambda _: None)
    assert "without layer_channels" in outcome.skipped[4]


def test_isolated_values_replace_latency_objectives_only_where_measured() -> None:
    frame = pd.DataFrame({"number": [0, 1], "latency_ms": [1.0, 2.0], "latency_ms_isolated": [3.0, math.nan],
                          "speedup": [1.0, 1.0], "speedup_isolated": [0.5, math.nan]})
    view = isolated_values(frame, {"accuracy": "max", "latency_ms": "min"})
    assert list(view["latency_ms"]) == [3.0, 2.0] and list(view["speedup"]) == [1.0, 1.0]
    assert list(frame["latency_ms"]) == [1.0, 2.0]


def test_the_front_of_a_study_without_latency_objective_is_unchanged(root: Path) -> None:
    study = optuna.load_study(study_name=NAME, storage=f"sqlite:///{root / NAME / 'optuna.db'}")
    frame = trials_frame(study.get_trials(), {"accuracy": "max"})
    assert sorted(frame.loc[frame["pareto"], "number"]) == [0, 3]


def test_cli_retime_prints_the_front_and_refuses_an_unknown_study(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["retime", "--study", NAME, "--studies", str(root), "--no-tracking"])
    assert done.value.code == 0 and "re-timed alone" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["retime", "--study", "nope", "--studies", str(root)])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "--study nope: no such study" in err and len(err.strip().splitlines()) == 1


def test_a_tracking_server_that_is_away_costs_seconds_not_minutes(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    notes: list[str] = []
    began = time.monotonic()
    updated = log_isolated(digits_space(), StudyPaths(tmp_path, "t-digits"), RetimeOutcome(timed={0: {"latency_ms": 1.0}}),
                           tracking_uri=f"http://127.0.0.1:{port}", log=notes.append)
    assert updated == 0 and time.monotonic() - began < 10  # MLflow's own retries take about four minutes
    assert len(notes) == 1 and notes[0].startswith("retime: MLflow not updated")
