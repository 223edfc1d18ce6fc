from __future__ import annotations

import optuna
import pytest
from torch import nn

from autoprune.layers import resolve_layers
from autoprune.space import parse_space
from autoprune.suggest import PolicySuggester, policy_from_params, search_dimensions

optuna.logging.set_verbosity(optuna.logging.WARNING)


def model() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def setup(space_section: dict):
    space = parse_space({"space": space_section}).space
    return space, resolve_layers(space, model())


def sample(space_section: dict, n: int = 40):
    space, layers = setup(space_section)
    suggester = PolicySuggester(space, layers, seed=3)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for _ in range(n):
        trial = study.ask()
        policy = suggester.policy(trial)
        study.tell(trial, 0.0)
        out.append((trial.params, policy))
    return space, layers, out


def test_lambda_only_for_gradient_magnitude() -> None:
    _, _, samples = sample({"scorer": ["magnitude", "gradient_magnitude"]})
    for params, policy in samples:
        has_lam = "scorer.gradient_magnitude.lam" in params
        assert has_lam == (policy.scorer == "gradient_magnitude")
        assert ("lam" in policy.scorer_params) == has_lam


def test_layer_dimensions_only_for_per_layer() -> None:
    _, _, samples = sample({"allocation": ["uniform", "per_layer"], "layers": {"0": {"sparsity": [0.1, 0.3]}}})
    for params, policy in samples:
        assert ("layer.0" in params) == (policy.allocation == "per_layer")
        if policy.allocation == "per_layer":
            assert 0.1 <= policy.layer_sparsity["0"] <= 0.3
            assert policy.layer_sparsity["2"] == policy.target_sparsity


def test_steps_only_for_multi_step_schedules() -> None:
    _, _, samples = sample({"schedule": {"shape": ["one_shot", "cubic"], "steps": [2, 6]}})
    for params, policy in samples:
        assert ("schedule.steps" in params) == (policy.schedule.shape == "cubic")
        assert policy.schedule.steps == (1 if policy.schedule.shape == "one_shot" else params["schedule.steps"])


def test_fixed_values_are_not_dimensions() -> None:
    _, _, samples = sample({"scorer": "taylor", "target_sparsity": 0.7, "finetune": {"epochs": 1, "lr": 0.01}})
    params, policy = samples[0]
    assert params == {}
    assert policy.scorer == "taylor" and policy.target_sparsity == 0.7 and policy.finetune.lr == 0.01


def test_policy_from_params_matches_the_suggested_policy() -> None:
    space, layers, samples = sample({"scorer": ["magnitude", "gradient_magnitude"], "allocation": ["uniform", "per_layer"],
                                     "layers": {"*": {"sparsity": [0.2, 0.9]}}, "finetune": {"distill": [False, True]}})
    for params, policy in samples:
        assert policy_from_params(params, space, layers, seed=3) == policy


def test_excluded_layers_reach_the_policy() -> None:
    _, _, samples = sample({"exclude": ["4"]}, n=1)
    assert samples[0][1].exclude == ["4"]


def test_search_dimensions_count_conditionals() -> None:
    space, layers = setup({"scorer": ["magnitude", "gradient_magnitude"], "allocation": ["uniform", "per_layer"],
                           "layers": {"0": {"sparsity": [0.1, 0.3]}}, "schedule": {"shape": "one_shot", "steps": [1, 5]}})
    dims = search_dimensions(space, layers)
    assert "scorer.gradient_magnitude.lam" in dims and "layer.0" in dims
    assert "schedule.steps" not in dims


def test_suggester_is_picklable() -> None:
    import pickle

    space, layers = setup({"scorer": ["magnitude", "taylor"]})
    clone = pickle.loads(pickle.dumps(PolicySuggester(space, layers, seed=1)))
    assert clone.seed == 1


@pytest.mark.parametrize("sampler", [optuna.samplers.TPESampler(seed=0, multivariate=True, group=True)])
def test_works_with_model_based_sampler(sampler: optuna.samplers.BaseSampler) -> None:
    space, layers = setup({"scorer": ["magnitude", "gradient_magnitude"], "allocation": ["uniform", "per_layer"]})
    suggester = PolicySuggester(space, layers, seed=0)
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=sampler)
    study.optimize(lambda t: (suggester.policy(t).target_sparsity or 0.5, 0.0), n_trials=15)
    assert len(study.trials) == 15


def test_round_to_only_for_channel_pruning() -> None:
    space, layers, samples = sample({"granularity": ["unstructured", "channel"], "round_to": {"choices": [1, 8]}})
    assert search_dimensions(space, layers)["round_to"] == "{1, 8}"
    for params, policy in samples:
        assert ("round_to" in params) == (policy.granularity == "channel")
        assert policy.round_to == params.get("round_to", 1)
    assert {policy.round_to for _, policy in samples if policy.granularity == "channel"} == {1, 8}
