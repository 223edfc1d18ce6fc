from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from autoprune.errors import AutopruneError
from autoprune.models import prunable_layers
from autoprune.policy import FinetuneSettings, Policy, ScheduleSettings
from autoprune.schedules import STOP_BUDGET_SPENT
from autoprune.trial import METRICS, TrialFailed, run_trial


def policy(**kwargs) -> Policy:
    kwargs.setdefault("finetune", FinetuneSettings(epochs=0.5, lr=0.01))
    return Policy(**kwargs)


def test_metrics_are_finite_and_complete(digits_ctx) -> None:
    result = run_trial(policy(target_sparsity=0.8), digits_ctx)
    assert set(METRICS) <= set(result.metrics)
    assert all(math.isfinite(v) for v in result.metrics.values())
    assert result.metrics["accuracy"] > 0.5


@pytest.mark.parametrize("shape, steps", [("one_shot", 1), ("linear", 3), ("cubic", 3), ("exponential", 2)])
def test_unstructured_schedules_end_at_the_target(digits_ctx, shape: str, steps: int) -> None:
    result = run_trial(policy(target_sparsity=0.9, schedule=ScheduleSettings(shape=shape, steps=steps)), digits_ctx)
    sparsities = [record["sparsity"] for record in result.steps]
    assert len(sparsities) == steps and sparsities == sorted(sparsities)
    assert result.metrics["sparsity"] == pytest.approx(0.9, abs=1e-3)


def test_per_layer_sparsity_reaches_each_target(digits_ctx) -> None:
    wanted = {"classifier.0": 0.5, "classifier.2": 0.9, "classifier.4": 0.25}
    result = run_trial(policy(allocation="per_layer", target_sparsity=None, layer_sparsity=wanted), digits_ctx)
    for name, sparsity in wanted.items():
        numel = prunable_layers(result.model)[name].weight.numel()
        assert result.layer_sparsity[name] == pytest.approx(sparsity, abs=1 / numel + 1e-9)


def test_excluded_layer_keeps_every_weight(digits_ctx) -> None:
    result = run_trial(policy(target_sparsity=0.9, exclude=["classifier.4"]), digits_ctx)
    assert result.layer_sparsity["classifier.4"] == 0.0


def test_channel_pruning_shrinks_the_model_and_keeps_the_output(digits_ctx) -> None:
    result = run_trial(policy(granularity="channel", scorer="l2", target_sparsity=0.5,
                              schedule=ScheduleSettings(shape="linear", steps=2)), digits_ctx)
    layers = prunable_layers(result.model)
    assert layers["classifier.0"].out_features == 32 and layers["classifier.2"].out_features == 16
    assert layers["classifier.4"].out_features == 10
    assert result.metrics["params"] < prunable_params(digits_ctx)
    assert result.metrics["macs"] < result.metrics["params"] + 1


def prunable_params(ctx) -> int:
    return sum(p.numel() for p in ctx.model.parameters())


def test_channel_pruning_on_a_cnn(cnn_ctx) -> None:
    result = run_trial(policy(granularity="channel", scorer="taylor", target_sparsity=0.5), cnn_ctx)
    layers = prunable_layers(result.model)
    assert layers["features.0"].out_channels == 4 and layers["features.4"].in_channels == 4
    assert result.model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_round_to_keeps_multiples_of_it_in_every_pruned_layer(cnn_ctx) -> None:
    # channels 8/16, hidden 32 at 30 %: 6/11/22 unrounded, 8/8/24 with round_to 8.
    result = run_trial(policy(granularity="channel", scorer="l2", target_sparsity=0.3, round_to=8,
                              schedule=ScheduleSettings(shape="linear", steps=2)), cnn_ctx)
    layers = prunable_layers(result.model)
    assert [layers[n].weight.shape[0] for n in ("features.0", "features.4", "classifier.0")] == [8, 8, 24]
    assert layers["classifier.2"].out_features == 10


def test_onnxruntime_latency_times_the_exported_models(cnn_ctx, monkeypatch: pytest.MonkeyPatch) -> None:
    import autoprune.measure as measure

    timed = []
    real = measure._time_onnx
    monkeypatch.setattr(measure, "_time_onnx", lambda models, *a, **k: timed.append(len(models)) or real(models, *a, **k))
    latency = cnn_ctx.latency.model_copy(update={"runtime": "onnxruntime", "repeats": 20})
    context = dataclasses.replace(cnn_ctx, latency=latency)
    result = run_trial(policy(granularity="channel", scorer="l2", target_sparsity=0.5), context)
    assert timed == [2]  # dense and pruned, interleaved, in onnxruntime
    metrics = result.metrics
    assert metrics["latency_ms"] > 0 and metrics["dense_latency_ms"] > 0
    assert metrics["speedup"] == pytest.approx(metrics["dense_latency_ms"] / metrics["latency_ms"])


@pytest.mark.parametrize("shape, regrows", [("dynamic", True), ("cubic", False)])
def test_only_dynamic_lets_pruned_weights_return(digits_ctx, shape: str, regrows: bool) -> None:
    result = run_trial(policy(scorer="magnitude", target_sparsity=0.8,
                              schedule=ScheduleSettings(shape=shape, steps=2),
                              finetune=FinetuneSettings(epochs=2.0, lr=0.05)), digits_ctx)
    assert result.metrics["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert (result.steps[-1]["regrown"] > 0) == regrows


def test_adaptive_backs_off_when_accuracy_drops(digits_ctx) -> None:
    # Random scores at 95% sparsity with almost no finetuning wreck accuracy: the
    # controller must slow down and stop short of the target, saying why.
    result = run_trial(policy(scorer="random", target_sparsity=0.95,
                              schedule=ScheduleSettings(shape="adaptive", steps=3, tolerance=0.0),
                              finetune=FinetuneSettings(epochs=0.1, lr=0.001)), digits_ctx)
    assert result.stop_reason == STOP_BUDGET_SPENT
    assert result.metrics["sparsity"] < 0.95 - 0.05
    increments = [b["target"] - a["target"] for a, b in zip(result.steps, result.steps[1:])]
    assert increments == sorted(increments, reverse=True)


def test_distillation_runs(digits_ctx) -> None:
    result = run_trial(policy(target_sparsity=0.5, finetune=FinetuneSettings(epochs=0.5, lr=0.01, distill=True)), digits_ctx)
    assert result.metrics["accuracy"] > 0.5


@pytest.mark.parametrize("scorer", ["magnitude", "l2", "random", "gradient", "taylor", "gradient_magnitude",
                                    "activation", "normalized_response", "entropy", "lamp"])
def test_every_scorer_runs_a_trial(digits_ctx, scorer: str) -> None:
    result = run_trial(policy(scorer=scorer, target_sparsity=0.7, schedule=ScheduleSettings(shape="cubic", steps=2)),
                       digits_ctx)
    assert result.metrics["sparsity"] == pytest.approx(0.7, abs=1e-3)


@pytest.mark.parametrize("allocation", ["uniform", "global", "lamp", "erk"])
def test_every_allocation_reaches_the_overall_target(digits_ctx, allocation: str) -> None:
    result = run_trial(policy(allocation=allocation, target_sparsity=0.85), digits_ctx)
    assert result.metrics["sparsity"] == pytest.approx(0.85, abs=1e-3)


def test_divergence_is_a_failed_trial(digits_ctx) -> None:
    poisoned_x = digits_ctx.data.train_x.clone()
    poisoned_x[:] = float("nan")
    context = dataclasses.replace(digits_ctx, data=dataclasses.replace(digits_ctx.data, train_x=poisoned_x))
    with pytest.raises(TrialFailed, match="diverged"):
        run_trial(policy(target_sparsity=0.5), context)


def test_unknown_layer_in_policy(digits_ctx) -> None:
    with pytest.raises(AutopruneError, match="not a prunable layer"):
        run_trial(policy(exclude=["features.9"]), digits_ctx)


def test_same_seed_same_result(digits_ctx) -> None:
    a = run_trial(policy(scorer="taylor", target_sparsity=0.8, seed=3), digits_ctx)
    b = run_trial(policy(scorer="taylor", target_sparsity=0.8, seed=3), digits_ctx)
    assert a.metrics["accuracy"] == b.metrics["accuracy"] and a.layer_sparsity == b.layer_sparsity


def test_the_dense_model_of_the_context_is_untouched(digits_ctx) -> None:
    before = {k: v.clone() for k, v in digits_ctx.dense.state_dict.items()}
    run_trial(policy(target_sparsity=0.9), digits_ctx)
    assert all(torch.equal(before[k], v) for k, v in digits_ctx.dense.state_dict.items())
