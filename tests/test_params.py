from __future__ import annotations

import pytest

from autoprune.params import parse_param


def test_scalar_is_fixed() -> None:
    param = parse_param(5, "int")
    assert param.kind == "fixed" and param.value == 5 and not param.searched


def test_two_numbers_are_a_range() -> None:
    param = parse_param([0.5, 0.98], "float")
    assert (param.kind, param.low, param.high, param.log) == ("range", 0.5, 0.98, False)


def test_mapping_range_with_log() -> None:
    param = parse_param({"low": 1e-4, "high": 0.1, "log": True}, "float")
    assert param.log and param.low == 1e-4


def test_list_of_names_is_a_choice() -> None:
    param = parse_param(["a", "b"], "name", names=["a", "b", "c"])
    assert param.kind == "choice" and param.choices == ("a", "b")


def test_numeric_choice_needs_choices_key() -> None:
    assert parse_param({"choices": [1, 2, 5]}, "int").choices == (1, 2, 5)
    with pytest.raises(ValueError, match="choices"):
        parse_param([1, 2, 5], "int")


def test_low_above_high_is_refused() -> None:
    with pytest.raises(ValueError, match="greater than high"):
        parse_param([0.9, 0.1], "float")


def test_bounds_are_enforced() -> None:
    with pytest.raises(ValueError, match=r"allowed: \[0, 1\)"):
        parse_param([0.5, 1.0], "float", minimum=0.0, maximum=1.0, maximum_inclusive=False)


def test_unknown_name_lists_allowed() -> None:
    with pytest.raises(ValueError, match="allowed: a, b"):
        parse_param("z", "name", names=["a", "b"])


def test_int_refuses_fraction() -> None:
    with pytest.raises(ValueError, match="whole number"):
        parse_param(2.5, "int")


def test_to_yaml_round_trip() -> None:
    for raw, kind in [(3, "int"), ([0.1, 0.2], "float"), ({"low": 0.1, "high": 1.0, "log": True}, "float"),
                      ([True, False], "bool"), ({"choices": [1, 4]}, "int")]:
        param = parse_param(raw, kind)
        assert parse_param(param.to_yaml(), kind) == param
