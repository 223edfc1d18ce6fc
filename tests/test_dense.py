from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import autoprune.dense as dense
from autoprune.context import StudySetup, build_setup
from autoprune.dense import check_compatible, dense_digest, load_state_dict, prepare_dense
from autoprune.errors import AutopruneError
from autoprune.paths import StudyPaths
from autoprune.space import SearchSpace
from autoprune.train import evaluate
from conftest import digits_space

SMALL = {"name": "mlp", "args": {"hidden": [32, 16]}, "pretrain": {"epochs": 5, "lr": 0.05}}


def space(*, seed: int = 0, data: dict | None = None, **model: object) -> SearchSpace:
    """The small digits space of these tests, with ``model`` keys overriding SMALL's."""
    return digits_space(
        {**SMALL, **model},
        study={"name": "t-dense", "seed": seed},
        data={"name": "digits", "batch_size": 64, **(data or {})},
    )


def prepare(spec: SearchSpace, root: Path) -> tuple[StudySetup, dense.DenseReference]:
    setup = build_setup(spec)
    return setup, prepare_dense(setup, StudyPaths(root, spec.study.name), log=lambda _: None)


@pytest.fixture
def count_training(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts calls of the dense training loop (still trains)."""
    calls: list[int] = []
    real = dense.train

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(dense, "train", counting)
    return calls


def forbid_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("the dense model was trained again")

    monkeypatch.setattr(dense, "train", fail)


def test_first_run_trains_and_caches_weights_with_their_hash(tmp_path: Path, count_training) -> None:
    setup, ref = prepare(space(), tmp_path)
    folder = tmp_path / "t-dense"
    info = json.loads((folder / "dense.json").read_text())
    assert count_training == [1]
    assert info["digest"] == ref.digest == dense_digest(setup)
    saved = torch.load(folder / "dense.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in ref.state_dict.items())


def test_dense_validation_and_test_accuracy_are_reported(tmp_path: Path) -> None:
    setup, ref = prepare(space(), tmp_path)
    info = json.loads((tmp_path / "t-dense" / "dense.json").read_text())
    assert ref.accuracy == pytest.approx(evaluate(setup.model, *setup.data.split("val")))
    assert ref.test_accuracy == pytest.approx(evaluate(setup.model, *setup.data.split("test")))
    assert (info["accuracy"], info["test_accuracy"]) == (ref.accuracy, ref.test_accuracy)
    assert ref.accuracy > 0.5


def test_same_hash_reuses_the_cache_without_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, first = prepare(space(), tmp_path)
    mtime = (tmp_path / "t-dense" / "dense.pt").stat().st_mtime_ns
    forbid_training(monkeypatch)
    _, second = prepare(space(), tmp_path)
    assert (tmp_path / "t-dense" / "dense.pt").stat().st_mtime_ns == mtime
    assert all(torch.equal(first.state_dict[k], v) for k, v in second.state_dict.items())
    assert (second.accuracy, second.test_accuracy, second.digest) == (first.accuracy, first.test_accuracy, first.digest)


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param(space(seed=1), id="seed"),
        pytest.param(space(pretrain={"epochs": 4, "lr": 0.05}), id="pretrain-epochs"),
        pytest.param(space(args={"hidden": [32, 8]}), id="model-args"),
        pytest.param(space(data={"val_fraction": 0.2}), id="val-fraction"),
    ],
)
def test_a_different_hash_retrains(tmp_path: Path, count_training, changed: SearchSpace) -> None:
    _, first = prepare(space(), tmp_path)
    _, second = prepare(changed, tmp_path)
    assert second.digest != first.digest
    assert count_training == [1, 1]
    info = json.loads((tmp_path / "t-dense" / "dense.json").read_text())
    assert info["digest"] == second.digest


class WritesMarker:
    """Unpickling this runs a shell command (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_malicious_pickle_checkpoint_is_refused_without_running_code(tmp_path: Path) -> None:
    marker, checkpoint = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save(WritesMarker(marker), checkpoint)
    setup = build_setup(space(checkpoint=str(checkpoint)))
    with pytest.raises(AutopruneError, match="weights_only") as error:
        prepare_dense(setup, StudyPaths(tmp_path, "t-dense"), log=lambda _: None)
    assert "\n" not in str(error.value) and str(checkpoint) in str(error.value)
    assert not marker.exists()
    torch.load(checkpoint, weights_only=False)  # the payload is live: loading unsafely runs it
    assert marker.exists()


def test_checkpoint_that_is_not_a_state_dict_is_refused(tmp_path: Path) -> None:
    checkpoint = tmp_path / "list.pt"
    torch.save([1, 2, 3], checkpoint)
    with pytest.raises(AutopruneError, match="is not a state dict"):
        prepare(space(checkpoint=str(checkpoint)), tmp_path)


def test_state_dict_of_another_architecture_names_the_mismatch(tmp_path: Path) -> None:
    other = build_setup(space(args={"hidden": [64, 16]})).model
    checkpoint = tmp_path / "other.pt"
    torch.save(other.state_dict(), checkpoint)
    with pytest.raises(AutopruneError, match=r"does not match the model: classifier\.0\.weight has shape \(64, 64\)"):
        prepare(space(checkpoint=str(checkpoint)), tmp_path)


def test_check_compatible_names_missing_and_unexpected_keys() -> None:
    model = build_setup(space()).model
    state = {k.replace("classifier", "body"): v for k, v in model.state_dict().items()}
    with pytest.raises(AutopruneError, match="missing classifier.0.weight.*unexpected body.0.weight"):
        check_compatible(model, state, source="ckpt.pt")


def test_missing_checkpoint_file_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(AutopruneError, match=r"test\.yaml: model\.checkpoint: .*nope\.pt: no such checkpoint file"):
        prepare(space(checkpoint=str(tmp_path / "nope.pt")), tmp_path)


def test_good_user_checkpoint_is_used_as_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trained, ref = prepare(space(), tmp_path / "trained")
    checkpoint = tmp_path / "mine.pt"
    torch.save({"state_dict": trained.model.state_dict(), "epoch": 5}, checkpoint)
    forbid_training(monkeypatch)
    setup, loaded = prepare(space(checkpoint=str(checkpoint)), tmp_path)
    assert loaded.accuracy == ref.accuracy and loaded.test_accuracy == ref.test_accuracy
    assert all(torch.equal(ref.state_dict[k], v) for k, v in loaded.state_dict.items())


def test_checkpoint_digest_follows_the_file_contents(tmp_path: Path) -> None:
    model = build_setup(space()).model
    checkpoint = tmp_path / "mine.pt"
    torch.save(model.state_dict(), checkpoint)
    setup = build_setup(space(checkpoint=str(checkpoint)))
    before = dense_digest(setup)
    torch.save({k: v + 1 for k, v in model.state_dict().items()}, checkpoint)
    assert dense_digest(setup) != before


def test_load_state_dict_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AutopruneError, match="no such checkpoint"):
        load_state_dict(tmp_path / "absent.pt")
