"""``entropy``: channels whose output carries little information go first."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

from autoprune.errors import AutopruneError
from autoprune.scorers._base import SCORERS, Calibration, Scorer, out_channel_broadcast
from autoprune.scorers._calibration import run_forward


def channel_entropy(values: Tensor, bins: int) -> Tensor:
    """Histogram entropy (nats) of each column of ``values`` ``(samples, channels)`` → ``(channels,)``.

    Each channel gets ``bins`` equal-width bins spanning its own observed [min, max]. A
    channel whose range is at most 1e-6 of its magnitude is constant and scores 0.
    """
    values = values.double()
    low, high = values.min(0).values, values.max(0).values
    width = high - low
    constant = width <= 1e-6 * torch.maximum(low.abs(), high.abs())
    scaled = (values - low) / torch.where(constant, torch.ones_like(width), width)
    index = (scaled * bins).floor().long().clamp(0, bins - 1)
    counts = torch.zeros(values.shape[1], bins, dtype=torch.float64, device=values.device)
    counts.scatter_add_(1, index.T, torch.ones_like(index.T, dtype=torch.float64))
    p = counts / values.shape[0]
    entropy = -torch.special.xlogy(p, p).sum(1)
    return torch.where(constant, torch.zeros_like(entropy), entropy).float()


def channel_outputs(
    model: nn.Module, layers: Mapping[str, nn.Module], calibration: Calibration
) -> dict[str, Tensor]:
    """Each layer's output per sample and channel, ``(samples, out_channels)``.

    Convolution outputs are averaged over spatial positions (global average pooling, as in
    Luo & Wu); ``Linear`` outputs are taken row by row.
    """
    collected: dict[str, list[Tensor]] = {name: [] for name in layers}

    def accumulate(name: str, module: nn.Module, inputs: Tensor, output: Tensor) -> None:
        out = output.float()
        if isinstance(module, nn.Linear):
            collected[name].append(out.reshape(-1, out.shape[-1]))
        else:
            if out.dim() == module.weight.dim() - 1:
                out = out.unsqueeze(0)
            collected[name].append(out.flatten(2).mean(2))

    run_forward(model, layers, calibration, accumulate)
    return {
        name: torch.cat(parts) if parts else torch.zeros(1, layers[name].weight.shape[0])
        for name, parts in collected.items()
    }


@SCORERS.register("entropy")
class EntropyScorer(Scorer):
    """Channel score ``= H(a_o) = -Σ_k p_k log p_k``, the entropy of channel o's outputs.

    Source: Luo & Wu, "An Entropy-based Pruning Method for CNN Compression", arXiv
    1706.05791, 2017. a_o is the channel's output per calibration sample (spatially
    averaged for convolutions), taken at the layer's output (before any normalization or
    nonlinearity, which the layer itself does not know about). Entropy is estimated with a
    histogram of ``bins`` (parameter, default 32; the paper uses 100) equal-width bins over
    the channel's observed range; a channel whose output hardly varies carries little
    information and is pruned first (a constant channel scores 0).

    Weight score: the channel's score broadcast to all its weights (``score(W_oi) = H(a_o)``),
    so unstructured pruning with this scorer removes whole low-entropy filters first.
    Needs calibration data.
    """

    name = "entropy"
    needs_data = True
    defaults = {"bins": 32}

    def _check_params(self) -> None:
        if self.params["bins"] < 2:
            raise AutopruneError(f"scorer 'entropy': bins must be >= 2, got {self.params['bins']}")

    def _channel_scores(
        self, model: nn.Module, layers: Mapping[str, nn.Module], calibration: Calibration | None
    ) -> dict[str, Tensor]:
        assert calibration is not None
        outputs = channel_outputs(model, layers, calibration)
        return {name: channel_entropy(values, int(self.params["bins"])) for name, values in outputs.items()}

    def _weight_scores(
        self, model: nn.Module, layers: Mapping[str, nn.Module], calibration: Calibration | None
    ) -> dict[str, Tensor]:
        channels = self._channel_scores(model, layers, calibration)
        return {
            name: out_channel_broadcast(channels[name].to(layer.weight.device), layer.weight).clone()
            for name, layer in layers.items()
        }
