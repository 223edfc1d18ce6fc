"""``autoprune export`` on a real study (Ray Tune, Optuna, MLflow, torch on digits).

One small study is shared by the module: its trials are queued in advance so that the study
holds, deterministically, two unstructured and one channel-pruned feasible trial, a failed
trial and an infeasible one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import optuna
import pandas as pd
import pytest
import torch
import yaml

from autoprune.cli import main
from autoprune.faults import FaultPlan
from autoprune.pick import choose_trial, rank
from autoprune.results import trials_frame
from autoprune.search import SearchOptions, run_search
from conftest import digits_space

pytestmark = pytest.mark.timeout(600)

NAME = "exp"
QUEUED = [
    {"granularity": "unstructured", "target_sparsity": 0.5},  # 0
    {"granularity": "unstructured", "target_sparsity": 0.8},  # 1
    {"granularity": "channel", "target_sparsity": 0.5},  # 2: a smaller architecture
    {"granularity": "unstructured", "target_sparsity": 0.5},  # 3: fails (FaultPlan)
    {"granularity": "unstructured", "target_sparsity": 0.99},  # 4: infeasible
]
FAILED, INFEASIBLE, CHANNEL = 3, 4, 2


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The studies folder holding the finished study ``exp`` (and its MLflow store)."""
    root = tmp_path_factory.mktemp("export-studies")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        space = digits_space(
            study={"name": NAME, "trials": 4, "sampler": "random", "seed": 0},
            objectives={"accuracy": "max", "sparsity": "max", "latency_ms": "min"},
            constraints={"accuracy_drop": 0.1},
            space={"granularity": ["unstructured", "channel"], "scorer": "magnitude", "allocation": "uniform",
                   "target_sparsity": [0.3, 0.99], "finetune": {"epochs": 0.5, "lr": 0.02}},
        )
        (root / NAME).mkdir()
        queue = optuna.create_study(storage=f"sqlite:///{root / NAME / 'optuna.db'}", study_name=NAME,
                                    directions=["maximize", "maximize", "minimize"])
        for params in QUEUED:
            queue.enqueue_trial(params)
        outcome = run_search(space, SearchOptions(studies=root, concurrency=2, quiet=True,
                                                  faults=FaultPlan(raise_on=(FAILED,))), log=lambda _: None)
        assert (outcome.finished, outcome.failed) == (4, 1)
        yield root


@pytest.fixture(scope="module")
def exports(root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The default export (registered) and the channel-pruned trial's export (not registered)."""
    out = tmp_path_factory.mktemp("exports")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        for folder, extra in (("default", []), ("channel", ["--trial", str(CHANNEL), "--no-register"])):
            with pytest.raises(SystemExit) as done:
                main(["export", "--study", NAME, "--studies", str(root), "--out", str(out / folder), *extra])
            assert done.value.code == 0
    return {"default": out / "default", "channel": out / "channel"}


def fresh_process_logits(folders: list[Path], inputs: Path, tmp: Path) -> list[torch.Tensor]:
    """Logits of each exported model, loaded with ``autoprune.load_pruned`` in a new interpreter."""
    script = (
        "import sys, torch, autoprune\n"
        "x = torch.load(sys.argv[1], weights_only=True)\n"
        "out = [autoprune.load_pruned(f)(x).detach() for f in sys.argv[3:]]\n"
        "torch.save(out, sys.argv[2])\n"
    )
    result = tmp / "logits.pt"
    done = subprocess.run([sys.executable, "-c", script, str(inputs), str(result), *map(str, folders)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return torch.load(result, weights_only=True)


def val_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    from autoprune.data import load_data

    return load_data("digits", val_fraction=0.1, seed=0).split("val")


def test_every_pareto_candidate_is_retimed_alone_after_the_search(root: Path) -> None:
    trials = pd.read_csv(root / NAME / "trials.csv").set_index("number")
    front = pd.read_csv(root / NAME / "pareto.csv")
    assert len(front) >= 2 and front["latency_ms_isolated"].notna().all()
    unstructured = front[front["policy.granularity"] == "unstructured"]["latency_ms_isolated"]
    assert unstructured.nunique() == 1  # one architecture (the dense one), timed once
    assert trials.loc[CHANNEL, "pareto"] and trials.loc[CHANNEL, "latency_ms_isolated"] > 0
    assert pd.isna(trials.loc[INFEASIBLE, "latency_ms_isolated"])  # not a candidate
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(NAME)
    runs = client.search_runs([experiment.experiment_id], "tags.`autoprune.role` = 'trial' and tags.pareto = 'true'")
    assert len(runs) == len(front)
    assert all("latency_ms_isolated" in run.data.metrics for run in runs)


def test_export_writes_artifacts_that_load_in_a_fresh_process(exports: dict[str, Path], tmp_path: Path) -> None:
    folder = exports["default"]
    assert {p.name for p in folder.iterdir()} >= {"policy.yaml", "weights.pt", "model.onnx", "metrics.json",
                                                   "MODEL_CARD.md"}
    state = torch.load(folder / "weights.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    document = yaml.safe_load((folder / "policy.yaml").read_text())
    assert {"policy", "reached", "metrics", "model", "data", "dense", "source"} <= set(document)
    assert document["source"]["autoprune_version"] and len(document["dense"]["sha256"]) == 64
    metrics = json.loads((folder / "metrics.json").read_text())
    assert 0 < metrics["test_accuracy"] <= 1 and metrics["onnx_max_abs_diff"] <= 1e-4
    assert abs(metrics["reproduction"]["accuracy_difference"]) <= 0.005
    x, y = val_inputs()
    torch.save(x, tmp_path / "x.pt")
    logits, channel_logits = fresh_process_logits([folder, exports["channel"]], tmp_path / "x.pt", tmp_path)
    assert (logits.argmax(1) == y).float().mean().item() == pytest.approx(metrics["accuracy"])
    channel_metrics = json.loads((exports["channel"] / "metrics.json").read_text())
    assert (channel_logits.argmax(1) == y).float().mean().item() == pytest.approx(channel_metrics["accuracy"])


def test_onnx_model_agrees_with_torch(exports: dict[str, Path]) -> None:
    import autoprune

    x, _ = val_inputs()
    for folder in exports.values():
        session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        onnx_logits = session.run(["logits"], {"input": x.numpy()})[0]
        torch_logits = autoprune.load_pruned(folder)(x).detach().numpy()
        assert np.abs(onnx_logits - torch_logits).max() <= 1e-4


def test_channel_export_rebuilds_the_smaller_architecture(exports: dict[str, Path]) -> None:
    import autoprune

    document = yaml.safe_load((exports["channel"] / "policy.yaml").read_text())
    channels = document["reached"]["layer_channels"]
    assert channels["classifier.0"] == 32 and channels["classifier.2"] == 16 and channels["classifier.4"] == 10
    model = autoprune.load_pruned(exports["channel"])
    assert tuple(model.classifier[0].weight.shape) == (32, 64) and tuple(model.classifier[2].weight.shape) == (16, 32)
    assert document["source"]["trial"] == CHANNEL


def test_the_export_is_registered_with_its_metrics_and_trial(root: Path, exports: dict[str, Path]) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", registry_uri=f"sqlite:///{root / 'mlflow.db'}")
    versions = client.search_model_versions(f"name = '{NAME}'")
    assert len(versions) == 1  # the channel export said --no-register
    tags = versions[0].tags
    document = yaml.safe_load((exports["default"] / "policy.yaml").read_text())
    assert tags["trial"] == str(document["source"]["trial"]) and tags["study"] == NAME
    assert float(tags["test_accuracy"]) == pytest.approx(document["metrics"]["test_accuracy"], abs=1e-5)
    assert {"accuracy", "sparsity", "latency_ms", "latency_ms_isolated", "policy"} <= set(tags)


def test_pick_keeps_matching_pareto_points_and_breaks_ties(root: Path) -> None:
    study = optuna.load_study(study_name=NAME, storage=f"sqlite:///{root / NAME / 'optuna.db'}")
    frame = trials_frame(study.get_trials(), {"accuracy": "max", "sparsity": "max", "latency_ms": "min"})
    assert choose_trial(frame, pick="sparsity>=0.7").number == 1
    kept = frame[frame["pareto"] & (frame["sparsity"] >= 0.5) & (frame["accuracy_drop"] <= 0.1)]
    assert choose_trial(frame, pick="sparsity >= 50%, accuracy_drop<=0.1").number == rank(kept).iloc[0]["number"]


def synthetic(rows: list[tuple[int, float, float, float]]) -> pd.DataFrame:
    """Pareto candidates ``(number, accuracy_drop, sparsity, latency_ms_isolated)``."""
    frame = pd.DataFrame(rows, columns=["number", "accuracy_drop", "sparsity", "latency_ms_isolated"])
    return frame.assign(accuracy=0.95 - frame["accuracy_drop"], latency_ms=1.0, state="finished", feasible=True,
                        pareto=True)


def test_default_rule_within_one_point_then_lowest_latency_then_sparsity() -> None:
    frame = synthetic([(0, 0.0, 0.5, 0.02), (1, 0.008, 0.8, 0.02), (2, 0.009, 0.7, 0.02), (3, 0.03, 0.9, 0.01)])
    assert choose_trial(frame).number == 1
    assert choose_trial(synthetic([(0, 0.02, 0.5, 0.02), (1, 0.05, 0.9, 0.01)])).number == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--study", "nope"], "--study nope: no such study"),
        (["--study", NAME, "--trial", "99"], "--trial 99: no such trial"),
        (["--study", NAME, "--trial", str(FAILED)], f"--trial {FAILED}: the trial failed (InjectedFault: injected failure"),
        (["--study", NAME, "--trial", str(INFEASIBLE)], f"--trial {INFEASIBLE}: the trial is infeasible"),
        (["--study", NAME, "--pick", "accuracy_drop<=-0.5"], "no feasible Pareto point matches; closest: trial"),
        (["--study", NAME, "--pick", "acuracy>1"], "unknown metric 'acuracy' (did you mean 'accuracy'?)"),
        (["--study", NAME, "--trial", "0", "--pick", "sparsity>0"], "give one of them, not both"),
    ],
    ids=["unknown-study", "unknown-trial", "failed-trial", "infeasible-trial", "pick-matches-nothing",
         "pick-unknown-metric", "trial-and-pick"],
)
def test_bad_input_is_one_line_and_exit_2(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         args: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as done:
        main(["export", "--studies", str(root), "--out", str(tmp_path / "out"), "--no-register", *args])
    err = capsys.readouterr().err
    assert done.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_registration_leaves_no_mlflow_uri_behind(tmp_path: Path) -> None:
    import os

    from autoprune.registration import _Fluent

    before = (os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("MLFLOW_REGISTRY_URI"))
    with _Fluent(f"sqlite:///{tmp_path / 'mlflow.db'}"):
        assert os.environ["MLFLOW_TRACKING_URI"].endswith("mlflow.db")
    assert (os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("MLFLOW_REGISTRY_URI")) == before
