from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from autoprune.errors import AutopruneError
from autoprune.space import load_space, parse_space

EXAMPLE = Path(__file__).resolve().parents[2] / "shared" / "space-example.yaml"
SPACES = Path(__file__).resolve().parents[1] / "search_spaces"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(AutopruneError) as info:
        load_space(write(tmp_path, text))
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "space.yaml") in message
    return message


@pytest.mark.skipif(not EXAMPLE.exists(), reason="shared/space-example.yaml not beside the repo")
def test_every_key_of_the_shared_example_parses() -> None:
    space = load_space(EXAMPLE)
    assert space.study.name == "cnn-fashion" and space.study.trials == 64
    assert space.objectives == {"accuracy": "max", "sparsity": "max", "latency_ms": "min"}
    assert space.constraints.accuracy_drop == 0.02
    assert space.model.pretrain.epochs == 3
    assert space.latency.repeats == 100
    assert space.space.granularity.choices == ("unstructured", "channel")
    assert space.space.layers["features.*"].sparsity.high == 0.95
    assert space.space.exclude == ["classifier.2"]
    assert space.space.schedule.steps.kind == "range" and space.space.schedule.steps.value_type == "int"
    assert space.space.finetune.lr.log is True
    assert space.space.finetune.distill.choices == (False, True)


def test_empty_mapping_gets_defaults(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, "{}\n"))
    assert space.data.name == "digits" and space.study.sampler == "tpe"
    assert space.objectives == {"accuracy": "max", "sparsity": "max"}


@pytest.mark.parametrize("path", sorted(SPACES.glob("*.yaml")), ids=lambda p: p.name)
def test_committed_spaces_parse_and_round_trip(path: Path) -> None:
    space = load_space(path)
    again = parse_space(yaml.safe_load(yaml.safe_dump(space.to_yaml_dict())))
    assert again.model_dump(exclude={"source"}) == space.model_dump(exclude={"source"})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AutopruneError, match="no such space file"):
        load_space(tmp_path / "nope.yaml")


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    message = error_of(tmp_path, "study:\n  name: [unclosed\nmodel: {}\n")
    assert "YAML syntax error" in message and "line 2" in message


def test_unknown_key_suggests_closest(tmp_path: Path) -> None:
    message = error_of(tmp_path, "study:\n  trails: 4\n")
    assert "study.trails" in message and "did you mean 'trials'" in message


def test_unknown_nested_key(tmp_path: Path) -> None:
    message = error_of(tmp_path, "space:\n  finetune:\n    epoch: 2\n")
    assert "space.finetune.epoch" in message and "'epochs'" in message


def test_wrong_type(tmp_path: Path) -> None:
    assert "study.trials" in error_of(tmp_path, "study:\n  trials: many\n")


def test_low_above_high_names_the_key(tmp_path: Path) -> None:
    message = error_of(tmp_path, 'space:\n  layers:\n    "features.*": {sparsity: [0.9, 0.3]}\n')
    assert 'space.layers."features.*".sparsity' in message and "greater than high" in message


def test_sparsity_outside_unit_interval(tmp_path: Path) -> None:
    message = error_of(tmp_path, "space:\n  target_sparsity: [0.5, 1.0]\n")
    assert "space.target_sparsity" in message and "[0, 1)" in message


@pytest.mark.parametrize(
    "text, key, valid",
    [
        ("space:\n  scorer: [magnitude, magnitud]\n", "space.scorer", "magnitude"),
        ("space:\n  schedule:\n    shape: cubbic\n", "space.schedule.shape", "cubic"),
        ("space:\n  allocation: erkk\n", "space.allocation", "erk"),
        ("study:\n  sampler: tpee\n", "study.sampler", "nsga2"),
        ("space:\n  granularity: filter\n", "space.granularity", "channel"),
        ("objectives:\n  acc: max\n", "objectives", "accuracy"),
    ],
)
def test_unknown_names_list_the_valid_ones(tmp_path: Path, text: str, key: str, valid: str) -> None:
    message = error_of(tmp_path, text)
    assert key in message and valid in message


def test_python_object_tags_are_refused(tmp_path: Path) -> None:
    message = error_of(tmp_path, "study: !!python/object/apply:os.system ['echo pwned']\n")
    assert "refused YAML tag" in message


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    assert "duplicate key 'study'" in error_of(tmp_path, "study: {}\nstudy: {}\n")


def test_study_name_cannot_escape_the_studies_folder(tmp_path: Path) -> None:
    assert "study.name" in error_of(tmp_path, "study:\n  name: ../../etc\n")


def test_constraint_out_of_range(tmp_path: Path) -> None:
    assert "constraints.accuracy_drop" in error_of(tmp_path, "constraints:\n  accuracy_drop: 5\n")


def test_objective_direction(tmp_path: Path) -> None:
    assert "objectives.accuracy" in error_of(tmp_path, "objectives:\n  accuracy: up\n")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    assert "mapping" in error_of(tmp_path, "- a\n- b\n")


def test_copy_of_example_is_independent_of_location(tmp_path: Path) -> None:
    shutil.copy(SPACES / "digits.yaml", tmp_path / "space.yaml")
    assert load_space(tmp_path / "space.yaml").study.name == "digits-mlp"


def test_latency_runtime_defaults_to_torch_and_lists_the_allowed_ones() -> None:
    assert parse_space({}).latency.runtime == "torch"
    assert parse_space({"latency": {"runtime": "onnxruntime"}}).latency.runtime == "onnxruntime"
    with pytest.raises(AutopruneError, match="latency.runtime: .*'torch' or 'onnxruntime'"):
        parse_space({"latency": {"runtime": "tensorrt"}})


def test_round_to_below_one_names_the_key_and_the_range() -> None:
    with pytest.raises(AutopruneError, match=r"space\.round_to: 0 is below the minimum 1; allowed: \[1, 4096\]"):
        parse_space({"space": {"granularity": "channel", "round_to": 0}})
