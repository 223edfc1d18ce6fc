"""``normalized_response``: how strongly a unit responds to the calibration data."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

from autoprune.scorers._base import SCORERS, Calibration, Scorer, out_channel_broadcast
from autoprune.scorers._calibration import run_forward


def mean_abs_response(
    model: nn.Module, layers: Mapping[str, nn.Module], calibration: Calibration
) -> dict[str, Tensor]:
    """Per output channel, the mean of ``|output − bias|`` over calibration samples.

    For ``Linear`` the mean runs over all rows (leading dims); for ``ConvNd`` over batch and
    all output positions. ``output − bias`` is ``⟨x, w⟩``, the response without the bias.
    """
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}

    def accumulate(name: str, module: nn.Module, inputs: Tensor, output: Tensor) -> None:
        out = output.float()
        if isinstance(module, nn.Linear):
            rows = out.reshape(-1, out.shape[-1])
        else:
            if out.dim() == module.weight.dim() - 1:
                out = out.unsqueeze(0)
            rows = out.transpose(0, 1).reshape(out.shape[1], -1).T
        if module.bias is not None:
            rows = rows - module.bias.detach().float()
        sums[name] = sums.get(name, 0) + rows.abs().sum(0)
        counts[name] = counts.get(name, 0) + rows.shape[0]

    run_forward(model, layers, calibration, accumulate)
    return {
        name: sums[name] / counts[name] if name in sums else torch.zeros(layer.weight.shape[0])
        for name, layer in layers.items()
    }


@SCORERS.register("normalized_response")
class NormalizedResponseScorer(Scorer):
    """Channel score ``= mean |⟨x, W_o⟩| / sqrt(‖W_o‖₂)`` over calibration samples (and positions).

    The mean absolute response of a unit is the "mean activation" criterion compared by
    Molchanov et al., "Pruning Convolutional Neural Networks for Resource Efficient
    Inference", ICLR 2017 (measured here before the bias and any nonlinearity). Dividing by
    the square root of the filter's L2 norm is this project's choice, not the paper's: the
    response grows linearly with the filter's scale, the normalized score only with its
    square root, so a unit is not kept merely for having large weights and units that
    respond strongly *for their size* are kept. A filter of zeros scores 0.

    Weight score: the unit's score times ``|w|`` (``score(W_oi) = s_o · |W_oi|``), so weights
    of weak units go first and, within a unit, small weights first. Needs calibration data.
    """

    name = "normalized_response"
    needs_data = True

    def _channel_scores(
        self, model: nn.Module, layers: Mapping[str, nn.Module], calibration: Calibration | None
    ) -> dict[str, Tensor]:
        assert calibration is not None
        response = mean_abs_response(model, layers, calibration)
        out = {}
        for name, layer in layers.items():
            norm = layer.weight.detach().float().flatten(1).norm(dim=1)
            score = response[name].to(norm.device) / norm.sqrt().clamp_min(torch.finfo(norm.dtype).tiny)
            out[name] = torch.where(norm > 0, score, torch.zeros_like(score))
        return out

    def _weight_scores(
        self, model: nn.Module, layers: Mapping[str, nn.Module], calibration: Calibration | None
    ) -> dict[str, Tensor]:
        channels = self._channel_scores(model, layers, calibration)
        return {
            name: out_channel_broadcast(channels[name], layer.weight) * layer.weight.detach().abs()
            for name, layer in layers.items()
        }
