from __future__ import annotations

from pathlib import Path

import pytest

from autoprune.errors import AutopruneError
from autoprune.policy import FinetuneSettings, Policy, ScheduleSettings, load_policy, save_policy


def sample_policy() -> Policy:
    return Policy(
        granularity="channel",
        scorer="gradient_magnitude",
        scorer_params={"lam": 0.5},
        allocation="per_layer",
        target_sparsity=None,
        layer_sparsity={"features.0": 0.25, "classifier.0": 0.75},
        exclude=["classifier.2"],
        round_to=8,
        schedule=ScheduleSettings(shape="cubic", steps=4),
        finetune=FinetuneSettings(epochs=0.5, lr=0.01, optimizer="adam", distill=True),
        seed=7,
    )


def test_yaml_round_trip_is_exact() -> None:
    policy = sample_policy()
    assert Policy.from_yaml(policy.to_yaml()) == policy


def test_yaml_is_stable() -> None:
    assert sample_policy().to_yaml() == sample_policy().to_yaml()
    assert sample_policy().to_yaml().startswith("granularity: channel\n")


def test_save_and_load_file(tmp_path: Path) -> None:
    path = save_policy(tmp_path / "p.yaml", sample_policy())
    assert load_policy(path) == sample_policy()


def test_exported_form_with_sections_loads(tmp_path: Path) -> None:
    path = save_policy(tmp_path / "p.yaml", sample_policy(), metrics={"accuracy": 0.9})
    assert load_policy(path) == sample_policy()


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("scorer: magnitude\nsparsity: 0.5\n")
    with pytest.raises(AutopruneError, match="sparsity: unknown key"):
        load_policy(tmp_path / "p.yaml")


def test_unknown_scorer_lists_valid_ones(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("scorer: magnitud\n")
    with pytest.raises(AutopruneError, match="magnitude"):
        load_policy(tmp_path / "p.yaml")


def test_layer_sparsity_range_checked() -> None:
    with pytest.raises(AutopruneError, match="layer_sparsity"):
        Policy.from_dict({"allocation": "per_layer", "layer_sparsity": {"a": 1.5}})


def test_per_layer_needs_layer_sparsity() -> None:
    with pytest.raises(AutopruneError, match="layer_sparsity"):
        Policy(allocation="per_layer").check_complete()


def test_flat_keys_for_tracking() -> None:
    flat = sample_policy().flat()
    assert flat["finetune.lr"] == 0.01
    assert flat["layer_sparsity.features.0"] == 0.25
    assert flat["exclude"] == "classifier.2"


def test_summary_mentions_the_essentials() -> None:
    text = Policy(target_sparsity=0.9).summary()
    assert "magnitude" in text and "s=0.90" in text


def test_round_to_defaults_to_no_rounding_and_refuses_zero() -> None:
    assert Policy().round_to == 1
    with pytest.raises(AutopruneError, match="round_to"):
        Policy.from_dict({"granularity": "channel", "round_to": 0})


def test_summary_names_channel_rounding() -> None:
    assert "round_to=8" in Policy(granularity="channel", round_to=8).summary()
    assert "round_to" not in Policy(granularity="unstructured", round_to=8).summary()
