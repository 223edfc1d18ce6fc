from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import autoprune.dense as dense
from autoprune.cli import main
from autoprune.context import build_setup
from autoprune.data import CIFAR10_ROOT, FASHION_MNIST_ROOT
from autoprune.space import load_space
from autoprune.suggest import search_dimensions

REPO = Path(__file__).resolve().parents[1]
SPACE_FILES = sorted((REPO / "search_spaces").glob("*.yaml"))

SMALL = {
    "study": {"name": "t-cli", "seed": 0},
    "model": {"name": "mlp", "args": {"hidden": [32, 16]}, "pretrain": {"epochs": 5, "lr": 0.05}},
    "data": {"name": "digits", "batch_size": 64},
    "latency": {"repeats": 5, "warmup": 1},
    "space": {"target_sparsity": [0.5, 0.9]},
}
POLICY = {"target_sparsity": 0.5, "finetune": {"epochs": 0.5, "lr": 0.01}}


def run(*args: str | Path) -> int:
    """``autoprune args`` in-process; returns the exit code."""
    with pytest.raises(SystemExit) as exit_:
        main([str(arg) for arg in args])
    return exit_.value.code


def write(path: Path, content: dict | str) -> Path:
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


@pytest.fixture
def small_space(tmp_path: Path) -> Path:
    return write(tmp_path / "small.yaml", SMALL)


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    return write(tmp_path / "policy.yaml", POLICY)


def missing_data(spec_path: Path) -> str | None:
    """The data root a space file needs but this machine lacks, else None."""
    data = (yaml.safe_load(spec_path.read_text()) or {}).get("data") or {}
    if data.get("name") == "fashion_mnist":
        root = Path(data.get("root") or FASHION_MNIST_ROOT).expanduser()
        return None if any(root.glob("train-images*")) else str(root)
    if data.get("name") == "cifar10":
        root = Path(data.get("root") or CIFAR10_ROOT).expanduser()
        return None if (root / "cifar-10-batches-py").is_dir() else str(root)
    return None


@pytest.mark.parametrize("path", SPACE_FILES, ids=[p.name for p in SPACE_FILES])
def test_validate_every_shipped_space(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    absent = missing_data(path)
    name = (yaml.safe_load(path.read_text()).get("data") or {}).get("name")
    if absent and name == "fashion_mnist":
        pytest.skip(f"Fashion-MNIST is not installed at {absent} (Debian package dataset-fashion-mnist)")
    code = run("validate", "--space", path)
    out, err = capsys.readouterr()
    if absent:
        assert code == 2 and err.count("\n") == 1 and "data.root" in err and absent in err
        return
    assert code == 0, err
    setup = build_setup(load_space(path))
    assert "prunable layers" in out and out.rstrip().endswith("ok")
    assert all(layer.name in out for layer in setup.layers)
    assert f"search dimensions: {len(search_dimensions(setup.space.space, setup.layers))}\n" in out


def test_validate_shows_exclusions_and_per_layer_dimensions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space = {**SMALL, "space": {"allocation": ["uniform", "per_layer"], "exclude": ["classifier.4"],
                                "layers": {"classifier.0": {"sparsity": [0.1, 0.6]}}}}
    assert run("validate", "--space", write(tmp_path / "s.yaml", space)) == 0
    out = capsys.readouterr().out
    assert "excluded layers: classifier.4" in out
    assert re.search(r"layer\.classifier\.0: \[0\.1, 0\.6\]", out)


def test_validate_shows_how_latency_is_timed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space = {**SMALL, "latency": {"runtime": "onnxruntime", "batch_size": 8, "repeats": 20}}
    assert run("validate", "--space", write(tmp_path / "s.yaml", space)) == 0
    assert "latency: onnxruntime, batch 8, 1 thread(s), median of 20 after 10 warm-up" in capsys.readouterr().out


BAD_SPACES = {
    "yaml-syntax": ("study: {name: x\n", "YAML syntax error"),
    "unknown-key": ({**SMALL, "modle": {}}, "modle: unknown key (did you mean 'model'?)"),
    "low-above-high": ({**SMALL, "space": {"target_sparsity": [0.9, 0.5]}}, "space.target_sparsity"),
    "unknown-scorer": (
        {**SMALL, "space": {"scorer": ["magnitude", "magnitud"]}}, "space.scorer: unknown value 'magnitud'"
    ),
    "unknown-model": ({**SMALL, "model": {"name": "mlpp"}}, "model.name: unknown model 'mlpp'"),
    "unknown-dataset": ({**SMALL, "data": {"name": "digitz"}}, "data.name: unknown dataset 'digitz'"),
    "pattern-matches-nothing": ({**SMALL, "space": {"layers": {"conv*": {"sparsity": [0.1, 0.5]}}}}, "matches no"),
    "all-excluded": ({**SMALL, "space": {"exclude": ["classifier.*"]}}, "excludes every prunable layer"),
    "python-tag": ("study: !!python/object/apply:os.system ['touch {marker}']\n", "refused YAML tag"),
}


def assert_one_line_error(code: int, err: str, expected: str) -> None:
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("autoprune"), err
    assert "Traceback" not in err and expected in err


@pytest.mark.parametrize("content, expected", BAD_SPACES.values(), ids=BAD_SPACES.keys())
def test_bad_space_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: dict | str, expected: str
) -> None:
    marker = tmp_path / "marker"
    if isinstance(content, str):
        content = content.replace("{marker}", str(marker))
    path = write(tmp_path / "bad.yaml", content)
    code = run("validate", "--space", path)
    err = capsys.readouterr().err
    assert_one_line_error(code, err, expected)
    assert str(path) in err and not marker.exists()


def test_missing_space_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run("validate", "--space", tmp_path / "absent.yaml")
    assert_one_line_error(code, capsys.readouterr().err, "absent.yaml: no such space file")


@pytest.mark.parametrize(
    "args, expected",
    [
        (["validate", "--spac", "x.yaml"], "No such option: --spac"),
        (["validate"], "Missing option '--space'"),
        (["trial", "--space", "x.yaml"], "Missing option '--policy'"),
        (["trial", "--space", "x.yaml", "--policy", "p.yaml", "--threads", "0"], "--threads"),
        (["bogus"], "No such command 'bogus'"),
    ],
    ids=["unknown-flag", "missing-space", "missing-policy", "bad-threads", "unknown-command"],
)
def test_bad_flags_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], args: list[str], expected: str) -> None:
    code = run(*args)
    assert_one_line_error(code, capsys.readouterr().err, expected)


@pytest.mark.parametrize(
    "policy, expected",
    [
        ({**POLICY, "bogus": 1}, "bogus: unknown key"),
        ({**POLICY, "exclude": ["features.9"]}, "'features.9' is not a prunable layer"),
        ({"allocation": "per_layer", "target_sparsity": None, "layer_sparsity": {"fc": 0.5}}, "'fc' is not a prunable"),
    ],
    ids=["unknown-key", "unknown-excluded-layer", "unknown-per-layer-layer"],
)
def test_bad_policy_is_one_line_and_exit_2(
    tmp_path: Path, small_space: Path, capsys: pytest.CaptureFixture[str], policy: dict, expected: str
) -> None:
    path = write(tmp_path / "bad-policy.yaml", policy)
    code = run("trial", "--space", small_space, "--policy", path, "--studies", tmp_path / "studies")
    assert_one_line_error(code, capsys.readouterr().err, expected)


def test_trial_prints_metrics(
    tmp_path: Path, small_space: Path, policy_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("trial", "--space", small_space, "--policy", policy_file, "--studies", tmp_path / "studies") == 0
    out = capsys.readouterr().out
    assert "dense model: training mlp" in out
    assert re.search(r"│ accuracy +│ +0\.\d{4} │", out) and re.search(r"│ sparsity +│ +0\.5000 │", out)
    assert (tmp_path / "studies" / "t-cli" / "dense.pt").is_file()


def test_trial_json_is_parseable_and_reuses_the_dense_cache(
    tmp_path: Path, small_space: Path, policy_file: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = ["trial", "--space", small_space, "--policy", policy_file, "--studies", tmp_path / "studies", "--json"]
    assert run(*args) == 0
    first = json.loads(capsys.readouterr().out)
    monkeypatch.setattr(dense, "train", lambda *a, **k: pytest.fail("the dense model was trained again"))
    assert run(*args) == 0
    second = json.loads(capsys.readouterr().out)
    assert 0 < first["metrics"]["accuracy"] <= 1 and first["metrics"]["sparsity"] == pytest.approx(0.5)
    assert set(first["layer_sparsity"]) == {"classifier.0", "classifier.2", "classifier.4"}
    assert second["metrics"]["dense_accuracy"] == first["metrics"]["dense_accuracy"]
    assert second["metrics"]["accuracy"] == first["metrics"]["accuracy"]


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--help") == 0
    out = capsys.readouterr().out
    assert "validate" in out and "trial" in out


def test_validate_help_shows_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("validate", "--help") == 0
    assert "--space" in capsys.readouterr().out


def test_trial_help_shows_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("trial", "--help") == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--space", "--policy", "--studies", "--json"))


def test_console_script_reports_a_bad_flag_in_one_line(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "autoprune"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "autoprune.cli"]
    done = subprocess.run([*command, "validate", "--spac", "x.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert_one_line_error(done.returncode, done.stderr, "No such option: --spac")
    assert done.stdout == ""
