"""The :class:`Scorer` interface, the ``SCORERS`` registry and :func:`make_scorer`."""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Mapping

import torch
from torch import Tensor, nn

from autoprune.errors import AutopruneError
from autoprune.registry import Registry

Calibration = list[tuple[Tensor, Tensor]]


class Scorer(abc.ABC):
    """Base class for importance criteria.

    A scorer says how much a model would lose if a weight or a channel were removed. Pruning
    removes the *lowest*-scoring weights or channels first, so a score of 0 means "safe to
    remove" and larger means more important. Scores are comparable within a layer; whether
    they are comparable *across* layers depends on the criterion, which is why allocations
    such as ``lamp`` or ``erk`` exist.

    Every scorer answers at two granularities:

    * :meth:`weight_scores` gives one non-negative score per weight, shaped like
      ``layer.weight``, for unstructured (mask) pruning;
    * :meth:`channel_scores` gives one score per *output* channel (dim 0 of ``layer.weight``),
      shaped ``(out_channels,)``, for structured pruning. By default it is the **sum** of the
      channel's weight scores over all dims but 0; criteria with a natural channel
      definition (filter norm, Taylor expansion of a channel's removal, response, entropy)
      override it.

    Data-free scorers (``needs_data = False``) look only at the weights. The others need
    *calibration* data: a list of ``(inputs, labels)`` batches from the training split,
    run through the model in **eval mode** (batch-norm statistics and dropout untouched)
    with cross-entropy as the loss. Scoring never changes the model: weights, ``.grad``
    buffers, ``requires_grad`` flags and each module's train/eval mode are as before.

    A weight that is exactly zero is treated as already pruned: every scorer except
    ``random`` and ``gradient`` (class attribute ``zero_stays_zero``) gives it score 0, so
    masks stay put when scores are recomputed during gradual pruning.

    Subclasses set :attr:`name`, :attr:`needs_data`, :attr:`defaults` (their parameters and
    default values) and implement :meth:`_weight_scores` (and optionally
    :meth:`_channel_scores`); they are registered in :data:`SCORERS`.

    Example::

        layers = prunable_layers(model)                 # {"features.0": Conv2d, ...}
        scorer = make_scorer("taylor")
        scores = scorer(model, layers, calibration)     # {"features.0": tensor([...]), ...}
        weakest = scores["features.0"].argsort()[:4]    # the 4 channels pruned first
    """

    name: ClassVar[str] = ""
    needs_data: ClassVar[bool] = False
    zero_stays_zero: ClassVar[bool] = True
    defaults: ClassVar[Mapping[str, float | int]] = {}

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            valid = ", ".join(self.defaults) or "none"
            raise AutopruneError(
                f"scorer {self.name!r}: unknown parameter {unknown[0]!r}; valid parameters: {valid}"
            )
        self.params: dict[str, float | int] = {
            key: _coerce(self.name, key, params.get(key, default), default)
            for key, default in self.defaults.items()
        }
        self._check_params()

    def _check_params(self) -> None:
        """Raise :class:`AutopruneError` if a parameter value is out of range."""

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self.params.items())
        return f"{type(self).__name__}({args})"

    def weight_scores(
        self, model: nn.Module, layers: Mapping[str, nn.Module], calibration: Calibration | None = None
    ) -> dict[str, Tensor]:
        """One non-negative score per weight: ``{name: tensor shaped like layer.weight}``."""
        self._check_calibration(calibration)
        scores = self._weight_scores(model, layers, calibration)
        out = {}
        for name, layer in layers.items():
            score = scores[name].detach().float()
            if self.zero_stays_zero:
                score = score * (layer.weight.detach() != 0)
            out[name] = score
        return out

    def channel_scores(
        self, model: nn.Module, layers: Mapping[str, nn.Module], calibration: Calibration | None = None
    ) -> dict[str, Tensor]:
        """One score per output channel: ``{name: tensor of shape (out_channels,)}``."""
        self._check_calibration(calibration)
        return {name: s.detach().float() for name, s in self._channel_scores(model, layers, calibration).items()}

    def __call__(
        self, model: nn.Module, layers: Mapping[str, nn.Module], calibration: Calibration | None = None
    ) -> dict[str, Tensor]:
        """Channel scores (:meth:`channel_scores`), as Torch-Pruning's importances return."""
        return self.channel_scores(model, layers, calibration)

    @abc.abstractmethod
    def _weight_scores(
        self, model: nn.Module, layers: Mapping[str, nn.Module], calibration: Calibration | None
    ) -> dict[str, Tensor]:
        """Raw weight scores; the caller detaches them and zeroes already-zero weights."""
        raise NotImplementedError

    def _channel_scores(
        self, model: nn.Module, layers: Mapping[str, nn.Module], calibration: Calibration | None
    ) -> dict[str, Tensor]:
        """Default channel score: the sum of the channel's weight scores (dims 1.. summed)."""
        scores = self.weight_scores(model, layers, calibration)
        return {name: score.flatten(1).sum(1) for name, score in scores.items()}

    def _check_calibration(self, calibration: Calibration | None) -> None:
        if self.needs_data and not calibration:
            raise AutopruneError(
                f"scorer {self.name!r} needs calibration data (batches of the training split); "
                "got none: use a data-free scorer (magnitude, l2, lamp, random) or give calibration batches"
            )


SCORERS: Registry[type[Scorer]] = Registry("scorer")


def make_scorer(name: str, params: Mapping[str, Any] | None = None, *, where: str = "") -> Scorer:
    """The scorer registered as ``name`` built with ``params``; ``where`` prefixes errors."""
    cls = SCORERS.get(name, where=where)
    try:
        return cls(**dict(params or {}))
    except AutopruneError as error:
        raise AutopruneError(f"{where}{error}") from None


def _coerce(scorer: str, key: str, value: Any, default: float | int) -> float | int:
    """``value`` as the type of ``default``; integral floats are accepted for int parameters."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AutopruneError(f"scorer {scorer!r}: parameter {key!r} must be a number, got {value!r}")
    if isinstance(default, int):
        if float(value) != int(value):
            raise AutopruneError(f"scorer {scorer!r}: parameter {key!r} must be an integer, got {value!r}")
        return int(value)
    return float(value)


def out_channel_broadcast(values: Tensor, weight: Tensor) -> Tensor:
    """``values`` of shape ``(out_channels,)`` broadcast to ``weight``'s shape."""
    return values.reshape(-1, *([1] * (weight.dim() - 1))).expand_as(weight)


def lamp_scores(magnitudes: Tensor) -> Tensor:
    """LAMP scores (Lee et al. 2021) of one layer's ``magnitudes`` (any shape, same shape out).

    With the squared magnitudes sorted ascending, ``score(u) = w_u² / Σ_{v ≥ u} w_v²``: a
    weight's share of everything at least as large as itself. Ties are ordered by flat index
    (stable sort); a layer of zeros scores 0 everywhere.
    """
    squared = magnitudes.detach().double().flatten().pow(2)
    ordered, order = torch.sort(squared, stable=True)
    suffix = ordered.flip(0).cumsum(0).flip(0)
    sorted_scores = torch.where(suffix > 0, ordered / suffix.clamp_min(torch.finfo(suffix.dtype).tiny), 0.0)
    scores = torch.empty_like(squared)
    scores[order] = sorted_scores
    dtype = magnitudes.dtype if magnitudes.is_floating_point() else torch.float32
    return scores.reshape(magnitudes.shape).to(dtype)

