"""``random``: seeded uniform scores, the baseline every criterion must beat."""

from __future__ import annotations

import zlib
from typing import Mapping

import torch
from torch import Tensor, nn

from autoprune.scorers._base import SCORERS, Calibration, Scorer


@SCORERS.register("random")
class RandomScorer(Scorer):
    """Uniform random scores in [0, 1), reproducible from the parameter ``seed`` (default 0).

    The baseline of Liu et al., "Rethinking the Value of Network Pruning" (ICLR 2019) and of
    Blalock et al. (MLSys 2020). Each layer draws from its own generator seeded from
    ``seed`` and the layer's name, so the same seed gives the same scores, and a layer's
    scores do not depend on which other layers are scored. Channel scores are drawn
    directly, one per channel (not summed). Already-zero weights are not forced to 0.
    """

    name = "random"
    zero_stays_zero = False
    defaults = {"seed": 0}

    def _draw(self, name: str, shape: torch.Size, like: Tensor) -> Tensor:
        mixed = (int(self.params["seed"]) * 0x9E3779B1 + zlib.crc32(name.encode())) % 2**63
        generator = torch.Generator().manual_seed(mixed)
        return torch.rand(shape, generator=generator).to(like.device)

    def _weight_scores(
        self, model: nn.Module, layers: Mapping[str, nn.Module], calibration: Calibration | None
    ) -> dict[str, Tensor]:
        return {name: self._draw(name, layer.weight.shape, layer.weight) for name, layer in layers.items()}

    def _channel_scores(
        self, model: nn.Module, layers: Mapping[str, nn.Module], calibration: Calibration | None
    ) -> dict[str, Tensor]:
        return {
            name: self._draw(name, layer.weight.shape[:1], layer.weight) for name, layer in layers.items()
        }
