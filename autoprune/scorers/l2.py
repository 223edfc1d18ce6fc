"""``l2``: filters ranked by their L2 norm."""

from __future__ import annotations

from typing import Mapping

from torch import Tensor, nn

from autoprune.scorers._base import SCORERS, Calibration, Scorer


@SCORERS.register("l2")
class L2Scorer(Scorer):
    """Filter norm, ``score(channel o) = ‖W_o‖₂`` (the L2 norm of the whole filter).

    Source: Li, Kadav, Durdanovic, Samet & Graf, "Pruning Filters for Efficient ConvNets",
    ICLR 2017. The paper ranks filters by their **L1** norm; this scorer uses the **L2**
    norm (the ``magnitude`` scorer's channel score is the L1 variant). For unstructured use
    the weight score is ``|w|``, the same as ``magnitude``. Data-free.
    """

    name = "l2"

    def _weight_scores(
        self, model: nn.Module, layers: Mapping[str, nn.Module], calibration: Calibration | None
    ) -> dict[str, Tensor]:
        return {name: layer.weight.detach().abs() for name, layer in layers.items()}

    def _channel_scores(
        self, model: nn.Module, layers: Mapping[str, nn.Module], calibration: Calibration | None
    ) -> dict[str, Tensor]:
        return {name: layer.weight.detach().float().flatten(1).norm(dim=1) for name, layer in layers.items()}
