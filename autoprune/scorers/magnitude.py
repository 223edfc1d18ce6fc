"""``magnitude``: the absolute value of each weight."""

from __future__ import annotations

from typing import Mapping

from torch import Tensor, nn

from autoprune.scorers._base import SCORERS, Calibration, Scorer


@SCORERS.register("magnitude")
class MagnitudeScorer(Scorer):
    """Weight magnitude, ``score(w) = |w|``.

    Source: Han, Pool, Tran & Dally, "Learning both Weights and Connections for Efficient
    Neural Networks", NeurIPS 2015. Small weights contribute little to any output, so they
    go first. The channel score is the default sum over the filter, i.e. the filter's L1
    norm (the criterion of Li et al. 2017). Data-free.
    """

    name = "magnitude"

    def _weight_scores(
        self, model: nn.Module, layers: Mapping[str, nn.Module], calibration: Calibration | None
    ) -> dict[str, Tensor]:
        return {name: layer.weight.detach().abs() for name, layer in layers.items()}
