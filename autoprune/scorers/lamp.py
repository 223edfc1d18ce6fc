"""``lamp``: layer-adaptive magnitude scores, comparable across layers."""

from __future__ import annotations

from typing import Mapping

from torch import Tensor, nn

from autoprune.scorers._base import SCORERS, Calibration, Scorer, lamp_scores


@SCORERS.register("lamp")
class LampScorer(Scorer):
    """LAMP score, ``score(u) = w_u² / Σ_{v ≥ u} w_v²`` over one layer's weights sorted by ``w²``.

    Source: Lee, Park, Mo, Ahn & Shin, "Layer-adaptive Sparsity for the Magnitude-based
    Pruning", ICLR 2021. Within a layer it ranks like magnitude; across layers it is
    normalized (the largest weight of every layer scores 1), so one global threshold on it
    gives a sensible per-layer sparsity. The channel score is LAMP over the channels' L2
    norms (``w_u²`` replaced by ``‖W_o‖₂²``). Data-free; see :func:`lamp_scores`.
    """

    name = "lamp"

    def _weight_scores(
        self, model: nn.Module, layers: Mapping[str, nn.Module], calibration: Calibration | None
    ) -> dict[str, Tensor]:
        return {name: lamp_scores(layer.weight.detach().float()) for name, layer in layers.items()}

    def _channel_scores(
        self, model: nn.Module, layers: Mapping[str, nn.Module], calibration: Calibration | None
    ) -> dict[str, Tensor]:
        return {
            name: lamp_scores(layer.weight.detach().float().flatten(1).norm(dim=1)) for name, layer in layers.items()
        }
