"""``autoprune baselines``: the no-search references, run through run_trial at the study's budget."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from autoprune.baselines import METHODS, baseline_policy, baseline_settings, read_baselines, run_baselines
from autoprune.cli import main
from autoprune.context import build_setup, trial_context
from autoprune.dense import prepare_dense
from autoprune.errors import AutopruneError
from autoprune.paths import study_paths
from autoprune.tracking import client_for, resolve_tracking_uri
from autoprune.trial import run_trial
from tests.conftest import digits_space

SPACE = {
    "space": {
        "target_sparsity": [0.5, 0.95],
        "allocation": ["uniform", "global"],
        "finetune": {"epochs": [0.25, 0.5], "lr": {"low": 1e-3, "high": 1e-1, "log": True}},
    },
}


def quiet(_: str) -> None:
    pass


def test_budget_comes_from_the_space_most_epochs_and_middle_lr() -> None:
    settings = baseline_settings(digits_space(**SPACE))
    assert settings.epochs == 0.5
    assert settings.lr == pytest.approx(0.01)
    assert (settings.granularity, settings.schedule, settings.steps) == ("unstructured", "one_shot", 1)
    assert settings.methods == ("uniform", "global", "lamp", "erk", "random")
    assert settings.sparsities == (0.5, 0.8, 0.9, 0.95, 0.98)


def test_flags_override_the_space() -> None:
    settings = baseline_settings(digits_space(**SPACE), methods=["lamp"], sparsities=[0.7], epochs=2, lr=0.05,
                                 granularity="channel", schedule="cubic", steps=3)
    assert (settings.methods, settings.sparsities, settings.epochs, settings.lr) == (("lamp",), (0.7,), 2.0, 0.05)
    assert (settings.granularity, settings.schedule, settings.steps) == ("channel", "cubic", 3)


@pytest.mark.parametrize("kwargs, flag", [
    ({"methods": ["magnitud"]}, "--methods"),
    ({"sparsities": [1.0]}, "--sparsities"),
    ({"schedule": "weekly"}, "--schedule"),
    ({"granularity": "block"}, "--granularity"),
    ({"lr": 0.0}, "--lr"),
])
def test_bad_settings_name_the_flag(kwargs: dict, flag: str) -> None:
    with pytest.raises(AutopruneError, match=flag):
        baseline_settings(digits_space(**SPACE), **kwargs)


def test_each_method_is_its_standard_recipe() -> None:
    settings = baseline_settings(digits_space(**SPACE))
    recipes = {name: baseline_policy(settings, name, 0.9) for name in METHODS}
    assert {n: (p.scorer, p.allocation) for n, p in recipes.items()} == {
        "uniform": ("magnitude", "uniform"), "global": ("magnitude", "global"), "lamp": ("lamp", "lamp"),
        "erk": ("magnitude", "erk"), "random": ("random", "uniform"),
    }
    assert all(p.target_sparsity == 0.9 and not p.finetune.distill and p.seed == 0 for p in recipes.values())


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """Two methods × two sparsities on digits, logged to a sqlite MLflow store."""
    root = tmp_path_factory.mktemp("studies")
    space = digits_space(**SPACE)
    settings = baseline_settings(space, methods=["global", "random"], sparsities=[0.5, 0.9], epochs=0.25)
    outcome = run_baselines(space, settings, studies=root, log=quiet)
    return space, settings, root, outcome


def test_every_point_is_written_with_its_reached_sparsity(ran: tuple) -> None:
    space, _, root, outcome = ran
    frame = read_baselines(study_paths(space.study.name, root))
    assert outcome.ran == 4 and outcome.failed == 0
    assert sorted(zip(frame["method"], frame["target_sparsity"])) == [
        ("global", 0.5), ("global", 0.9), ("random", 0.5), ("random", 0.9)]
    assert (frame["state"] == "finished").all()
    assert frame["sparsity"].to_numpy() == pytest.approx(frame["target_sparsity"].to_numpy(), abs=1e-3)
    assert frame["pareto"].any()


def test_a_point_equals_run_trial_of_the_same_policy(ran: tuple) -> None:
    space, settings, root, outcome = ran
    setup = build_setup(space)
    context = trial_context(setup, prepare_dense(setup, study_paths(space.study.name, root), log=quiet))
    direct = run_trial(baseline_policy(settings, "global", 0.9), context, threads=1)
    row = outcome.frame[(outcome.frame["method"] == "global") & (outcome.frame["target_sparsity"] == 0.9)].iloc[0]
    assert row["accuracy"] == pytest.approx(direct.metrics["accuracy"])
    assert row["params_nonzero"] == direct.metrics["params_nonzero"]


def test_global_magnitude_keeps_more_accuracy_than_random_at_90_percent(ran: tuple) -> None:
    frame = ran[3].frame.set_index(["method", "target_sparsity"])
    assert frame.loc[("global", 0.9), "accuracy"] > frame.loc[("random", 0.9), "accuracy"]


def test_mlflow_has_one_baselines_run_with_a_child_per_point(ran: tuple) -> None:
    space, _, root, _ = ran
    client = client_for(resolve_tracking_uri(None, root)[0])
    experiment = client.get_experiment_by_name(space.study.name)
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`autoprune.role` = 'baselines'")
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted((c.data.params["method"], float(c.data.params["target_sparsity"])) for c in children) == [
        ("global", 0.5), ("global", 0.9), ("random", 0.5), ("random", 0.9)]
    assert all(math.isfinite(c.data.metrics["accuracy"]) for c in children)
    assert parent.info.status == "FINISHED"


def test_a_second_run_skips_done_points_and_adds_no_runs(ran: tuple) -> None:
    space, settings, root, _ = ran
    again = run_baselines(space, settings, studies=root, log=quiet)
    assert (again.ran, again.skipped) == (0, 4)
    client = client_for(resolve_tracking_uri(None, root)[0])
    experiment = client.get_experiment_by_name(space.study.name)
    children = client.search_runs([experiment.experiment_id], "tags.`autoprune.role` = 'baseline'")
    assert len(children) == 4


def test_a_crashing_point_is_recorded_failed_and_the_rest_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import autoprune.trial as trial_module

    real = trial_module.run_trial

    def crash_on_random(policy, context, **kwargs):
        if policy.scorer == "random":
            raise RuntimeError("CUDA out of memory (injected)")
        return real(policy, context, **kwargs)

    monkeypatch.setattr(trial_module, "run_trial", crash_on_random)
    space = digits_space(**SPACE)
    settings = baseline_settings(space, methods=["random", "uniform"], sparsities=[0.5], epochs=0.25)
    outcome = run_baselines(space, settings, studies=tmp_path, tracking=False, log=quiet)
    states = dict(zip(outcome.frame["method"], outcome.frame["state"]))
    assert states == {"random": "failed", "uniform": "finished"}
    assert "out of memory" in outcome.frame.set_index("method").loc["random", "error"]


def write_space(path: Path, name: str) -> Path:
    raw = {
        "study": {"name": name, "seed": 0, "trials": 2, "sampler": "random"},
        "model": {"name": "mlp", "args": {"hidden": [32, 16]}, "pretrain": {"epochs": 5, "lr": 0.05}},
        "data": {"name": "digits", "batch_size": 64},
        "latency": {"repeats": 5, "warmup": 1},
        "space": {"target_sparsity": [0.5, 0.9], "finetune": {"epochs": 0.25, "lr": 0.01}},
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def run(*args: str | Path) -> int:
    with pytest.raises(SystemExit) as exit_:
        main([str(arg) for arg in args])
    return exit_.value.code


def test_cli_baselines_are_drawn_on_the_study_plots_and_stay_there(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    space = write_space(tmp_path / "space.yaml", "t-baselines-cli")
    root = tmp_path / "studies"
    assert run("search", "--space", space, "--studies", root, "--quiet", "--no-retime") == 0
    capsys.readouterr()
    assert run("baselines", "--space", space, "--studies", root, "--methods", "uniform,erk",
               "--sparsities", "0.5,0.8") == 0
    out = capsys.readouterr().out
    assert "4 run, 0 already done, 0 failed" in out and "erk" in out
    folder = root / "t-baselines-cli"
    assert len(pd.read_csv(folder / "baselines.csv")) == 4
    page = (folder / "pareto.html").read_text()
    assert '"name":"baselines"' in page and "Baselines (black crosses): 4" in page
    assert run("search", "--space", space, "--studies", root, "--quiet", "--no-retime", "--trials", "3") == 0
    assert "Baselines (black crosses): 4" in (folder / "pareto.html").read_text()  # the search redraws them too


def test_cli_bad_methods_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    space = write_space(tmp_path / "space.yaml", "t-baselines-bad")
    assert run("baselines", "--space", space, "--studies", tmp_path / "studies", "--methods", "uniform,magic") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--methods" in err and "valid: uniform, global, lamp, erk, random" in err
    assert not (tmp_path / "studies").exists()
