from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from autoprune.allocation import (
    ALLOCATIONS,
    AllocationWarning,
    LayerShape,
    allocate,
    channels_to_keep,
    kept_channels,
    layer_shapes,
    masks_from_scores,
)
from autoprune.errors import AutopruneError
from autoprune.scorers import make_scorer

SHAPES = {
    "conv1": LayerShape((8, 3, 3, 3)),  # 216
    "conv2": LayerShape((16, 8, 3, 3)),  # 1152
    "fc": LayerShape((10, 64)),  # 640
}


def overall(shapes: dict[str, LayerShape], sparsity: dict[str, float], skip: set[str] = frozenset()) -> float:
    kept = [n for n in shapes if n not in skip]
    return sum(sparsity[n] * shapes[n].numel for n in kept) / sum(shapes[n].numel for n in kept)


def model_layers() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {"conv1": nn.Conv2d(3, 8, 3), "conv2": nn.Conv2d(8, 16, 3), "fc": nn.Linear(64, 10)}


def random_scores(granularity: str = "unstructured") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        n: torch.rand(s.shape if granularity == "unstructured" else (s.out_channels,), generator=g)
        for n, s in SHAPES.items()
    }


def run(method: str, target: float | None = 0.6, **kwargs) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", AllocationWarning)
        return allocate(method, SHAPES, target, **kwargs)


def test_layer_shapes_from_modules():
    shapes = layer_shapes(model_layers())
    assert shapes["conv2"] == LayerShape((16, 8, 3, 3))
    assert (shapes["conv2"].numel, shapes["conv2"].out_channels, shapes["conv2"].channel_numel) == (1152, 16, 72)


def test_uniform_is_exact():
    assert run("uniform", 0.6) == {"conv1": 0.6, "conv2": 0.6, "fc": 0.6}


def test_per_layer_returns_explicit_values():
    explicit = {"conv1": 0.1, "conv2": 0.7, "fc": 0.3}
    assert run("per_layer", None, explicit=explicit) == explicit


def test_per_layer_missing_layers_are_listed():
    with pytest.raises(AutopruneError, match="no sparsity given for layers conv2, fc"):
        run("per_layer", None, explicit={"conv1": 0.5})
    assert run("per_layer", None, explicit={"conv1": 0.5}, excluded={"conv2", "fc"})["conv2"] == 0.0


def test_per_layer_unknown_layer_is_an_error():
    with pytest.raises(AutopruneError, match="'conv9' is not a prunable layer"):
        run("per_layer", None, explicit={"conv1": 0.5, "conv2": 0.5, "fc": 0.5, "conv9": 0.1})


def test_per_layer_value_above_cap_is_lowered_with_warning():
    with pytest.warns(AllocationWarning, match="lowered the sparsity of fc"):
        result = allocate("per_layer", SHAPES, None, explicit={"conv1": 0.5, "conv2": 0.5, "fc": 0.999})
    assert result["fc"] == (640 - 7) / 640


@pytest.mark.parametrize("target", [0.3, 0.8, 0.95])
def test_erk_meets_target_and_keeps_small_layers_denser(target):
    result = run("erk", target)
    assert overall(SHAPES, result) == pytest.approx(target, abs=1e-12)
    ratio = {n: sum(s.shape) / s.numel for n, s in SHAPES.items()}
    ordered = sorted(SHAPES, key=ratio.get)  # smallest ratio = most pruned
    assert result[ordered[0]] >= result[ordered[1]] >= result[ordered[2]]
    assert result["conv1"] < result["conv2"]


def test_erk_density_is_proportional_to_ratio_when_no_cap_binds():
    result = run("erk", 0.8)
    ratio = {n: sum(s.shape) / s.numel for n, s in SHAPES.items()}
    scale = {n: (1 - result[n]) / ratio[n] for n in SHAPES}
    assert max(scale.values()) == pytest.approx(min(scale.values()), rel=1e-9)


def test_erk_caps_dense_layers_and_redistributes():
    shapes = {"tiny": LayerShape((2, 2)), "big": LayerShape((100, 100))}
    result = allocate("erk", shapes, 0.1)
    assert result["tiny"] == 0.0  # ERK density would exceed 1: kept dense
    assert overall(shapes, result) == pytest.approx(0.1, abs=1e-12)


def test_global_prunes_more_where_scores_are_smaller():
    scores = random_scores()
    scores["conv2"] = scores["conv2"] * 0.1
    result = run("global", 0.5, scores=scores)
    assert result["conv2"] > result["conv1"] and result["conv2"] > result["fc"]
    removed = sum(round(result[n] * s.numel) for n, s in SHAPES.items())
    assert removed == round(0.5 * 2008)


def test_global_masks_form_one_threshold():
    scores = random_scores()
    result = run("global", 0.7, scores=scores)
    masks = masks_from_scores(scores, result)
    pruned = torch.cat([scores[n][~masks[n]] for n in SHAPES])
    kept = torch.cat([scores[n][masks[n]] for n in SHAPES])
    assert pruned.max() <= kept.min()
    assert overall(SHAPES, result) == pytest.approx(0.7, abs=len(SHAPES) / 2008)


def test_global_channel_weights_channels_by_their_size():
    scores = random_scores("channel")
    result = run("global", 0.5, scores=scores, granularity="channel")
    for name, shape in SHAPES.items():
        assert (result[name] * shape.out_channels) == pytest.approx(round(result[name] * shape.out_channels))
    tolerance = sum(s.channel_numel for s in SHAPES.values()) / 2008
    assert abs(overall(SHAPES, result) - 0.5) <= tolerance


def test_lamp_without_scores_uses_lamp_of_the_weights():
    layers = model_layers()
    lamp = make_scorer("lamp").weight_scores(nn.Sequential(), layers)
    from_weights = allocate("lamp", layers, 0.8)
    assert from_weights == allocate("global", layers, 0.8, scores=lamp)
    assert from_weights == allocate("lamp", layers, 0.8, scores=lamp)
    assert overall(SHAPES, from_weights) == pytest.approx(0.8, abs=3 / 2008)


def test_lamp_channel_granularity():
    layers = model_layers()
    channel = make_scorer("lamp")(nn.Sequential(), layers)
    result = allocate("lamp", layers, 0.5, granularity="channel", protected_channels={"fc"})
    assert result == allocate("global", layers, 0.5, scores=channel, granularity="channel", protected_channels={"fc"})
    assert result["fc"] == 0.0


@pytest.mark.parametrize("method", ["uniform", "erk", "global", "lamp"])
@pytest.mark.parametrize("granularity", ["unstructured", "channel"])
def test_min_density_keeps_every_layer_alive_at_high_target(method, granularity):
    shapes = {**SHAPES, "small": LayerShape((2, 2))}
    g = torch.Generator().manual_seed(0)
    scores = {
        n: torch.rand(s.shape if granularity == "unstructured" else (s.out_channels,), generator=g)
        for n, s in shapes.items()
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AllocationWarning)
        result = allocate(method, shapes, 0.99, scores=scores, granularity=granularity)
    for name, shape in shapes.items():
        units = shape.numel if granularity == "unstructured" else shape.out_channels
        kept = units - round(result[name] * units)
        assert kept >= max(1, math.ceil(0.01 * units))


@pytest.mark.parametrize("method", ["uniform", "erk", "global", "lamp"])
def test_excluded_layers_untouched_and_budget_met_over_the_rest(method):
    result = run(method, 0.5, scores=random_scores(), excluded={"conv1"})
    assert result["conv1"] == 0.0
    assert overall(SHAPES, result, skip={"conv1"}) == pytest.approx(0.5, abs=2 / 1792)


@pytest.mark.parametrize("method", ["uniform", "erk", "global", "lamp"])
def test_protected_output_layer_keeps_channels_and_is_left_out_of_the_budget(method):
    result = run(method, 0.4, scores=random_scores("channel"), granularity="channel", protected_channels={"fc"})
    assert result["fc"] == 0.0
    others = {name: shape for name, shape in SHAPES.items() if name != "fc"}
    tolerance = sum(s.channel_numel for s in others.values()) / sum(s.numel for s in others.values())
    assert overall(others, result) == pytest.approx(0.4, abs=tolerance)


def test_protected_channels_do_not_matter_for_unstructured():
    assert run("uniform", 0.4, protected_channels={"fc"})["fc"] == 0.4


def test_uniform_redistributes_when_a_cap_binds():
    shapes = {"small": LayerShape((2, 2)), "big": LayerShape((100, 100))}
    result = allocate("uniform", shapes, 0.8)
    assert result["small"] == 0.75  # keeps one of four weights
    assert result["big"] > 0.8 and overall(shapes, result) == pytest.approx(0.8, abs=1e-12)


def test_warning_when_target_cannot_be_met():
    shapes = {"body": LayerShape((10, 10)), "out": LayerShape((10, 1000))}
    with pytest.warns(AllocationWarning, match=r"instead of the target 0.9000.*Lower"):
        result = allocate("uniform", shapes, 0.9, granularity="channel", protected_channels={"out"}, min_density=0.5)
    assert result == {"body": 0.5, "out": 0.0}


def test_masks_remove_exactly_round_s_n_with_deterministic_ties():
    scores = {"a": torch.tensor([[0.5, 0.1, 0.5], [0.5, 0.9, 0.5]]), "b": torch.arange(10.0)}
    masks = masks_from_scores(scores, {"a": 0.5, "b": 0.25})
    assert masks["a"].tolist() == [[False, False, False], [True, True, True]]
    assert (~masks["b"]).sum() == round(0.25 * 10) and masks["b"][2:].all()


def test_channels_to_keep_sorted_and_never_empty():
    scores = {"a": torch.tensor([0.3, 0.1, 0.9, 0.2]), "b": torch.tensor([1.0, 2.0])}
    kept = channels_to_keep(scores, {"a": 0.5, "b": 1.0})
    assert kept["a"].tolist() == [0, 2]
    assert kept["b"].tolist() == [1]


def test_unknown_allocation_and_bad_arguments():
    with pytest.raises(AutopruneError, match="unknown allocation 'lamb'.*valid: per_layer"):
        ALLOCATIONS.get("lamb")
    with pytest.raises(AutopruneError, match="needs a target sparsity in"):
        allocate("uniform", SHAPES, 1.0)
    with pytest.raises(AutopruneError, match="unknown granularity 'weights'"):
        allocate("uniform", SHAPES, 0.5, granularity="weights")
    with pytest.raises(AutopruneError, match="excluded layer 'nope'"):
        allocate("uniform", SHAPES, 0.5, excluded={"nope"})


def test_per_layer_value_for_the_protected_output_layer_is_ignored_under_channel():
    explicit = {name: 0.5 for name in SHAPES}  # a space pattern such as "classifier.*" also names the output layer
    result = run("per_layer", None, explicit=explicit, granularity="channel", protected_channels={"fc"})
    assert result["fc"] == 0.0 and result["conv1"] == 0.5


def test_kept_channels_without_rounding_removes_the_rounded_share() -> None:
    assert kept_channels(64, 0.3) == 45
    assert kept_channels(10, 1.0) == 1


def test_kept_channels_rounds_to_the_nearest_multiple() -> None:
    assert kept_channels(64, 0.3, round_to=8) == 48  # 45 -> 48
    assert kept_channels(64, 0.36, round_to=8) == 40  # 41 -> 40
    assert kept_channels(64, 0.375, round_to=8) == 40  # 40 stays
    assert kept_channels(64, 0.3125, round_to=8) == 48  # 44 is halfway: keep more


def test_kept_channels_keeps_at_least_one_multiple_and_at_most_the_layer() -> None:
    assert kept_channels(64, 0.99, round_to=8) == 8
    assert kept_channels(84, 0.0, round_to=8) == 84


def test_kept_channels_leaves_narrow_layers_unrounded() -> None:
    assert kept_channels(6, 0.5, round_to=8) == 3


def test_kept_channels_rounds_up_to_respect_min_density() -> None:
    # 1024 channels, min density 5 %: at least 52 stay; 52 rounds down to 48, so 56.
    assert kept_channels(1024, 0.95, round_to=8, min_density=0.05) == 56


@pytest.mark.parametrize("args", [(0, 0.5, 1), (8, 1.5, 1), (8, 0.5, 0)])
def test_kept_channels_refuses_impossible_arguments(args) -> None:
    channels, sparsity, round_to = args
    with pytest.raises(ValueError):
        kept_channels(channels, sparsity, round_to=round_to)
