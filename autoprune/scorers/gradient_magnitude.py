"""``gradient_magnitude``: weight magnitude plus a weighted gradient term."""

from __future__ import annotations

from typing import Mapping

from torch import Tensor, nn

from autoprune.errors import AutopruneError
from autoprune.scorers._base import SCORERS, Calibration, Scorer
from autoprune.scorers.gradient import mean_abs_gradients


@SCORERS.register("gradient_magnitude")
class GradientMagnitudeScorer(Scorer):
    """``score(w) = |w| + λ · mean_b |∂L_b/∂w|`` with ``λ`` = parameter ``lam`` (default 1.0).

    A blend of the magnitude criterion (Han et al., NeurIPS 2015) with first-order
    sensitivity of the loss (Mozer & Smolensky, "Skeletonization", NeurIPS 1988); λ ≥ 0
    trades the two and is searchable (λ = 0 is ``magnitude``). The gradient term is the
    one of ``gradient``. An already-zero weight scores 0 (its gradient term is dropped) so
    masks stay put. Channel score: sum over the filter. Needs calibration data.
    """

    name = "gradient_magnitude"
    needs_data = True
    defaults = {"lam": 1.0}

    def _check_params(self) -> None:
        if self.params["lam"] < 0:
            raise AutopruneError(f"scorer 'gradient_magnitude': lam must be >= 0, got {self.params['lam']}")

    def _weight_scores(
        self, model: nn.Module, layers: Mapping[str, nn.Module], calibration: Calibration | None
    ) -> dict[str, Tensor]:
        assert calibration is not None
        grads = mean_abs_gradients(model, layers, calibration)
        lam = float(self.params["lam"])
        return {name: layer.weight.detach().abs() + lam * grads[name] for name, layer in layers.items()}
