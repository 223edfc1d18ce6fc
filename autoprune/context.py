"""What every trial of a study shares, assembled once.

A study's trials all prune the same dense model on the same data. :func:`build_setup` turns a
validated :class:`~autoprune.space.SearchSpace` into a :class:`StudySetup`: the data loaded
once (held in memory), the model architecture built for that data, and the space's layer
patterns resolved against the model's real prunable layers. ``autoprune validate`` prints
it; the search driver adds the dense weights (:mod:`autoprune.dense`) and hands the result
to every trial as a :class:`TrialContext` — trials never reload data or retrain the dense
model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from autoprune.data import DataBundle, load_data
from autoprune.layers import LayerInfo, resolve_layers
from autoprune.models import build_model, output_layer_name
from autoprune.space import LatencySpec, SearchSpace


@dataclass
class StudySetup:
    """The parts of a study that do not depend on the dense weights."""

    space: SearchSpace
    data: DataBundle
    model: nn.Module
    layers: list[LayerInfo]
    output_layer: str

    @property
    def prunable(self) -> list[LayerInfo]:
        """Layers that may lose weights (not excluded)."""
        return [layer for layer in self.layers if not layer.excluded]


def load_study_data(space: SearchSpace) -> DataBundle:
    """Load the space's dataset with its split settings (seeded by the study seed)."""
    spec = space.data
    return load_data(
        spec.name,
        root=spec.root,
        val_fraction=spec.val_fraction,
        seed=space.study.seed,
        train_subset=spec.train_subset,
        args=dict(spec.args),
        where=f"{space.source}: ",
    )


def build_dense_architecture(space: SearchSpace, data: DataBundle) -> nn.Module:
    """A freshly initialised model (seeded by the study seed) for ``data``."""
    torch.manual_seed(space.study.seed)
    return build_model(
        space.model.name,
        dict(space.model.args),
        tuple(data.input_shape),
        data.num_classes,
        where=f"{space.source}: ",
    )


def build_setup(space: SearchSpace, data: DataBundle | None = None) -> StudySetup:
    """Load data, build the model and resolve layer patterns; errors name the space file."""
    data = data if data is not None else load_study_data(space)
    model = build_dense_architecture(space, data)
    layers = resolve_layers(space.space, model, source=space.source)
    return StudySetup(space=space, data=data, model=model, layers=layers, output_layer=output_layer_name(model))


@dataclass
class DenseReference:
    """The dense model's weights and the metrics pruned models are compared with."""

    state_dict: dict[str, torch.Tensor]
    accuracy: float
    test_accuracy: float | None
    digest: str
    latency_ms: float | None = None


@dataclass
class TrialContext:
    """Everything a trial needs besides its policy; built once per study, shared by trials.

    It is plain data (tensors, a model and settings), so Ray can place it in the object store
    once and hand it to every trial.
    """

    model: nn.Module
    dense: DenseReference
    data: DataBundle
    output_layer: str
    latency: LatencySpec
    batch_size: int
    calibration_batches: int
    device: str = "cpu"
    extras: dict[str, Any] = field(default_factory=dict)

    def dense_model(self) -> nn.Module:
        """A fresh copy of the dense model with the dense weights, on the trial's device."""
        model = copy.deepcopy(self.model)
        model.load_state_dict(self.dense.state_dict)
        return model.to(self.device)


def trial_context(setup: StudySetup, dense: DenseReference, *, device: str = "cpu") -> TrialContext:
    """The :class:`TrialContext` of a prepared study."""
    space = setup.space
    return TrialContext(
        model=setup.model,
        dense=dense,
        data=setup.data,
        output_layer=setup.output_layer,
        latency=space.latency,
        batch_size=space.data.batch_size,
        calibration_batches=space.data.calibration_batches,
        device=device,
    )
