"""The pruning policy: one concrete point of a search space.

A :class:`Policy` is everything one trial needs to prune a dense model: granularity, the
importance scorer and its parameters, how per-layer sparsity is allocated (explicitly per
layer or from one overall target), the schedule on which sparsity grows, how finetuning
recovers accuracy, and the seed. The search samples policies; ``autoprune trial`` runs one;
``autoprune export`` writes the chosen one next to its pruned model.

Policies round-trip through YAML unchanged (``Policy.from_yaml(p.to_yaml()) == p``) and the
YAML is meant to be read and edited by people::

    granularity: channel
    scorer: taylor
    allocation: uniform
    target_sparsity: 0.5
    schedule: {shape: cubic, steps: 4}
    finetune: {epochs: 1.0, lr: 0.01}
    seed: 0
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from autoprune.errors import AutopruneError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ScheduleSettings(_Strict):
    """How sparsity grows: the schedule's name, its prune steps and (adaptive) tolerance."""

    shape: str = "one_shot"
    steps: int = Field(1, ge=1, le=1000)
    tolerance: float = Field(0.01, ge=0, le=1)

    @field_validator("shape")
    @classmethod
    def _known_shape(cls, value: str) -> str:
        from autoprune.schedules import SCHEDULES

        if value not in SCHEDULES:
            raise ValueError(SCHEDULES.unknown_message(value))
        return value


class FinetuneSettings(_Strict):
    """How finetuning recovers accuracy (fractional epochs allowed)."""

    epochs: float = Field(1.0, ge=0, le=10_000)
    lr: float = Field(0.01, gt=0, le=10)
    optimizer: str = "sgd"
    distill: bool = False
    temperature: float = Field(4.0, gt=0, le=100)
    distill_weight: float = Field(0.5, ge=0, le=1)

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, value: str) -> str:
        from autoprune.train import OPTIMIZERS

        if value not in OPTIMIZERS:
            raise ValueError(OPTIMIZERS.unknown_message(value))
        return value


class Policy(_Strict):
    """One pruning policy. See the module docstring for the YAML form.

    Attributes:
        granularity: ``unstructured`` (weight masks) or ``channel`` (channels removed).
        scorer: name of the importance scorer (:mod:`autoprune.scorers`).
        scorer_params: the scorer's parameters, e.g. ``{"lam": 0.5}`` for gradient_magnitude.
        allocation: how per-layer sparsity is decided (:mod:`autoprune.allocation`).
        target_sparsity: the overall sparsity for every allocation except ``per_layer``.
        layer_sparsity: per-layer sparsity for ``per_layer`` (layer name → fraction removed).
        exclude: layer names never pruned.
        min_layer_density: the smallest fraction of a layer that is always kept.
        round_to: ``channel`` granularity only: every pruned layer of at least ``round_to``
            channels keeps a multiple of ``round_to`` (nearest to its allocated count), so
            the pruned layers match the CPU's vector width (8 float32 lanes with AVX2, 16
            with AVX-512); see :func:`autoprune.allocation.kept_channels`. 1 = no rounding.
        schedule: how sparsity grows over finetuning.
        finetune: finetuning settings.
        seed: seeds scoring, finetuning and any randomness of the trial.
    """

    granularity: str = "unstructured"
    scorer: str = "magnitude"
    scorer_params: dict[str, float] = Field(default_factory=dict)
    allocation: str = "uniform"
    target_sparsity: float | None = Field(0.5, ge=0, lt=1)
    layer_sparsity: dict[str, float] = Field(default_factory=dict)
    exclude: list[str] = Field(default_factory=list)
    min_layer_density: float = Field(0.01, gt=0, le=1)
    round_to: int = Field(1, ge=1, le=4096)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    finetune: FinetuneSettings = Field(default_factory=FinetuneSettings)
    seed: int = 0

    @field_validator("granularity")
    @classmethod
    def _known_granularity(cls, value: str) -> str:
        if value not in ("unstructured", "channel"):
            raise ValueError(f"unknown granularity {value!r}; allowed: unstructured, channel")
        return value

    @field_validator("scorer")
    @classmethod
    def _known_scorer(cls, value: str) -> str:
        from autoprune.scorers import SCORERS

        if value not in SCORERS:
            raise ValueError(SCORERS.unknown_message(value))
        return value

    @field_validator("allocation")
    @classmethod
    def _known_allocation(cls, value: str) -> str:
        from autoprune.allocation import ALLOCATIONS

        if value not in ALLOCATIONS:
            raise ValueError(ALLOCATIONS.unknown_message(value))
        return value

    @field_validator("layer_sparsity")
    @classmethod
    def _sparsities_in_range(cls, value: dict[str, float]) -> dict[str, float]:
        for name, sparsity in value.items():
            if not 0 <= sparsity < 1:
                raise ValueError(f"sparsity of layer {name!r} must be in [0, 1), got {sparsity}")
        return value

    def check_complete(self, source: str = "policy") -> None:
        """Raise :class:`AutopruneError` if the allocation lacks the values it needs (``source`` names the policy)."""
        if self.allocation == "per_layer" and not self.layer_sparsity:
            raise AutopruneError(f"{source}: allocation per_layer needs layer_sparsity (layer name → sparsity)")
        if self.allocation != "per_layer" and self.target_sparsity is None:
            raise AutopruneError(f"{source}: allocation {self.allocation} needs target_sparsity in [0, 1)")

    def check_layers(self, known: Sequence[str], source: str = "policy") -> None:
        """Raise :class:`AutopruneError` if ``exclude`` or ``layer_sparsity`` names a layer not in ``known``."""
        for key, names in (("exclude", self.exclude), ("layer_sparsity", list(self.layer_sparsity))):
            unknown = [name for name in names if name not in known]
            if unknown:
                raise AutopruneError(f"{source}: {key}: layer {unknown[0]!r} is not a prunable layer of the model; "
                                     f"prunable layers: {', '.join(known)}")

    def to_dict(self) -> dict[str, Any]:
        """A plain mapping (only YAML-safe types), stable in key order."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        """Human-readable YAML that :meth:`from_yaml` reads back to an equal policy."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    @classmethod
    def from_dict(cls, raw: Any, *, source: str = "policy") -> Policy:
        """Validate a mapping as a policy; problems are one-line :class:`AutopruneError`."""
        from autoprune.space import describe_validation_error

        if not isinstance(raw, dict):
            raise AutopruneError(f"{source}: a policy is a mapping, got {type(raw).__name__}")
        try:
            return cls.model_validate(raw)
        except ValidationError as error:
            raise AutopruneError(f"{source}: {describe_validation_error(error, cls)}") from None

    @classmethod
    def from_yaml(cls, text: str, *, source: str = "policy") -> Policy:
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise AutopruneError(f"{source}: YAML syntax error: {error}".splitlines()[0]) from None
        return cls.from_dict(raw, source=source)

    def flat(self) -> dict[str, Any]:
        """Dotted keys → scalars (``finetune.lr``, ``layer_sparsity.features.0``), for MLflow and CSV."""
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for key, item in value.items():
                    walk(f"{prefix}.{key}" if prefix else str(key), item)
            elif isinstance(value, list):
                out[prefix] = ",".join(str(v) for v in value)
            else:
                out[prefix] = value

        walk("", self.to_dict())
        return out

    def summary(self) -> str:
        """One line for tables and plot hovers: ``channel taylor uniform s=0.50 cubic×4 ft=1.0ep``."""
        sparsity = (
            f"s={self.target_sparsity:.2f}"
            if self.allocation != "per_layer"
            else f"{len(self.layer_sparsity)} layers"
        )
        distill = " +distill" if self.finetune.distill else ""
        rounding = f" round_to={self.round_to}" if self.granularity == "channel" and self.round_to > 1 else ""
        return (
            f"{self.granularity}{rounding} {self.scorer} {self.allocation} {sparsity} "
            f"{self.schedule.shape}×{self.schedule.steps} ft={self.finetune.epochs:.2g}ep "
            f"lr={self.finetune.lr:.2g}{distill}"
        )


def load_policy(path: str | Path) -> Policy:
    """Read a policy file: a bare policy, or an exported ``policy.yaml`` with a ``policy:`` key."""
    from autoprune.space import read_yaml

    raw = read_yaml(path, what="policy file")
    if raw is None:
        raise AutopruneError(f"{path}: empty policy file; a policy is a mapping of {', '.join(Policy.model_fields)}")
    if isinstance(raw, dict) and "policy" in raw and isinstance(raw["policy"], dict):
        raw = raw["policy"]
    return Policy.from_dict(raw, source=str(path))


def save_policy(path: str | Path, policy: Policy, **sections: Any) -> Path:
    """Write ``policy`` as YAML; extra ``sections`` (model, metrics, ...) wrap it under ``policy:``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if sections:
        document = {"policy": policy.to_dict(), **sections}
        text = yaml.safe_dump(document, sort_keys=False, default_flow_style=None)
    else:
        text = policy.to_yaml()
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
