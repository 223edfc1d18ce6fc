"""``activation``: weight magnitude times the norm of the input it multiplies (Wanda)."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

from autoprune.scorers._base import SCORERS, Calibration, Scorer
from autoprune.scorers._calibration import run_forward


def input_feature_norms(
    model: nn.Module, layers: Mapping[str, nn.Module], calibration: Calibration
) -> dict[str, Tensor]:
    """``‖x_j‖₂`` per input feature j of each layer, over all calibration samples.

    For ``Linear`` the norm runs over every row of the input (all leading dims); for
    ``ConvNd`` over the batch and all spatial positions of input channel j. Returns
    ``{name: tensor of shape (in_features or in_channels,)}``.
    """
    squares: dict[str, Tensor] = {}

    def accumulate(name: str, module: nn.Module, inputs: Tensor, output: Tensor) -> None:
        x = inputs.float()
        if isinstance(module, nn.Linear):
            total = x.reshape(-1, x.shape[-1]).pow(2).sum(0)
        else:
            if x.dim() == module.weight.dim() - 1:
                x = x.unsqueeze(0)
            total = x.transpose(0, 1).reshape(x.shape[1], -1).pow(2).sum(1)
        squares[name] = squares[name] + total if name in squares else total

    run_forward(model, layers, calibration, accumulate)
    return {
        name: squares[name].sqrt()
        if name in squares
        else torch.zeros(_in_features(layer), device=layer.weight.device)
        for name, layer in layers.items()
    }


def _in_features(layer: nn.Module) -> int:
    return layer.weight.shape[1] * getattr(layer, "groups", 1)


def broadcast_inputs(norms: Tensor, layer: nn.Module) -> Tensor:
    """Per-input-feature ``norms`` laid out like ``layer.weight``.

    Weight ``W[o, j, k...]`` multiplies input channel ``g·(C_in/groups) + j`` where g is the
    group of output channel o, so grouped and depthwise convolutions are handled.
    """
    weight = layer.weight
    groups = getattr(layer, "groups", 1)
    per_out = norms.reshape(groups, -1).repeat_interleave(weight.shape[0] // groups, dim=0)
    return per_out.reshape(*per_out.shape, *([1] * (weight.dim() - 2))).expand_as(weight)


@SCORERS.register("activation")
class ActivationScorer(Scorer):
    """Wanda score, ``score(W_ij) = |W_ij| · ‖x_j‖₂``.

    Source: Sun, Liu, Bair & Kolter, "A Simple and Effective Pruning Approach for Large
    Language Models" (Wanda), ICLR 2024 (arXiv 2023). ``x_j`` is the j-th input feature of
    the layer collected with forward hooks over all calibration samples; for convolutions
    it is input channel j over batch and spatial positions, broadcast over the kernel (see
    :func:`input_feature_norms`). A weight reading an input that is always zero scores 0.
    Channel score: sum over the filter. Needs calibration data.
    """

    name = "activation"
    needs_data = True

    def _weight_scores(
        self, model: nn.Module, layers: Mapping[str, nn.Module], calibration: Calibration | None
    ) -> dict[str, Tensor]:
        assert calibration is not None
        norms = input_feature_norms(model, layers, calibration)
        return {
            name: layer.weight.detach().abs().float() * broadcast_inputs(norms[name], layer)
            for name, layer in layers.items()
        }
