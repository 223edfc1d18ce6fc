"""Tests for autoprune.models: built-ins, torchvision and user models, layer naming."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.models import (
    MODELS,
    build_model,
    example_input,
    output_layer_name,
    prunable_layers,
)

DIGITS = (1, 8, 8)


@pytest.fixture
def fixtures_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "fixtures"))


@pytest.mark.parametrize(
    ("name", "shape"),
    [("mlp", DIGITS), ("lenet5", DIGITS), ("small_cnn", DIGITS), ("resnet20", (3, 32, 32)),
     ("lenet5", (1, 28, 28)), ("small_cnn", (3, 32, 32)), ("mlp", (64,))],
)
def test_builtin_forward_gives_logits(name: str, shape: tuple[int, ...]) -> None:
    model = build_model(name, {}, shape, 10)
    out = model(example_input(shape, batch_size=4, seed=0))
    assert out.shape == (4, 10)


def test_registry_lists_builtins() -> None:
    assert MODELS.names() == ["mlp", "lenet5", "small_cnn", "resnet20"]


def test_mlp_layer_names_and_hidden_arg() -> None:
    model = build_model("mlp", {"hidden": [32, 16, 8]}, DIGITS, 10)
    layers = prunable_layers(model)
    assert list(layers) == ["classifier.0", "classifier.2", "classifier.4", "classifier.6"]
    assert [m.out_features for m in layers.values()] == [32, 16, 8, 10]
    assert layers["classifier.0"].in_features == 64
    assert output_layer_name(model) == "classifier.6"


def test_mlp_default_is_lenet_300_100() -> None:
    widths = [m.out_features for m in prunable_layers(build_model("mlp", {}, (1, 28, 28), 10)).values()]
    assert widths == [300, 100, 10]


def test_small_cnn_layer_names_and_widths() -> None:
    model = build_model("small_cnn", {"channels": [4, 6], "hidden": 12}, DIGITS, 10)
    layers = prunable_layers(model)
    assert list(layers) == ["features.0", "features.4", "classifier.0", "classifier.2"]
    assert isinstance(layers["features.0"], nn.Conv2d) and layers["features.4"].out_channels == 6
    assert layers["classifier.0"].out_features == 12
    assert output_layer_name(model) == "classifier.2"


def test_lenet5_classic_shape_on_28x28() -> None:
    layers = prunable_layers(build_model("lenet5", {}, (1, 28, 28), 10))
    assert list(layers) == ["features.0", "features.3", "classifier.0", "classifier.2", "classifier.4"]
    assert layers["classifier.0"].in_features == 16 * 5 * 5
    assert [layers[k].out_features for k in ("classifier.0", "classifier.2", "classifier.4")] == [120, 84, 10]


def test_resnet20_structure_and_width() -> None:
    model = build_model("resnet20", {}, (3, 32, 32), 10)
    layers = prunable_layers(model)
    convs = [m for m in layers.values() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 18 + 2
    assert [n for n in layers if "downsample" in n] == ["layer2.0.downsample.0", "layer3.0.downsample.0"]
    assert output_layer_name(model) == "fc"
    assert model.fc.in_features == 64
    assert build_model("resnet20", {"width": 0.5}, (3, 32, 32), 10).fc.in_features == 32


def test_torchvision_resnet18_adapts_stem_to_one_channel() -> None:
    model = build_model("torchvision:resnet18", {}, (1, 32, 32), 10)
    assert model.conv1.in_channels == 1
    assert model(example_input((1, 32, 32), batch_size=2)).shape == (2, 10)
    assert output_layer_name(model) == "fc"
    assert next(iter(prunable_layers(model))) == "conv1"


def test_torchvision_unknown_name_lists_valid() -> None:
    with pytest.raises(AutopruneError, match=r"model.name: unknown torchvision .*'resnet1'.*resnet18"):
        build_model("torchvision:resnet1", {}, (3, 32, 32), 10)


def test_user_function_receives_data_keywords(fixtures_on_path: None) -> None:
    model = build_model("user_model:build", {"width": 5}, DIGITS, 7)
    assert model(example_input(DIGITS, batch_size=3)).shape == (3, 7)
    assert prunable_layers(model)["0"].out_channels == 5


def test_user_function_without_data_keywords(fixtures_on_path: None) -> None:
    model = build_model("user_model:build_plain", {"width": 6}, DIGITS, 10)
    assert list(prunable_layers(model)) == ["1", "3"]
    assert output_layer_name(model) == "3"


@pytest.mark.parametrize(
    ("name", "match"),
    [("no_such_module_xyz:build", r"cannot import module 'no_such_module_xyz'"),
     ("user_model:missing", r"has no attribute 'missing'"),
     ("user_model:not_a_model", r"returned str, not a torch.nn.Module")],
)
def test_user_function_errors(fixtures_on_path: None, name: str, match: str) -> None:
    with pytest.raises(AutopruneError, match=match):
        build_model(name, {}, DIGITS, 10)


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(AutopruneError) as info:
        build_model("small_cnnn", {}, DIGITS, 10, where="space.yaml: ")
    message = str(info.value)
    assert message.startswith("space.yaml: model.name: unknown model 'small_cnnn'")
    assert all(n in message for n in ("mlp", "lenet5", "small_cnn", "resnet20"))


@pytest.mark.parametrize(
    ("name", "args"),
    [("small_cnn", {"chanels": [8, 16]}), ("mlp", {"hidden": "big"}), ("resnet20", {"width": -1}),
     ("torchvision:resnet18", {"no_such_arg": 1})],
)
def test_bad_args_name_model_args(name: str, args: dict[str, object]) -> None:
    with pytest.raises(AutopruneError, match=r"^s.yaml: model.args: "):
        build_model(name, args, (3, 32, 32), 10, where="s.yaml: ")


def test_args_num_classes_must_match_data() -> None:
    assert build_model("mlp", {"num_classes": 10}, DIGITS, 10) is not None
    with pytest.raises(AutopruneError, match=r"model.args.num_classes: 5 does not match"):
        build_model("mlp", {"num_classes": 5}, DIGITS, 10)


def test_conv_model_on_flat_data_is_a_user_error() -> None:
    with pytest.raises(AutopruneError, match=r"model.name: .*small_cnn.*\(C, H, W\)"):
        build_model("small_cnn", {}, (64,), 10)


def test_model_failing_on_input_shape_is_a_user_error() -> None:
    with pytest.raises(AutopruneError, match=r"fails on inputs shaped \(3, 32, 32\)"):
        build_model("torchvision:vit_b_32", {}, (3, 32, 32), 10)


def test_build_leaves_train_mode_and_bn_stats_untouched() -> None:
    model = build_model("small_cnn", {}, DIGITS, 10)
    assert model.training
    bn = model.features[1]
    assert int(bn.num_batches_tracked) == 0


def test_prunable_layers_in_registration_order() -> None:
    class Reversed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(4, 2)
            self.body = nn.Conv1d(1, 4, 3)

    model = Reversed()
    assert list(prunable_layers(model)) == ["head", "body"]
    assert output_layer_name(model) == "head"


def test_output_layer_falls_back_to_last_conv_and_errors_without_layers() -> None:
    assert output_layer_name(nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(), nn.Conv2d(2, 3, 1))) == "2"
    with pytest.raises(AutopruneError):
        output_layer_name(nn.Sequential(nn.ReLU()))


def test_example_input_zeros_or_seeded() -> None:
    assert torch.equal(example_input((2, 3), batch_size=4), torch.zeros(4, 2, 3))
    assert torch.equal(example_input((5,), seed=1), example_input((5,), seed=1))
    assert not torch.equal(example_input((5,), seed=1), example_input((5,), seed=2))
