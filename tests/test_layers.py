from __future__ import annotations

import pytest
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.layers import best_pattern, resolve_layers
from autoprune.space import parse_space


def model() -> nn.Module:
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3)),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


def space(layers: dict | None = None, exclude: list | None = None):
    return parse_space({"space": {"layers": layers or {}, "exclude": exclude or []}}, source="s.yaml").space


def test_exact_name_beats_glob() -> None:
    assert best_pattern("0.0", ["0.*", "0.0", "*"]) == "0.0"


def test_more_literal_characters_win() -> None:
    assert best_pattern("features.10", ["*", "features.*", "features.1*"]) == "features.1*"


def test_first_written_wins_ties() -> None:
    assert best_pattern("a.b", ["a.?", "?.b"]) == "a.?"


def test_resolution_assigns_ranges_by_specificity() -> None:
    infos = resolve_layers(space({"0.*": {"sparsity": [0.3, 0.9]}, "0.0": {"sparsity": [0.0, 0.5]}}), model())
    by_name = {info.name: info for info in infos}
    assert list(by_name) == ["0.0", "0.2", "0.4", "2"]
    assert by_name["0.0"].sparsity.high == 0.5 and by_name["0.2"].sparsity.high == 0.9
    assert by_name["2"].sparsity is None and by_name["0.2"].shape == (8, 4, 3, 3)


def test_exclusion() -> None:
    infos = resolve_layers(space(exclude=["2"]), model())
    assert [i.name for i in infos if i.excluded] == ["2"]


def test_pattern_matching_nothing_names_the_key() -> None:
    with pytest.raises(AutopruneError, match=r's.yaml: space.layers."features.\*": matches no prunable layer; prunable layers: 0.0'):
        resolve_layers(space({"features.*": {"sparsity": 0.5}}), model(), source="s.yaml")


def test_exclude_matching_nothing() -> None:
    with pytest.raises(AutopruneError, match="space.exclude.0"):
        resolve_layers(space(exclude=["fc"]), model())


def test_excluding_everything_is_refused() -> None:
    with pytest.raises(AutopruneError, match="excludes every prunable layer"):
        resolve_layers(space(exclude=["*"]), model())
