"""Tests for autoprune.prune: weight masks through finetuning, physical channel removal."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.models import build_model, output_layer_name, prunable_layers
from autoprune.prune import (
    apply_masks,
    attach_optimizer,
    current_masks,
    dense_weight,
    is_masked,
    remove_channels,
    remove_masks,
    zero_channels,
)


def small_cnn() -> nn.Module:
    """conv-bn-relu-pool x2, flatten, Linear, ReLU, Linear; for (1, 8, 8) inputs."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(6 * 2 * 2, 8), nn.ReLU(), nn.Linear(8, 3),
    )


class Block(nn.Module):
    def __init__(self, inp: int, out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inp, out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out)
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.shortcut = nn.Sequential()
        if stride != 1 or inp != out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class TinyResNet(nn.Module):
    """Stem, a 2-block stage of width 4, a strided stage of width 8 with a 1x1 shortcut, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.layer1 = nn.Sequential(Block(4, 4, 1), Block(4, 4, 1))
        self.layer2 = nn.Sequential(Block(4, 8, 2))
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(self.layer2(self.layer1(x)).mean((2, 3)))


def layers_of(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def random_masks(layers: dict[str, nn.Module], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(m.weight.shape, generator=g) > 0.5 for n, m in layers.items()}


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine terms, so wrong channel bookkeeping shows."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))
    return model


OPTIMIZERS = {
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
    "adam_wd": lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=1e-2),
}


@pytest.mark.parametrize("opt", OPTIMIZERS)
def test_static_masks_stay_exact_zero_through_optimizer_steps(opt: str) -> None:
    torch.manual_seed(0)
    model = small_cnn()
    layers = layers_of(model)
    optimizer = OPTIMIZERS[opt](model.parameters())
    train_steps(model, optimizer, 3)  # momentum / Adam moments built up while dense
    masks = random_masks(layers)
    apply_masks(layers, masks)
    attach_optimizer(layers, optimizer)
    before = {n: dense_weight(m).detach().clone() for n, m in layers.items()}
    train_steps(model, optimizer, 5)
    for name, module in layers.items():
        pruned = ~masks[name]
        assert torch.all(module.weight[pruned] == 0)
        assert torch.all(module.weight_orig[pruned] == 0)
        assert not torch.equal(module.weight_orig[masks[name]], before[name][masks[name]])


def test_forward_sees_zeros_even_without_enforcement() -> None:
    torch.manual_seed(0)
    model = small_cnn()
    layers = layers_of(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_steps(model, optimizer, 2)
    masks = random_masks(layers)
    apply_masks(layers, masks)
    train_steps(model, optimizer, 2)
    conv = layers["0"]
    assert torch.any(conv.weight_orig[~masks["0"]] != 0)  # momentum moved the dense weight
    model(torch.randn(2, 1, 8, 8))
    assert torch.all(conv.weight[~masks["0"]] == 0)


def test_dynamic_mode_trains_masked_weights_and_lets_them_return() -> None:
    torch.manual_seed(0)
    model = small_cnn()
    layers = layers_of(model)
    masks = random_masks(layers)
    apply_masks(layers, masks, dynamic=True)
    before = {n: dense_weight(m).detach().clone() for n, m in layers.items()}
    train_steps(model, torch.optim.SGD(model.parameters(), lr=0.1), 3)
    conv, pruned = layers["0"], ~masks["0"]
    assert torch.all(conv.weight[pruned] == 0)
    assert not torch.equal(conv.weight_orig[pruned], before["0"][pruned])
    apply_masks(layers, {"0": torch.ones_like(masks["0"])}, dynamic=True)
    assert torch.equal(conv.weight[pruned], conv.weight_orig[pruned])
    assert torch.all(conv.weight[pruned] != 0)


def test_static_mode_revived_weight_restarts_from_zero() -> None:
    model = small_cnn()
    layers = layers_of(model)
    masks = random_masks(layers)
    apply_masks(layers, masks)
    train_steps(model, torch.optim.SGD(model.parameters(), lr=0.1), 2)
    apply_masks(layers, {"0": torch.ones_like(masks["0"])})
    assert torch.all(layers["0"].weight[~masks["0"]] == 0)


def test_mask_update_is_in_place() -> None:
    model = small_cnn()
    layers = layers_of(model)
    apply_masks(layers, random_masks(layers, seed=0))
    buffer = layers["0"].weight_mask
    hooks = len(layers["0"]._forward_pre_hooks)
    new = random_masks(layers, seed=1)
    apply_masks(layers, new)
    assert layers["0"].weight_mask is buffer and len(layers["0"]._forward_pre_hooks) == hooks
    assert all(torch.equal(current_masks(model)[n], new[n]) for n in layers)


def test_masked_model_deep_copies_with_its_own_masks() -> None:
    model = small_cnn()
    layers = layers_of(model)
    masks = random_masks(layers)
    apply_masks(layers, masks)
    model(torch.randn(2, 1, 8, 8))
    clone = copy.deepcopy(model)
    clone[0].weight_mask.fill_(1.0)
    clone(torch.randn(2, 1, 8, 8))
    assert torch.all(model[0].weight[~masks["0"]] == 0)
    assert torch.all(clone[0].weight[~masks["0"]] == 0)  # static: dense zeros stay zero


def test_loading_a_masked_checkpoint_refreshes_the_weight() -> None:
    source, target = small_cnn(), small_cnn()
    masks = random_masks(layers_of(source))
    apply_masks(layers_of(source), masks)
    apply_masks(layers_of(target), random_masks(layers_of(target), seed=1))
    target.load_state_dict(source.state_dict())
    assert torch.equal(target[0].weight, source[0].weight)
    assert torch.equal(current_masks(target)["0"], masks["0"])


def test_remove_masks_gives_plain_module_and_loadable_state_dict() -> None:
    torch.manual_seed(0)
    model = small_cnn().eval()
    layers = layers_of(model)
    masks = random_masks(layers)
    apply_masks(layers, masks, dynamic=True)
    param = layers["0"].weight_orig
    remove_masks(model)
    assert not any(is_masked(m) for m in model.modules())
    assert layers["0"].weight is param and isinstance(param, nn.Parameter)
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    assert torch.all(layers["0"].weight[~masks["0"]] == 0)
    fresh = small_cnn().eval()
    assert list(model.state_dict()) == list(fresh.state_dict())
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(fresh(x), model(x))


def test_apply_masks_rejects_wrong_shape() -> None:
    layers = layers_of(small_cnn())
    with pytest.raises(ValueError, match="shape"):
        apply_masks(layers, {"0": torch.ones(3, 3)})


def hand_zero(conv_or_linear: nn.Module, bn: nn.Module | None, idx: list[int]) -> None:
    with torch.no_grad():
        conv_or_linear.weight[idx] = 0
        conv_or_linear.bias[idx] = 0
        if bn is not None:
            bn.weight[idx] = 0
            bn.bias[idx] = 0


def test_removing_zeroed_channels_keeps_small_cnn_outputs() -> None:
    torch.manual_seed(0)
    model = randomize_bn(small_cnn()).eval()
    hand_zero(model[0], model[1], [1, 3])
    hand_zero(model[4], model[5], [0, 2, 5])
    hand_zero(model[9], None, [2, 4, 6, 7])
    x = torch.randn(5, 1, 8, 8)
    before = model(x)
    params = sum(p.numel() for p in model.parameters())
    counts = remove_channels(
        model, x[:1], {"0": [0, 2], "4": [1, 3, 4], "9": [0, 1, 3, 5], "11": [0]}
    )
    assert counts == {"0": 2, "4": 3, "9": 4, "11": 3}  # output layer keeps its units
    assert model[9].in_features == 3 * 2 * 2  # flatten -> linear follows the conv
    assert model[5].num_features == 3 and model[1].num_features == 2
    assert sum(p.numel() for p in model.parameters()) < params
    assert torch.allclose(model(x), before, atol=1e-5)


def test_removing_zeroed_channels_keeps_residual_outputs() -> None:
    torch.manual_seed(0)
    model = randomize_bn(TinyResNet()).eval()
    keep = {
        "layer1.0.conv1": [0, 2], "layer1.0.conv2": [1, 2, 3], "layer2.0.conv2": [0, 1, 2, 5, 7]
    }
    x = torch.randn(3, 3, 8, 8)
    live = zero_channels(model, x[:1], keep)
    before = model(x)
    counts = remove_channels(model, x[:1], keep)
    assert counts == live
    assert counts["layer1.0.conv1"] == 2 and counts["layer1.0.conv2"] == 3
    for coupled in ("conv", "layer1.1.conv2"):  # same residual stream as layer1.0.conv2
        assert counts[coupled] == 3
    assert counts["layer2.0.shortcut.0"] == 5 and counts["fc"] == 5
    assert model.fc.in_features == 5
    assert torch.allclose(model(x), before, atol=1e-5)


def test_coupled_layers_vote_and_ties_go_to_the_first_layer() -> None:
    model = TinyResNet().eval()
    stem = model.conv.weight.detach().clone()
    counts = remove_channels(
        model, torch.randn(1, 3, 8, 8), {"layer1.0.conv2": [0, 1, 2], "conv": [1, 2, 3]}
    )
    assert counts["conv"] == 3
    assert torch.equal(model.conv.weight, stem[[1, 2, 3]])  # 1, 2 have two votes; 3 beats 0


def test_coupled_layers_majority_wins() -> None:
    model = TinyResNet().eval()
    stem = model.conv.weight.detach().clone()
    keep = {"conv": [0, 1], "layer1.0.conv2": [2, 3], "layer1.1.conv2": [2, 3]}
    remove_channels(model, torch.randn(1, 3, 8, 8), keep)
    assert torch.equal(model.conv.weight, stem[[2, 3]])


def test_protected_layers_and_their_groups_keep_all_channels() -> None:
    model = TinyResNet().eval()
    counts = remove_channels(
        model, torch.randn(1, 3, 8, 8),
        {"layer1.1.conv2": [0], "layer1.0.conv1": [0], "fc": [0]},
        protected={"conv"},
    )
    assert counts["conv"] == counts["layer1.1.conv2"] == 4
    assert counts["layer1.0.conv1"] == 1 and counts["fc"] == 5


def test_remove_channels_keeps_train_mode_and_rejects_bad_input() -> None:
    model = small_cnn().train()
    remove_channels(model, torch.randn(1, 1, 8, 8), {"0": [0]})
    assert model.training
    with pytest.raises(AutopruneError, match="'nope'"):
        remove_channels(model, torch.randn(1, 1, 8, 8), {"nope": [0]})
    with pytest.raises(ValueError, match="outside"):
        remove_channels(model, torch.randn(1, 1, 8, 8), {"4": [9]})
    layers = layers_of(model)
    apply_masks(layers, random_masks(layers))
    with pytest.raises(ValueError, match="remove_masks"):
        remove_channels(model, torch.randn(1, 1, 8, 8), {"4": [0]})


@pytest.mark.parametrize(("name", "shape"), [("small_cnn", (3, 16, 16)), ("resnet20", (3, 16, 16))])
def test_builtin_models_halved_keep_outputs(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = randomize_bn(build_model(name, {}, shape, 10)).eval()
    layers = prunable_layers(model)
    keep = {n: list(range(0, m.weight.shape[0], 2)) for n, m in layers.items()}
    x = torch.randn(2, *shape)
    zero_channels(model, x[:1], keep)
    before = model(x)
    params = sum(p.numel() for p in model.parameters())
    counts = remove_channels(model, x[:1], keep, protected={output_layer_name(model)})
    assert counts[output_layer_name(model)] == 10
    assert all(counts[n] == len(keep[n]) for n in layers if n != output_layer_name(model))
    assert sum(p.numel() for p in model.parameters()) < params * 0.4
    assert torch.allclose(model(x), before, atol=1e-4)
