"""The bad-input catalogue: every bad space file, flag, policy file and checkpoint a user can
give is one line on stderr naming the file, key or flag and what is allowed, exit code 2, no
traceback, and leaves the study folder and the MLflow store exactly as they were.

One small study (2 trials on digits, tracked in the default sqlite store) is built once; every
case then runs the ``autoprune`` command against it, in-process, and a few cases run through the
real console script too.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import torch
import yaml

from autoprune.cli import main
from autoprune.models import build_model
from autoprune.search import SearchOptions, run_search
from autoprune.space import parse_space

pytestmark = pytest.mark.timeout(600)

NAME = "bad-input"
SPACE = {
    "study": {"name": NAME, "trials": 2, "sampler": "random", "seed": 0},
    "constraints": {"accuracy_drop": 0.5},
    "model": {"name": "mlp", "args": {"hidden": [32, 16]}, "pretrain": {"epochs": 5, "lr": 0.05}},
    "data": {"name": "digits", "batch_size": 64},
    "latency": {"repeats": 5, "warmup": 1},
    "space": {"scorer": "magnitude", "allocation": "uniform", "target_sparsity": [0.3, 0.7],
              "finetune": {"epochs": 0.2, "lr": 0.02}},
}
POLICY = {"granularity": "unstructured", "scorer": "magnitude", "allocation": "uniform", "target_sparsity": 0.5,
          "finetune": {"epochs": 0.2, "lr": 0.02}}


class Evil:
    """Unpickling it would run a shell command (it must never be unpickled)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


@dataclass(frozen=True)
class Study:
    """The finished study's studies folder and the bad (and good) input files next to it."""

    root: Path
    files: Path
    busy_port: int

    def fill(self, args: tuple[str, ...], out: Path) -> list[str]:
        """``args`` with ``{root}``, ``{files}``, ``{port}``, ``{dense}`` and ``{out}`` filled in."""
        values = {"root": self.root, "files": self.files, "port": self.busy_port,
                  "dense": self.root / NAME / "dense.pt", "out": out}
        return [arg.format(**values) for arg in args]


def write(path: Path, content: object) -> Path:
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
    return path


def space_with(**sections: object) -> dict:
    return {**SPACE, **sections}


def write_files(files: Path, root: Path) -> None:
    """Every input file the cases name: a good space and policy, then the bad ones."""
    write(files / "space.yaml", SPACE)
    exported = {"policy": POLICY, "model": SPACE["model"], "data": {**SPACE["data"], "seed": 0},
                "dense": {"checkpoint": str(root / NAME / "dense.pt")}}
    write(files / "exported.yaml", exported)
    write(files / "exported-no-dense.yaml", {**exported, "dense": {}})
    write(files / "exported-model.yaml", {**exported, "model": {"name": "mlpp"}})
    (files / "a-folder.yaml").mkdir()
    write(files / "out-file", "not a folder\n")
    write(files / "empty.yaml", "# nothing here\n")
    write(files / "syntax.yaml", "study: {name: x\n")
    write(files / "duplicate.yaml", "study: {name: a}\nstudy: {name: b}\n")
    write(files / "python-tag.yaml", f"study: !!python/object/apply:os.system ['touch {files / 'marker'}']\n")
    write(files / "list.yaml", "- study\n- model\n")
    (files / "binary.yaml").write_bytes(b"\xff\xfe\x00study")
    write(files / "unknown-key.yaml", space_with(modle={}))
    write(files / "wrong-type.yaml", space_with(study={**SPACE["study"], "trials": "many"}))
    write(files / "sparsity-range.yaml", space_with(space={**SPACE["space"], "target_sparsity": [0.5, 1.5]}))
    write(files / "scorer.yaml", space_with(space={**SPACE["space"], "scorer": "magnitud"}))
    write(files / "allocation.yaml", space_with(space={**SPACE["space"], "allocation": "everywhere"}))
    write(files / "schedule.yaml", space_with(space={**SPACE["space"], "schedule": {"shape": "sawtooth"}}))
    write(files / "model.yaml", space_with(model={"name": "mlpp"}))
    write(files / "dataset.yaml", space_with(data={"name": "digitz"}))
    write(files / "objective.yaml", space_with(objectives={"acuracy": "max"}))
    write(files / "study-name.yaml", space_with(study={**SPACE["study"], "name": "../escape"}))
    write(files / "differs.yaml", space_with(space={**SPACE["space"], "target_sparsity": [0.3, 0.8]}))
    write(files / "pattern.yaml", space_with(space={**SPACE["space"], "layers": {"conv*": {"sparsity": [0.1, 0.5]}}}))
    write(files / "checkpoint-space.yaml", space_with(model={**SPACE["model"], "checkpoint": str(files / "evil.pt")}))
    write(files / "checkpoint-folder.yaml",
          space_with(model={**SPACE["model"], "checkpoint": str(files / "a-folder.pt")}))

    write(files / "policy-layer.yaml", {**POLICY, "exclude": ["features.9"]})
    write(files / "policy-sparsity.yaml", {**POLICY, "target_sparsity": 1.5})
    write(files / "policy-layer-sparsity.yaml", {**POLICY, "allocation": "per_layer", "target_sparsity": None,
                                                 "layer_sparsity": {"classifier.0": 1.2}})
    write(files / "policy-per-layer.yaml", {**POLICY, "allocation": "per_layer", "target_sparsity": None})
    write(files / "policy-per-layer-fc.yaml", {**POLICY, "allocation": "per_layer", "target_sparsity": None,
                                               "layer_sparsity": {"fc": 0.5}})
    write(files / "policy-scorer.yaml", {**POLICY, "scorer": "taylorr"})
    write(files / "policy-key.yaml", {**POLICY, "sparsity": 0.5})
    write(files / "policy-empty.yaml", "")
    write(files / "bare.yaml", POLICY)

    torch.save([1.0, 2.0], files / "list.pt")
    torch.save(Evil(files / "marker"), files / "evil.pt")
    torch.save(build_model("mlp", {"hidden": [64, 16]}, (64,), 10).state_dict(), files / "shapes.pt")
    whole = (root / NAME / "dense.pt").read_bytes()
    (files / "truncated.pt").write_bytes(whole[: len(whole) // 2])
    write(files / "text.pt", "weights, honestly\n")
    (files / "a-folder.pt").mkdir()


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Study]:
    """A finished 2-trial study tracked in ``<root>/mlflow.db``, and the files the cases use."""
    root = tmp_path_factory.mktemp("bad-input-studies")
    files = tmp_path_factory.mktemp("bad-input-files")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("AUTOPRUNE_STUDIES", raising=False)
        outcome = run_search(parse_space(SPACE, source="space.yaml"),
                             SearchOptions(studies=root, concurrency=2, quiet=True), log=lambda _: None)
        assert (outcome.finished, outcome.failed) == (2, 0)
        assert (root / "mlflow.db").is_file() and (root / "mlartifacts").is_dir()
        write_files(files, root)
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            yield Study(root, files, busy.getsockname()[1])


def snapshot(root: Path) -> dict[str, tuple[int, str] | None]:
    """Every file under ``root`` (study folders and the MLflow store) → size and sha256; folders → None."""
    state: dict[str, tuple[int, str] | None] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_dir():
            state[key] = None
        else:
            data = path.read_bytes()
            state[key] = (len(data), hashlib.sha256(data).hexdigest())
    return state


OUT = "{out}"
SEARCH = ("search", "--studies", "{root}", "--quiet")
GOOD_SEARCH = (*SEARCH, "--space", "{files}/space.yaml")
TRIAL = ("trial", "--space", "{files}/space.yaml", "--studies", "{root}", "--policy")
EXPORT = ("export", "--study", NAME, "--studies", "{root}", "--out", OUT)
BASELINES = ("baselines", "--space", "{files}/space.yaml", "--studies", "{root}")
APPLY = ("apply", "--out", OUT, "--policy", "{files}/exported.yaml", "--checkpoint")

#: id → (command-line arguments, fragments the one line must contain)
CASES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # space files
    "space-missing": ((*SEARCH, "--space", "{files}/absent.yaml"), ("absent.yaml: no such space file",)),
    "space-is-a-folder": ((*SEARCH, "--space", "{files}/a-folder.yaml"), ("a-folder.yaml: is a directory",)),
    "space-empty": ((*SEARCH, "--space", "{files}/empty.yaml"), ("empty.yaml", "empty", "{{}}")),
    "space-not-utf8": ((*SEARCH, "--space", "{files}/binary.yaml"), ("binary.yaml: cannot read: not UTF-8 text", "a space file is a UTF-8 YAML file")),
    "space-yaml-syntax": ((*SEARCH, "--space", "{files}/syntax.yaml"), ("syntax.yaml: YAML syntax error: line",)),
    "space-duplicate-key": ((*SEARCH, "--space", "{files}/duplicate.yaml"),
                            ("duplicate.yaml", "duplicate key 'study'")),
    "space-python-tag": ((*SEARCH, "--space", "{files}/python-tag.yaml"),
                         ("python-tag.yaml", "refused YAML tag", "python/object/apply:os.system")),
    "space-not-a-mapping": ((*SEARCH, "--space", "{files}/list.yaml"), ("list.yaml", "mapping of sections", "list")),
    "space-unknown-key": ((*SEARCH, "--space", "{files}/unknown-key.yaml"),
                          ("unknown-key.yaml: modle: unknown key (did you mean 'model'?); allowed: study",)),
    "space-wrong-type": ((*SEARCH, "--space", "{files}/wrong-type.yaml"), ("wrong-type.yaml: study.trials", "integer")),
    "space-sparsity-out-of-range": ((*SEARCH, "--space", "{files}/sparsity-range.yaml"),
                                    ("sparsity-range.yaml: space.target_sparsity", "1.5")),
    "space-unknown-scorer": ((*SEARCH, "--space", "{files}/scorer.yaml"),
                             ("scorer.yaml: space.scorer", "'magnitud'", "magnitude, ")),
    "space-unknown-allocation": ((*SEARCH, "--space", "{files}/allocation.yaml"),
                                 ("allocation.yaml: space.allocation", "'everywhere'", "uniform")),
    "space-unknown-schedule": ((*SEARCH, "--space", "{files}/schedule.yaml"),
                               ("schedule.yaml: space.schedule.shape", "'sawtooth'", "one_shot")),
    "space-unknown-model": ((*SEARCH, "--space", "{files}/model.yaml"),
                            ("model.yaml: model.name: unknown model 'mlpp'", "mlp")),
    "space-unknown-dataset": ((*SEARCH, "--space", "{files}/dataset.yaml"),
                              ("dataset.yaml: data.name: unknown dataset 'digitz'", "digits")),
    "space-unknown-objective": ((*SEARCH, "--space", "{files}/objective.yaml"),
                                ("objective.yaml: objectives", "'acuracy'", "accuracy_drop")),
    "space-bad-study-name": ((*SEARCH, "--space", "{files}/study-name.yaml"),
                             ("study-name.yaml: study.name", "'../escape'", "letters, digits")),
    "space-differs-from-the-study": ((*SEARCH, "--space", "{files}/differs.yaml"),
                                     (f"{NAME}/space.yaml: study '{NAME}' already exists with a different space",
                                      "use --name")),
    "space-pattern-matches-nothing": ((*SEARCH, "--space", "{files}/pattern.yaml"),
                                      ("pattern.yaml", "conv*", "matches no")),
    "space-checkpoint-is-a-folder": (("trial", "--space", "{files}/checkpoint-folder.yaml", "--studies", "{root}",
                                      "--policy", "{files}/exported.yaml"),
                                     ("checkpoint-folder.yaml: model.checkpoint", "a-folder.pt: is a directory")),
    "search-checkpoint-malicious-new-study": ((*SEARCH, "--space", "{files}/checkpoint-space.yaml", "--name", "fresh"),
                                              ("model.checkpoint", "evil.pt", "refused to load")),
    "space-checkpoint-malicious": (("trial", "--space", "{files}/checkpoint-space.yaml", "--studies", "{root}",
                                    "--policy", "{files}/exported.yaml"),
                                   ("model.checkpoint", "evil.pt", "refused to load")),
    # flags
    "flag-unknown": ((*GOOD_SEARCH, "--gpu", "1"), ("No such option: --gpu",)),
    "flag-unknown-command": (("serach",), ("No such command 'serach'",)),
    "flag-studies-is-a-file": (("search", "--space", "{files}/space.yaml", "--studies", "{files}/out-file", "--quiet",
                                "--no-tracking"), ("--studies {files}/out-file: exists and is not a folder",)),
    "flag-trials-zero": ((*GOOD_SEARCH, "--trials", "0"), ("'--trials'", "greater than or equal to 1")),
    "flag-trials-above-limit": ((*GOOD_SEARCH, "--trials", "200000"), ("'--trials'", "less than or equal to 100000")),
    "flag-gpus-negative": ((*GOOD_SEARCH, "--gpus", "-1"), ("--gpus -1: must be 0",)),
    "flag-gpus-per-trial-above-gpus": ((*GOOD_SEARCH, "--gpus", "2", "--gpus-per-trial", "3"),
                                       ("--gpus-per-trial 3: must be more than 0 and at most --gpus (2)",)),
    "flag-cpus-per-trial-zero": ((*GOOD_SEARCH, "--cpus-per-trial", "0"), ("--cpus-per-trial 0: must be more than 0",)),
    "flag-gpus-not-a-number": ((*GOOD_SEARCH, "--gpus", "two"), ("'--gpus'", "a valid number")),
    "flag-unknown-sampler": ((*GOOD_SEARCH, "--sampler", "nope"),
                             ("--sampler nope: unknown sampler 'nope'", "tpe, nsga2")),
    "flag-bad-name": ((*GOOD_SEARCH, "--name", "a/b"), ("--name 'a/b': not a valid study name", "letters, digits")),
    "flag-tracking-uri-no-scheme": ((*GOOD_SEARCH, "--tracking-uri", "mlflow.db"),
                                    ("--tracking-uri mlflow.db: not a tracking URI; use sqlite:///",)),
    "flag-tracking-uri-bad-scheme": ((*GOOD_SEARCH, "--tracking-uri", "ftp://host/mlflow"),
                                     ("--tracking-uri ftp://host/mlflow: unsupported scheme 'ftp'", "sqlite:///")),
    "pareto-unknown-study": (("pareto", "--studies", "{root}", "--study", "nosuch"),
                             ("--study nosuch: no such study", f"studies there: {NAME}")),
    "pareto-unknown-sort": (("pareto", "--studies", "{root}", "--study", NAME, "--sort", "nosuchmetric"),
                            ("--sort nosuchmetric: unknown column; sortable:", "accuracy")),
    "export-unknown-trial": ((*EXPORT, "--trial", "99"), ("--trial 99: no such trial; the study has trials 0–1",)),
    "export-pick-unknown-metric": ((*EXPORT, "--pick", "bogus>1"),
                                   ("--pick 'bogus>1': unknown metric 'bogus'", "accuracy")),
    "export-pick-syntax": ((*EXPORT, "--pick", "accuracy >> 1"), ("--pick 'accuracy >> 1'", "expected a number")),
    "export-trial-and-pick": ((*EXPORT, "--trial", "0", "--pick", "accuracy>0"), ("--trial and --pick: give one",)),
    "export-out-is-a-file": (("export", "--study", NAME, "--studies", "{root}", "--out", "{files}/out-file"),
                             ("--out", "out-file", "not a folder")),
    "export-tracking-uri-no-scheme": ((*EXPORT, "--tracking-uri", "mlflow.db"),
                                      ("--tracking-uri mlflow.db: not a tracking URI",)),
    "export-tracking-server-unreachable": ((*EXPORT, "--tracking-uri", "http://127.0.0.1:1"),
                                           ("--tracking-uri http://127.0.0.1:1: cannot reach the MLflow server",
                                            "--no-tracking")),
    "retime-tracking-uri-no-scheme": (("retime", "--study", NAME, "--studies", "{root}", "--force",
                                       "--tracking-uri", "mlflow.db"),
                                      ("--tracking-uri mlflow.db: not a tracking URI",)),
    "ui-port-out-of-range": (("ui", "--studies", "{root}", "--port", "70000"),
                             ("'--port'", "less than or equal to 65535")),
    "ui-port-busy": (("ui", "--studies", "{root}", "--port", "{port}"), ("--port {port}: cannot listen on 127.0.0.1",)),
    "ui-unknown-study": (("ui", "--studies", "{root}", "--study", "nosuch"),
                         ("--study nosuch: no such study in the MLflow store", f"studies there: {NAME}")),
    "ui-store-missing": (("ui", "--studies", "{root}", "--tracking-uri", "sqlite:///{files}/nowhere/mlflow.db"),
                         ("--tracking-uri sqlite:///{files}/nowhere/mlflow.db: no MLflow store at",)),
    "baselines-sparsity-out-of-range": ((*BASELINES, "--sparsities", "0.5,1.5"),
                                        ("--sparsities 1.5: each sparsity must be in [0, 1)",)),
    "baselines-sparsities-not-numbers": ((*BASELINES, "--sparsities", "half,most"),
                                         ("--sparsities 'half,most': expected comma-separated numbers",)),
    "baselines-unknown-method": ((*BASELINES, "--methods", "uniform,lamb"), ("--methods: unknown", "'lamb'", "lamp")),
    "baselines-tracking-uri-bad-scheme": ((*BASELINES, "--tracking-uri", "s3://bucket/mlflow"),
                                          ("--tracking-uri s3://bucket/mlflow: unsupported scheme 's3'",)),
    # policy files
    "policy-missing": ((*TRIAL, "{files}/absent-policy.yaml"), ("absent-policy.yaml: no such policy file",)),
    "policy-empty": ((*TRIAL, "{files}/policy-empty.yaml"), ("policy-empty.yaml: empty policy file", "granularity, scorer")),
    "policy-unknown-key": ((*TRIAL, "{files}/policy-key.yaml"),
                           ("policy-key.yaml: sparsity: unknown key", "allowed: granularity, ")),
    "policy-unknown-layer": ((*TRIAL, "{files}/policy-layer.yaml"),
                             ("policy-layer.yaml: exclude: layer 'features.9' is not a prunable layer",
                              "prunable layers: classifier.0")),
    "policy-sparsity-above-one": ((*TRIAL, "{files}/policy-sparsity.yaml"),
                                  ("policy-sparsity.yaml: target_sparsity", "less than 1")),
    "policy-layer-sparsity-above-one": ((*TRIAL, "{files}/policy-layer-sparsity.yaml"),
                                        ("policy-layer-sparsity.yaml: layer_sparsity", "'classifier.0'", "[0, 1)")),
    "policy-per-layer-without-layers": ((*TRIAL, "{files}/policy-per-layer.yaml"),
                                        ("policy-per-layer.yaml: allocation per_layer needs layer_sparsity",)),
    "policy-per-layer-unknown-layer": ((*TRIAL, "{files}/policy-per-layer-fc.yaml"),
                                       ("policy-per-layer-fc.yaml: layer_sparsity: layer 'fc' is not a prunable layer",)),
    "policy-unknown-scorer": ((*TRIAL, "{files}/policy-scorer.yaml"),
                              ("policy-scorer.yaml: scorer: unknown scorer 'taylorr' (did you mean 'taylor'?)",
                               "magnitude, ")),
    "policy-bare-for-apply": (("apply", "--out", OUT, "--policy", "{files}/bare.yaml"),
                              ("bare.yaml: a bare policy; apply needs an exported policy.yaml",)),
    # checkpoints
    "checkpoint-missing": ((*APPLY, "{files}/absent.pt"), ("absent.pt: no such checkpoint",)),
    "checkpoint-is-a-folder": ((*APPLY, "{files}/a-folder.pt"),
                               ("a-folder.pt: is a directory, expected a checkpoint file",)),
    "checkpoint-not-a-state-dict": ((*APPLY, "{files}/list.pt"), ("list.pt: checkpoint is not a state dict",)),
    "checkpoint-malicious-pickle": ((*APPLY, "{files}/evil.pt"),
                                    ("evil.pt: refused to load checkpoint", "weights_only=True")),
    "checkpoint-wrong-shapes": ((*APPLY, "{files}/shapes.pt"),
                                ("shapes.pt: does not match the model: classifier.0.weight has shape (64, 64)",)),
    "checkpoint-truncated": ((*APPLY, "{files}/truncated.pt"),
                             ("truncated.pt: cannot read checkpoint: not a complete file written by torch.save",)),
    "checkpoint-not-torch": ((*APPLY, "{files}/text.pt"),
                             ("text.pt: cannot read checkpoint: not a file written by torch.save",)),
    "apply-negative-epochs": ((*APPLY, "{dense}", "--epochs", "-1"), ("--epochs -1: must be between 0 and 10000",)),
    "apply-out-is-the-policy-folder": (("apply", "--out", "{files}", "--policy", "{files}/exported.yaml"),
                                       ("--out {files}: is the folder of --policy",)),
    "apply-checkpoint-not-recorded": (("apply", "--out", OUT, "--policy", "{files}/exported-no-dense.yaml"),
                                      ("--checkpoint: not given", "pass --checkpoint dense.pt")),
    "apply-unknown-model": (("apply", "--out", OUT, "--policy", "{files}/exported-model.yaml",
                             "--checkpoint", "{dense}"),
                            ("exported-model.yaml: model.name: unknown model 'mlpp'", "mlp")),
    "apply-out-is-a-file": (("apply", "--out", "{files}/out-file", "--policy", "{files}/exported.yaml"),
                            ("--out", "out-file", "not a folder")),
}


def assert_one_line(code: int, err: str, expected: tuple[str, ...]) -> None:
    assert code == 2, err
    assert err.strip() and len(err.rstrip("\n").splitlines()) == 1, err
    assert "Traceback" not in err
    for fragment in expected:
        assert fragment in err, f"{fragment!r} not in {err!r}"


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_touches_nothing(study: Study, case: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    args, expected = CASES[case]
    out = tmp_path / "out"
    before = snapshot(study.root)
    with pytest.raises(SystemExit) as done:
        main(study.fill(args, out))
    err = capsys.readouterr().err
    assert_one_line(done.value.code, err, tuple(study.fill(expected, out)))
    assert snapshot(study.root) == before
    assert not out.exists() and not (study.files / "marker").exists()


SUBPROCESS = ("space-python-tag", "checkpoint-malicious-pickle", "export-pick-unknown-metric", "flag-gpus-negative")


@dataclass(frozen=True)
class ConsoleRuns:
    """The finished console-script processes, and the studies folder before and after them."""

    done: dict[str, subprocess.CompletedProcess]
    before: dict[str, tuple[int, str] | None]
    after: dict[str, tuple[int, str] | None]


def console_out(study: Study, case: str) -> Path:
    return study.files / f"out-{case}"


@pytest.fixture(scope="module")
def console_runs(study: Study) -> ConsoleRuns:
    """The :data:`SUBPROCESS` cases, run at once through the real ``autoprune`` console script."""
    script = Path(sys.executable).parent / "autoprune"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "AUTOPRUNE_STUDIES")}
    before = snapshot(study.root)
    running = {case: subprocess.Popen([str(script), *study.fill(CASES[case][0], console_out(study, case))],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                      cwd=study.files)
               for case in SUBPROCESS}
    done = {}
    for case, process in running.items():
        out, err = process.communicate(timeout=300)
        done[case] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return ConsoleRuns(done, before, snapshot(study.root))


@pytest.mark.parametrize("case", SUBPROCESS)
def test_the_console_script_prints_one_line_and_no_traceback(study: Study, console_runs: ConsoleRuns,
                                                             case: str) -> None:
    done = console_runs.done[case]
    assert_one_line(done.returncode, done.stderr, tuple(study.fill(CASES[case][1], console_out(study, case))))
    assert console_runs.after == console_runs.before
    assert not console_out(study, case).exists() and not (study.files / "marker").exists()


def test_the_catalogue_is_at_least_thirty_distinct_cases() -> None:
    assert len(CASES) >= 30 and len({args for args, _ in CASES.values()}) == len(CASES)


def test_a_bad_tracking_uri_from_the_environment_is_refused_before_anything_is_written(
        study: Study, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "ftp://host/mlflow")
    before = snapshot(study.root)
    with pytest.raises(SystemExit) as done:
        main(study.fill(GOOD_SEARCH, tmp_path / "out"))
    assert_one_line(done.value.code, capsys.readouterr().err,
                    ("MLFLOW_TRACKING_URI=ftp://host/mlflow: unsupported scheme 'ftp'", "sqlite:///"))
    assert snapshot(study.root) == before
