"""Tests for autoprune.measure: sparsity, parameter counts, MACs, latency, accuracy, size."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from autoprune.measure import (
    accuracy,
    macs,
    measure_latency,
    measure_latency_pair,
    measure_model,
    param_counts,
    prunable_weight_count,
    size_bytes,
    sparsity,
)
from autoprune.prune import apply_masks, remove_channels


def mlp() -> nn.Sequential:
    """Linear(6, 4) -> ReLU -> Linear(4, 2): 24 + 8 = 32 prunable weights, 38 params."""
    return nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))


def test_sparsity_of_hand_masked_model() -> None:
    model = mlp()
    with torch.no_grad():
        model[0].weight[:2] = 0  # 12 zeros
        model[2].weight[0, :2] = 0  # 2 zeros
    assert prunable_weight_count(model) == (32, 18)
    assert sparsity(model, 32) == pytest.approx(14 / 32)


def test_sparsity_sees_masks_of_masked_layers() -> None:
    model = mlp()
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[:, :3] = False  # 12 of 24 weights masked
    apply_masks({"0": model[0]}, {"0": mask}, dynamic=True)
    assert prunable_weight_count(model) == (32, 20)
    assert sparsity(model, 32) == pytest.approx(12 / 32)
    other = mlp()
    apply_masks({"0": other[0]}, {"0": torch.ones(4, 6)}, dynamic=True)
    other.load_state_dict(model.state_dict())  # new mask, no forward pass since
    assert prunable_weight_count(other) == (32, 20)


def test_removed_channels_count_against_the_dense_total() -> None:
    model = mlp()
    dense, _ = prunable_weight_count(model)
    remove_channels(model, torch.randn(1, 6), {"0": [1, 3]})
    assert prunable_weight_count(model) == (6 * 2 + 2 * 2, 16)
    assert sparsity(model, dense) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        sparsity(mlp(), 16)  # a dense count smaller than the model's is a mistake


def test_params_and_nonzero_params() -> None:
    model = mlp()
    with torch.no_grad():
        model[0].bias.zero_()
    assert param_counts(model) == (38, 34)
    apply_masks({"2": model[2]}, {"2": torch.zeros(2, 4)}, dynamic=True)  # dense kept
    assert param_counts(model) == (38, 26)  # masks are buffers, masked weights are zeros


def test_macs_of_linear_and_conv_match_hand_counts() -> None:
    assert macs(nn.Linear(7, 3), (7,)) == 7 * 3
    conv = nn.Conv2d(2, 3, 3, padding=1)
    assert macs(conv, (2, 5, 5)) == 3 * 5 * 5 * 2 * 3 * 3
    strided = nn.Conv2d(4, 6, 3, stride=2, groups=2)
    assert macs(strided, (4, 9, 9)) == 6 * 4 * 4 * (4 // 2) * 3 * 3


def test_macs_drop_with_channel_removal_not_with_masks() -> None:
    model = mlp()
    dense = macs(model, (6,))
    apply_masks({"0": model[0]}, {"0": torch.zeros(4, 6)})
    assert macs(model, (6,)) == dense
    pruned = mlp()
    remove_channels(pruned, torch.randn(1, 6), {"0": [0]})
    assert macs(pruned, (6,)) == 6 * 1 + 1 * 2


class ThreadProbe(nn.Module):
    """Records the torch thread count and train flag seen by each forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(16, 16)
        self.seen: set[tuple[int, bool]] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.add((torch.get_num_threads(), self.training))
        return self.linear(x)


def test_latency_is_positive_and_uses_the_requested_threads() -> None:
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        probe = ThreadProbe().train()
        latency = measure_latency(probe, (16,), batch_size=4, warmup=2, repeats=7, threads=1)
        assert latency > 0 and math.isfinite(latency)
        assert probe.seen == {(1, False)}  # fixed threads, eval mode
        assert torch.get_num_threads() == 2 and probe.training
    finally:
        torch.set_num_threads(previous)


def test_latency_pair_interleaves_and_reports_speedup() -> None:
    dense = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    pruned = nn.Sequential(nn.Linear(256, 8), nn.ReLU(), nn.Linear(8, 10))
    result = measure_latency_pair(dense, pruned, (256,), batch_size=32, warmup=2, repeats=9)
    assert set(result) == {"dense_latency_ms", "latency_ms", "speedup"}
    assert result["speedup"] == pytest.approx(result["dense_latency_ms"] / result["latency_ms"])
    assert result["latency_ms"] > 0 and math.isfinite(result["speedup"])


def test_accuracy_on_a_hand_made_problem() -> None:
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    model.train()
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0], [1.0, 2.0]])
    y = torch.tensor([0, 1, 1, 1, 1])  # the third example is predicted 0
    assert accuracy(model, x, y, batch_size=2) == pytest.approx(0.8)
    assert model.training


def test_size_bytes_shrinks_with_channel_removal_not_with_masks() -> None:
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    dense = size_bytes(model)
    assert dense > 64 * 64 * 4
    apply_masks({"0": model[0]}, {"0": torch.zeros(64, 64)})
    assert size_bytes(model) == dense  # measured as the baked (dense) state dict
    small = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    remove_channels(small, torch.randn(1, 64), {"0": list(range(8))})
    assert 0 < size_bytes(small) < dense / 4


def test_measure_model_reports_the_static_metrics() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 3 * 3, 3))
    metrics = measure_model(model, dense_prunable=144, input_shape=(1, 5, 5))
    assert metrics == {
        "sparsity": pytest.approx(0.5),  # half of a dense count twice as large
        "params": 2 * 9 + 2 + 18 * 3 + 3,
        "params_nonzero": 2 * 9 + 2 + 18 * 3 + 3,
        "macs": 2 * 9 * 9 + 18 * 3,
        "size_bytes": float(size_bytes(model)),
    }


def conv_bn_net() -> nn.Sequential:
    """Conv-BN-ReLU-MaxPool, then a Linear; batch norm statistics made non-trivial."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
        model[1].weight.uniform_(0.5, 2)
        model[1].bias.uniform_(-1, 1)
    return model


def test_fold_batch_norm_keeps_the_function_and_leaves_the_model_alone() -> None:
    from autoprune.measure import fold_batch_norm

    model = conv_bn_net().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batch_norm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        expected = model.eval()(x)
        assert torch.allclose(folded(x), expected, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(model[1], nn.BatchNorm2d)


def test_time_deployed_probes_layouts_for_convnets_only_and_does_not_mutate() -> None:
    from autoprune.measure import time_deployed

    conv, linear = conv_bn_net().train(), mlp()
    weight = conv[0].weight.detach().clone()
    (conv_timing,) = time_deployed([conv], (1, 8, 8), batch_size=2, warmup=1, repeats=3)
    (linear_timing,) = time_deployed([linear], (6,), batch_size=2, warmup=1, repeats=3)
    assert conv_timing.candidates == ["contiguous", "channels_last"] and conv_timing.layout in conv_timing.candidates
    assert linear_timing.candidates == ["contiguous"] and linear_timing.layout == "contiguous"
    assert conv_timing.latency_ms > 0 and linear_timing.latency_ms > 0
    assert conv.training and isinstance(conv[1], nn.BatchNorm2d) and torch.equal(conv[0].weight, weight)
    assert conv[0].weight.is_contiguous()  # no channels_last leaked into the caller's model


def test_masked_models_are_timed_unfolded() -> None:
    from autoprune.measure import fold_batch_norm

    model = conv_bn_net()
    apply_masks({"0": model[0]}, {"0": torch.ones(4, 1, 3, 3)}, dynamic=True)
    folded = fold_batch_norm(model)
    assert any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert not folded.training


def test_onnxruntime_times_the_exported_model_and_leaves_the_caller_alone() -> None:
    from autoprune.measure import time_deployed

    model = conv_bn_net().train()
    weight = model[0].weight.detach().clone()
    (timing,) = time_deployed([model], (1, 8, 8), batch_size=2, warmup=1, repeats=3, runtime="onnxruntime")
    assert timing.layout == "onnxruntime" and timing.candidates == ["onnxruntime"]
    assert math.isfinite(timing.latency_ms) and timing.latency_ms > 0
    assert model.training and torch.equal(model[0].weight, weight)


def test_onnx_export_for_timing_is_cached_by_architecture_and_weights() -> None:
    from autoprune.measure import _onnx_file

    model = conv_bn_net().eval()
    first = _onnx_file(model, (1, 8, 8))
    assert _onnx_file(conv_bn_net().eval(), (1, 8, 8)) == first  # same seed, same weights: no new export
    changed = conv_bn_net().eval()
    with torch.no_grad():
        changed[0].weight.mul_(2)
    assert _onnx_file(changed, (1, 8, 8)) != first and first.is_file()


def test_masked_model_is_exported_with_its_zeros_for_onnxruntime() -> None:
    from autoprune.measure import _onnx_file
    from autoprune.onnx_export import onnx_session

    model = conv_bn_net().eval()
    mask = torch.zeros(4, 1, 3, 3)
    apply_masks({"0": model[0]}, {"0": mask})
    x = torch.randn(3, 1, 8, 8)
    (logits,) = onnx_session(_onnx_file(model, (1, 8, 8))).run(None, {"input": x.numpy()})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(logits), model(x), atol=1e-5)
    assert "weight_orig" in dict(model[0].named_parameters())  # the caller's masks stay


def test_unknown_runtime_is_refused() -> None:
    with pytest.raises(ValueError, match="onnxruntime"):
        measure_latency(mlp(), (6,), runtime="tensorrt")
