"""``gradient``: how strongly the loss reacts to each weight."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

from autoprune.scorers._base import SCORERS, Calibration, Scorer
from autoprune.scorers._calibration import run_gradients


def mean_abs_gradients(
    model: nn.Module, layers: Mapping[str, nn.Module], calibration: Calibration
) -> dict[str, Tensor]:
    """``Σ_b n_b |∂L_b/∂W| / Σ_b n_b`` per layer: absolute per-batch gradients, averaged.

    Averaging absolute values (rather than taking the absolute value of the averaged
    gradient) keeps the signal of a trained model, whose mean gradient over the training
    data is close to zero while per-batch gradients are not.
    """
    sums = {name: torch.zeros_like(layer.weight, dtype=torch.float32) for name, layer in layers.items()}
    count = 0

    def accumulate(batch_size: int, grads: dict[str, Tensor]) -> None:
        nonlocal count
        count += batch_size
        for name, grad in grads.items():
            sums[name] += batch_size * grad.abs()

    run_gradients(model, layers, calibration, accumulate)
    return {name: total / max(count, 1) for name, total in sums.items()}


@SCORERS.register("gradient")
class GradientScorer(Scorer):
    """Gradient magnitude, ``score(w) = mean_b |∂L_b/∂w|`` over calibration batches b.

    L_b is the mean cross-entropy of batch b; batches are weighted by their size. This is
    the mean of absolute per-batch gradients (see :func:`mean_abs_gradients`), not the
    absolute accumulated gradient. Weights the loss is sensitive to are kept; it is the
    sensitivity term of first-order criteria (Mozer & Smolensky, "Skeletonization",
    NeurIPS 1988; SNIP, Lee et al. ICLR 2019, multiplies it by ``|w|``, see ``taylor``).
    Already-zero weights keep their gradient score, so this criterion can bring pruned
    weights back under a dynamic schedule. Channel score: sum over the filter. Needs
    calibration data.
    """

    name = "gradient"
    needs_data = True
    zero_stays_zero = False

    def _weight_scores(
        self, model: nn.Module, layers: Mapping[str, nn.Module], calibration: Calibration | None
    ) -> dict[str, Tensor]:
        assert calibration is not None
        return mean_abs_gradients(model, layers, calibration)
