"""``autoprune apply`` and the Python API: a policy applied to a dense checkpoint (torch on digits).

The module builds what an export leaves behind without a search: the study's dense model
(``dense.pt``), one trial run in-process with a seeded policy, and its exported folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import autoprune
from autoprune.artifacts import write_artifacts
from autoprune.cli import main
from autoprune.context import build_setup, trial_context
from autoprune.dense import prepare_dense
from autoprune.export import exported_metrics, study_document
from autoprune.models import build_model
from autoprune.paths import StudyPaths
from autoprune.policy import Policy
from autoprune.train import evaluate
from autoprune.trial import run_trial
from conftest import digits_space

POLICY = Policy(granularity="unstructured", scorer="magnitude", allocation="global", target_sparsity=0.7,
                finetune={"epochs": 0.5, "lr": 0.02}, seed=3)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A dense model cached like a study's, a trial of ``POLICY`` on it, and its exported folder."""
    root = tmp_path_factory.mktemp("apply-studies")
    space = digits_space(study={"name": "app", "seed": 0})
    setup = build_setup(space)
    paths = StudyPaths(root, "app")
    dense = prepare_dense(setup, paths, log=lambda _: None)
    context = trial_context(setup, dense)
    result = run_trial(POLICY, context, threads=1)
    test_accuracy = evaluate(result.model, *setup.data.split("test"))
    document = study_document(setup, paths, dense, result, {"study": "app", "trial": 0, "autoprune_version": "test"})
    folder = root / "export" / "trial-0"
    write_artifacts(folder, model=result.model, policy=POLICY, document=document,
                    metrics=exported_metrics(result, {}, test_accuracy=test_accuracy, dense=dense),
                    check_inputs=setup.data.split("val")[0], card="# test\n")
    return {"root": root, "folder": folder, "policy": folder / "policy.yaml", "dense": paths.dense,
            "result": result, "data": setup.data, "model": context.dense_model()}


def run_cli(*args: str) -> int:
    with pytest.raises(SystemExit) as done:
        main(["apply", *args])
    return done.value.code


def test_apply_to_the_study_checkpoint_reproduces_the_trial(exported: dict, tmp_path: Path) -> None:
    assert run_cli("--policy", str(exported["policy"]), "--out", str(tmp_path / "prod")) == 0  # default checkpoint
    metrics = json.loads((tmp_path / "prod" / "metrics.json").read_text())
    trial = exported["result"].metrics
    assert metrics["sparsity"] == trial["sparsity"]
    assert abs(metrics["accuracy"] - trial["accuracy"]) <= 0.005
    assert metrics["reproduction"]["sparsity_matches"] and 0 < metrics["test_accuracy"] <= 1
    assert metrics["onnx_max_abs_diff"] <= 1e-4
    model = autoprune.load_pruned(tmp_path / "prod")
    x, y = exported["data"].split("val")
    assert (model(x).argmax(1) == y).float().mean().item() == pytest.approx(metrics["accuracy"])


def test_apply_to_another_checkpoint_with_other_epochs(exported: dict, tmp_path: Path) -> None:
    production = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
                  for k, v in exported["model"].state_dict().items()}
    torch.save(production, tmp_path / "production.pt")
    assert run_cli("--policy", str(exported["policy"]), "--checkpoint", str(tmp_path / "production.pt"),
                   "--epochs", "0", "--out", str(tmp_path / "prod")) == 0
    document = yaml.safe_load((tmp_path / "prod" / "policy.yaml").read_text())
    assert document["source"]["epochs"] == 0 and "reproduction" not in document["metrics"]
    assert document["dense"]["checkpoint"] == str((tmp_path / "production.pt").resolve())
    assert document["reached"]["sparsity"] == pytest.approx(0.7, abs=0.01)


def test_python_api_loads_and_applies_a_policy(exported: dict) -> None:
    policy = autoprune.load_policy(exported["policy"])
    assert policy == POLICY
    result = autoprune.apply_policy(exported["model"], policy, exported["data"], batch_size=64)
    assert result.metrics["sparsity"] == exported["result"].metrics["sparsity"]
    assert abs(result.metrics["accuracy"] - exported["result"].metrics["accuracy"]) <= 0.005
    from_file = autoprune.apply_policy(exported["model"], exported["policy"], epochs=0)  # data from the file
    assert from_file.metrics["sparsity"] == pytest.approx(0.7, abs=0.01)


def test_python_api_refuses_a_model_the_policy_was_not_made_for(exported: dict) -> None:
    other = build_model("mlp", {"hidden": [64, 32, 16]}, (64,), 10)
    with pytest.raises(autoprune.errors.AutopruneError, match="its layers do not match the model"):
        autoprune.apply_policy(other, exported["policy"])


def bad_files(exported: dict, tmp: Path) -> dict[str, list[str]]:
    """Each bad input of ``autoprune apply`` as command-line arguments."""
    torch.save([1.0, 2.0], tmp / "list.pt")
    torch.save(build_model("mlp", {"hidden": [128, 32]}, (64,), 10).state_dict(), tmp / "other.pt")
    document = yaml.safe_load(exported["policy"].read_text())
    document["reached"]["layer_sparsity"]["classifier.9"] = document["reached"]["layer_sparsity"].pop("classifier.2")
    (tmp / "renamed.yaml").write_text(yaml.safe_dump(document))
    (tmp / "bare.yaml").write_text(POLICY.to_yaml())
    policy = str(exported["policy"])
    return {
        "not-a-state-dict": ["--policy", policy, "--checkpoint", str(tmp / "list.pt")],
        "other-model": ["--policy", policy, "--checkpoint", str(tmp / "other.pt")],
        "layers-mismatch": ["--policy", str(tmp / "renamed.yaml"), "--checkpoint", str(exported["dense"])],
        "bare-policy": ["--policy", str(tmp / "bare.yaml")],
        "missing-checkpoint": ["--policy", policy, "--checkpoint", str(tmp / "nope.pt")],
    }


MESSAGES = {
    "not-a-state-dict": "checkpoint is not a state dict",
    "other-model": "does not match the model: classifier.0.weight has shape (128, 64)",
    "layers-mismatch": "its layers do not match the model: layer 'classifier.9' is not a prunable layer",
    "bare-policy": "a bare policy; apply needs an exported policy.yaml",
    "missing-checkpoint": "nope.pt: no such checkpoint",
}


@pytest.mark.parametrize("case", sorted(MESSAGES))
def test_bad_input_is_one_line_and_exit_2(exported: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         case: str) -> None:
    code = run_cli(*bad_files(exported, tmp_path)[case], "--out", str(tmp_path / "out"))
    err = capsys.readouterr().err
    assert code == 2 and MESSAGES[case] in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
