from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from autoprune.errors import AutopruneError
from autoprune.scorers import SCORERS, make_scorer
from autoprune.scorers.entropy import channel_entropy


def linear(weight: list[list[float]], bias: list[float] | None = None) -> nn.Linear:
    w = torch.tensor(weight)
    layer = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(w)
        if bias is not None:
            layer.bias.copy_(torch.tensor(bias))
    return layer


def hand_gradient(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∂ mean-CE / ∂W for logits = x Wᵀ + b, written out: (softmax − onehot)ᵀ x / N."""
    p = torch.softmax(x @ weight.T + bias, dim=1)
    return (p - F.one_hot(y, weight.shape[0]).float()).T @ x / x.shape[0]


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 3),
    )


def cnn_data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 1, 4, 4, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(2)]


def test_magnitude_ranks_by_absolute_value():
    layer = linear([[0.1, -3.0, 2.0]])
    scores = make_scorer("magnitude").weight_scores(layer, {"fc": layer})
    assert scores["fc"][0].argsort().tolist() == [0, 2, 1]


def test_magnitude_channel_score_is_filter_l1_norm():
    layer = linear([[3.0, 4.0], [1.0, -1.0], [0.0, 6.0]])
    assert make_scorer("magnitude")(layer, {"fc": layer})["fc"].tolist() == [7.0, 2.0, 6.0]


def test_l2_channel_score_is_filter_l2_norm():
    layer = linear([[3.0, 4.0], [1.0, -1.0], [0.0, 6.0]])
    scores = make_scorer("l2")(layer, {"fc": layer})["fc"]
    assert torch.allclose(scores, torch.tensor([5.0, math.sqrt(2), 6.0]))
    assert scores.argsort().tolist() == [1, 0, 2]  # L1 would rank [1, 2, 0]


def test_random_is_seeded_and_reproducible():
    model = small_cnn()
    layers = {"conv": model[0], "fc": model[5]}
    first = make_scorer("random", {"seed": 3}).weight_scores(model, layers)
    again = make_scorer("random", {"seed": 3.0}).weight_scores(model, layers)
    other = make_scorer("random", {"seed": 4}).weight_scores(model, layers)
    assert all(torch.equal(first[n], again[n]) for n in layers)
    assert not torch.equal(first["fc"], other["fc"])
    assert first["conv"].shape == model[0].weight.shape and 0 <= first["conv"].min() < 1
    assert make_scorer("random")(model, layers)["fc"].shape == (3,)


def test_gradient_is_mean_absolute_per_batch_gradient():
    layer = linear([[1.0, -2.0], [0.5, 1.0]], bias=[0.1, -0.1])
    b1 = (torch.tensor([[1.0, 2.0], [0.0, -1.0]]), torch.tensor([0, 1]))
    b2 = (torch.tensor([[-3.0, 1.0]]), torch.tensor([1]))
    scores = make_scorer("gradient").weight_scores(layer, {"fc": layer}, [b1, b2])["fc"]
    g1 = hand_gradient(layer.weight.detach(), layer.bias.detach(), *b1)
    g2 = hand_gradient(layer.weight.detach(), layer.bias.detach(), *b2)
    assert torch.allclose(scores, (2 * g1.abs() + 1 * g2.abs()) / 3, atol=1e-6)


def test_taylor_weight_and_channel_scores_match_first_order_expansion():
    layer = linear([[1.0, 1.0], [2.0, -0.5], [0.2, 0.1]], bias=[0.0, 0.0, 0.0])
    x, y = torch.tensor([[1.0, 2.0], [2.0, -1.0], [0.5, 0.5]]), torch.tensor([0, 2, 1])
    scorer = make_scorer("taylor")
    g = hand_gradient(layer.weight.detach(), layer.bias.detach(), x, y)
    w = layer.weight.detach()
    weight_scores = scorer.weight_scores(layer, {"fc": layer}, [(x, y)])["fc"]
    channel_scores = scorer(layer, {"fc": layer}, [(x, y)])["fc"]
    assert torch.allclose(weight_scores, (w * g).abs(), atol=1e-6)
    assert torch.allclose(channel_scores, (w * g).sum(1).abs(), atol=1e-6)
    assert channel_scores.argsort().tolist() == (w * g).sum(1).abs().argsort().tolist()


def test_gradient_magnitude_blends_with_lam():
    layer = linear([[1.0, -2.0], [0.5, 0.0]], bias=[0.0, 0.0])
    data = [(torch.tensor([[1.0, 2.0], [3.0, -1.0]]), torch.tensor([1, 0]))]
    g = hand_gradient(layer.weight.detach(), layer.bias.detach(), *data[0])
    scores = make_scorer("gradient_magnitude", {"lam": 2.0}).weight_scores(layer, {"fc": layer}, data)["fc"]
    expected = (layer.weight.detach().abs() + 2.0 * g.abs()) * (layer.weight.detach() != 0)
    assert torch.allclose(scores, expected, atol=1e-6)
    plain = make_scorer("gradient_magnitude", {"lam": 0}).weight_scores(layer, {"fc": layer}, data)["fc"]
    assert torch.equal(plain, layer.weight.detach().abs())


def test_activation_scores_zero_for_an_input_feature_that_is_always_zero():
    layer = linear([[1.0, -2.0, 3.0], [0.5, 1.0, -4.0]])
    x = torch.tensor([[1.0, 2.0, 0.0], [3.0, -1.0, 0.0]])
    scores = make_scorer("activation").weight_scores(layer, {"fc": layer}, [(x, torch.tensor([0, 1]))])["fc"]
    expected = layer.weight.detach().abs() * x.norm(dim=0)
    assert torch.allclose(scores, expected)
    assert scores[:, 2].tolist() == [0.0, 0.0]


def test_activation_grouped_conv_uses_each_groups_own_input_channels():
    conv = nn.Conv2d(4, 4, 3, groups=2, bias=False)
    nn.init.constant_(conv.weight, 1.0)
    x = torch.randn(2, 4, 5, 5)
    x[:, 3] = 0.0  # input channel 3 = second input of group 1 (output channels 2, 3)
    scores = make_scorer("activation").weight_scores(conv, {"c": conv}, [(x, torch.zeros(2, dtype=torch.long))])["c"]
    assert scores[2:, 1].abs().sum() == 0
    assert (scores[:2] > 0).all() and (scores[2:, 0] > 0).all()
    assert torch.allclose(scores[0, 1], x[:, 1].norm().expand(3, 3))


def test_normalized_response_is_mean_abs_response_over_sqrt_norm():
    layer = linear([[1.0, 0.0], [0.0, 4.0]], bias=[10.0, -10.0])
    x = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    scorer = make_scorer("normalized_response")
    channels = scorer(layer, {"fc": layer}, [(x, torch.tensor([0, 1]))])["fc"]
    assert torch.allclose(channels, torch.tensor([1.0 / 1.0, 4.0 / 2.0]))  # bias ignored
    weights = scorer.weight_scores(layer, {"fc": layer}, [(x, torch.tensor([0, 1]))])["fc"]
    assert torch.allclose(weights, torch.tensor([[1.0, 0.0], [0.0, 8.0]]))


def test_normalized_response_conv_averages_over_positions():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    x = torch.randn(4, 2, 5, 5)
    scores = make_scorer("normalized_response")(conv, {"c": conv}, [(x, torch.zeros(4, dtype=torch.long))])["c"]
    response = F.conv2d(x, conv.weight.detach(), padding=1).abs().mean(dim=(0, 2, 3))
    assert torch.allclose(scores, response / conv.weight.detach().flatten(1).norm(dim=1).sqrt(), atol=1e-5)


def test_entropy_ranks_a_constant_channel_lowest():
    layer = linear([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], bias=[0.0, 0.0, 0.0])
    x = torch.stack([torch.full((64,), 2.0), torch.randn(64)], dim=1)
    scores = make_scorer("entropy")(layer, {"fc": layer}, [(x, torch.zeros(64, dtype=torch.long))])["fc"]
    assert scores[0] == 0 and (scores[1:] > 0).all()
    assert scores.argmin() == 0


def test_channel_entropy_matches_hand_histogram():
    values = torch.tensor([[0.0, 5.0], [0.0, 5.0], [1.0, 5.0], [1.0, 5.0]])
    assert torch.allclose(channel_entropy(values, bins=2), torch.tensor([math.log(2), 0.0]))


def test_lamp_matches_hand_computation():
    layer = linear([[1.0, -2.0, 3.0]])
    scores = make_scorer("lamp").weight_scores(layer, {"fc": layer})["fc"][0]
    assert torch.allclose(scores, torch.tensor([1 / 14, 4 / 13, 9 / 9]))


def test_lamp_channel_scores_use_channel_norms():
    layer = linear([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])  # norms² 25, 1, 4
    scores = make_scorer("lamp")(layer, {"fc": layer})["fc"]
    assert torch.allclose(scores, torch.tensor([1.0, 1 / 30, 4 / 29]))


def test_unknown_scorer_lists_valid_names():
    with pytest.raises(AutopruneError, match="unknown scorer 'magnitud'.*valid: magnitude, l2"):
        make_scorer("magnitud")


def test_unknown_parameter_names_scorer_and_valid_params():
    with pytest.raises(AutopruneError, match="'gradient_magnitude'.*'lamb'.*valid parameters: lam"):
        make_scorer("gradient_magnitude", {"lamb": 1.0})
    with pytest.raises(AutopruneError, match="'magnitude'.*valid parameters: none"):
        make_scorer("magnitude", {"seed": 1})


def test_bad_parameter_values_are_rejected():
    with pytest.raises(AutopruneError, match="lam must be >= 0"):
        make_scorer("gradient_magnitude", {"lam": -1})
    with pytest.raises(AutopruneError, match="'seed' must be an integer"):
        make_scorer("random", {"seed": 0.5})


def test_data_scorer_without_calibration_is_an_error():
    layer = linear([[1.0]])
    with pytest.raises(AutopruneError, match="scorer 'taylor' needs calibration data"):
        make_scorer("taylor")(layer, {"fc": layer}, None)


def test_registered_names_match_class_names():
    assert len(SCORERS) == 10
    assert all(SCORERS.get(name).name == name for name in SCORERS)


@pytest.mark.parametrize("name", SCORERS.names())
def test_scoring_changes_neither_weights_nor_modes_nor_grads(name):
    model = small_cnn()
    model.train()
    model[3].eval()
    model[0].bias.requires_grad_(False)
    model[5].weight.grad = torch.ones_like(model[5].weight)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layers = {"0": model[0], "5": model[5]}
    scorer = make_scorer(name)
    weight_scores = scorer.weight_scores(model, layers, cnn_data())
    channel_scores = scorer(model, layers, cnn_data())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [m.training for m in model] == [True, True, True, False, True, True]
    assert model[0].bias.requires_grad is False and model[0].weight.requires_grad is True
    assert torch.equal(model[5].weight.grad, torch.ones_like(model[5].weight)) and model[0].weight.grad is None
    for key, layer in layers.items():
        assert weight_scores[key].shape == layer.weight.shape and (weight_scores[key] >= 0).all()
        assert channel_scores[key].shape == (layer.weight.shape[0],)


@pytest.mark.parametrize("name", [n for n in SCORERS.names() if SCORERS.get(n).zero_stays_zero])
def test_already_zero_weights_score_zero(name):
    model = small_cnn()
    with torch.no_grad():
        model[5].weight[1, :5] = 0.0
        model[0].weight[2] = 0.0
    layers = {"0": model[0], "5": model[5]}
    scores = make_scorer(name).weight_scores(model, layers, cnn_data())
    assert scores["5"][1, :5].abs().sum() == 0 and scores["0"][2].abs().sum() == 0
    assert (scores["5"][0] > 0).any()


def test_magnitude_type_scorers_are_the_expected_ones():
    keep_zeros = {n for n in SCORERS if SCORERS.get(n).zero_stays_zero}
    assert keep_zeros == set(SCORERS.names()) - {"random", "gradient"}


def test_gradients_flow_through_torch_prune_masks():
    model = small_cnn()
    prune.l1_unstructured(model[5], "weight", amount=0.5)
    layers = {"5": model[5]}
    scores = make_scorer("taylor").weight_scores(model, layers, cnn_data())["5"]
    grads = make_scorer("gradient").weight_scores(model, layers, cnn_data())["5"]
    assert (scores[model[5].weight_mask == 0] == 0).all() and (scores > 0).any()
    assert grads.abs().sum() > 0 and "weight_orig" in dict(model[5].named_parameters())
