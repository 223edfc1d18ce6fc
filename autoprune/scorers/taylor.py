"""``taylor``: first-order Taylor estimate of the loss change when a weight or channel is removed."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

from autoprune.scorers._base import SCORERS, Calibration, Scorer
from autoprune.scorers._calibration import run_gradients
from autoprune.scorers.gradient import mean_abs_gradients


@SCORERS.register("taylor")
class TaylorScorer(Scorer):
    """First-order Taylor importance.

    Removing a set S of weights changes the loss by ``ΔL ≈ -Σ_{u∈S} w_u g_u`` (g = ∂L/∂w),
    so:

    * weight score ``= mean_b |w · g_b|``;
    * channel score ``= mean_b |Σ_{u ∈ filter o} w_u g_{b,u}|``, the Taylor estimate of
      removing the whole filter at once (signs inside a filter may cancel).

    Sources: Molchanov, Tyree, Karras, Aila & Kautz, "Pruning Convolutional Neural Networks
    for Resource Efficient Inference", ICLR 2017; Molchanov, Mallya, Tyree, Frosio & Kautz,
    "Importance Estimation for Neural Network Pruning", CVPR 2019 (which averages over
    mini-batches like here, but squares instead of taking ``| |``). g_b is the gradient of
    batch b's mean cross-entropy; batches are weighted by size; taking ``| |`` per batch
    keeps the signal of a trained model whose average gradient is near zero. Needs
    calibration data.
    """

    name = "taylor"
    needs_data = True

    def _weight_scores(
        self, model: nn.Module, layers: Mapping[str, nn.Module], calibration: Calibration | None
    ) -> dict[str, Tensor]:
        assert calibration is not None
        grads = mean_abs_gradients(model, layers, calibration)
        return {name: layer.weight.detach().abs() * grads[name] for name, layer in layers.items()}

    def _channel_scores(
        self, model: nn.Module, layers: Mapping[str, nn.Module], calibration: Calibration | None
    ) -> dict[str, Tensor]:
        assert calibration is not None
        weights = {name: layer.weight.detach().float() for name, layer in layers.items()}
        sums = {name: torch.zeros(w.shape[0], device=w.device) for name, w in weights.items()}
        count = 0

        def accumulate(batch_size: int, grads: dict[str, Tensor]) -> None:
            nonlocal count
            count += batch_size
            for name, grad in grads.items():
                sums[name] += batch_size * (weights[name] * grad).flatten(1).sum(1).abs()

        run_gradients(model, layers, calibration, accumulate)
        return {name: total / max(count, 1) for name, total in sums.items()}
