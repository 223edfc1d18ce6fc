from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from autoprune.context import DenseReference, build_dense_architecture, build_setup, trial_context
from autoprune.errors import AutopruneError
from autoprune.space import load_space
from conftest import digits_space

SMALL = {"name": "mlp", "args": {"hidden": [32, 16]}, "pretrain": {"epochs": 5}}


def small(**sections: dict):
    return digits_space(SMALL, **sections)


def test_build_setup_loads_data_builds_model_and_resolves_layers() -> None:
    setup = build_setup(small())
    assert setup.data.name == "digits" and setup.data.input_shape == (1, 8, 8) and setup.data.num_classes == 10
    assert setup.model(setup.data.val_x[:3]).shape == (3, 10)
    assert [layer.name for layer in setup.layers] == ["classifier.0", "classifier.2", "classifier.4"]
    assert [layer.shape for layer in setup.layers] == [(32, 64), (16, 32), (10, 16)]
    assert setup.output_layer == "classifier.4"


def test_layer_patterns_and_exclusions_are_applied() -> None:
    layers = {"classifier.0": {"sparsity": [0.0, 0.5]}}
    setup = build_setup(small(space={"layers": layers, "exclude": ["classifier.2"]}))
    first, second, last = setup.layers
    assert first.pattern == "classifier.0" and first.sparsity.describe() == "[0, 0.5]"
    assert second.excluded and last.sparsity is None
    assert [layer.name for layer in setup.prunable] == ["classifier.0", "classifier.4"]


def test_given_data_is_used_instead_of_loading() -> None:
    first = build_setup(small())
    second = build_setup(small(), data=first.data)
    assert second.data is first.data


def test_architecture_is_seeded_by_the_study_seed() -> None:
    setup = build_setup(small())
    same = build_dense_architecture(small(), setup.data).state_dict()
    other = build_dense_architecture(small(study={"name": "t", "seed": 1}), setup.data).state_dict()
    assert all(torch.equal(v, same[k]) for k, v in setup.model.state_dict().items())
    assert not torch.equal(other["classifier.0.weight"], same["classifier.0.weight"])


@pytest.mark.parametrize(
    "change, key",
    [
        ({"model": {"name": "mlpp"}}, "model.name: unknown model 'mlpp'"),
        ({"data": {"name": "digitz"}}, "data.name: unknown dataset 'digitz'"),
        ({"space": {"layers": {"features.*": {"sparsity": [0.1, 0.5]}}}}, 'space.layers."features.*": matches no'),
        ({"space": {"exclude": ["classifier.*"]}}, "space.exclude: excludes every prunable layer"),
    ],
    ids=["model-name", "dataset-name", "layer-pattern", "all-excluded"],
)
def test_setup_errors_name_the_space_file(tmp_path: Path, change: dict, key: str) -> None:
    path = tmp_path / "my-space.yaml"
    path.write_text(yaml.safe_dump({"model": SMALL, "data": {"name": "digits"}} | change))
    with pytest.raises(AutopruneError) as error:
        build_setup(load_space(path))
    assert str(error.value).startswith(f"{path}: ")
    assert key in str(error.value)


def test_trial_context_carries_the_space_settings() -> None:
    spec = small(data={"name": "digits", "batch_size": 32, "calibration_batches": 2})
    setup = build_setup(spec)
    dense = DenseReference(state_dict=setup.model.state_dict(), accuracy=0.5, test_accuracy=None, digest="d")
    context = trial_context(setup, dense)
    assert (context.batch_size, context.calibration_batches) == (32, 2)
    assert context.latency == spec.latency and context.output_layer == "classifier.4" and context.data is setup.data


def test_dense_model_is_a_fresh_copy_with_the_dense_weights() -> None:
    setup = build_setup(small())
    weights = {k: torch.full_like(v, 0.5) for k, v in setup.model.state_dict().items()}
    context = trial_context(setup, DenseReference(state_dict=weights, accuracy=0.5, test_accuracy=None, digest="d"))
    copy = context.dense_model()
    assert copy is not context.model and torch.equal(copy.classifier[0].weight, weights["classifier.0.weight"])
    with torch.no_grad():
        copy.classifier[0].weight.zero_()
    assert torch.equal(context.dense_model().classifier[0].weight, weights["classifier.0.weight"])
