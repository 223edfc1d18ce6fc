"""Per-layer sparsity: how much of each prunable layer a policy removes.

A policy gives one overall target (or, for ``per_layer``, one value per layer); an
*allocation* turns it into a per-layer sparsity, the fraction of a layer's weights
(``unstructured`` granularity) or of its output channels (``channel`` granularity) that is
removed. Layers do not tolerate pruning equally: a small first convolution or a classifier
is fragile, a wide middle layer is not, and the allocations differ in how they account for
that:

* ``per_layer``: the values given explicitly (what the search samples per layer);
* ``uniform``: the target everywhere;
* ``global``: one score threshold across all layers (scores must be comparable across
  layers);
* ``lamp``: one threshold on LAMP scores, magnitudes normalized per layer (Lee et al. 2021);
* ``erk``: density proportional to the Erdős–Rényi-Kernel ratio (Evci et al. 2020), so
  small layers stay denser.

Rules shared by all allocations (enforced by :meth:`Allocation.allocate`):

* the overall sparsity counts weights: ``Σ s_l · numel_l / Σ numel_l`` over the
  **non-excluded** layers. Under channel granularity removing a fraction s of a layer's
  output channels counts as s of that layer's own weights (the input columns of the next
  layer that disappear with them are not counted, so the real sparsity is higher);
* excluded layers get 0.0 and are outside the budget: the target is met over the rest;
* every layer keeps at least ``max(1, ceil(min_density · size))`` weights (or channels),
  so no layer is ever emptied; layers in ``protected_channels`` (the classifier's output)
  keep all channels under channel granularity;
* when such a cap binds, the budget goes to the other layers; the achieved overall sparsity
  equals the target within one weight (channel granularity: one channel) per layer, and if
  the caps make that impossible an :class:`AllocationWarning` says so and how to fix it.

:func:`masks_from_scores` and :func:`channels_to_keep` are the pure ranking helpers that
turn scores and per-layer sparsity into what the pruning code removes; :func:`kept_channels`
turns a layer's sparsity into the channel count it keeps, rounded to a multiple of the
policy's ``round_to`` (CPU kernels vectorise 8 or 16 channels at a time, so a layer of 56
channels runs faster than one of 53). Example::

    shapes = layer_shapes(prunable_layers(model))
    sparsity = allocate("erk", shapes, 0.9, excluded={"features.0"})
    masks = masks_from_scores(MagnitudeScorer().weight_scores(model, layers), sparsity)
"""

from __future__ import annotations

import abc
import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Collection, Mapping

import torch
from torch import Tensor, nn

from autoprune.errors import AutopruneError
from autoprune.registry import Registry
from autoprune.scorers import lamp_scores

GRANULARITIES = ("unstructured", "channel")


class AllocationWarning(UserWarning):
    """The allocation could not give what was asked (target unreachable, values capped)."""


@dataclass(frozen=True)
class LayerShape:
    """What an allocation needs to know about one layer: its weight's shape."""

    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def out_channels(self) -> int:
        return self.shape[0]

    @property
    def channel_numel(self) -> int:
        """Weights per output channel (``numel / out_channels``)."""
        return self.numel // self.out_channels


def layer_shapes(layers: Mapping[str, nn.Module | LayerShape]) -> dict[str, LayerShape]:
    """``{name: LayerShape}`` of prunable layers (modules with a ``.weight``), in order."""
    return {
        name: layer if isinstance(layer, LayerShape) else LayerShape(tuple(layer.weight.shape))
        for name, layer in layers.items()
    }


@dataclass
class AllocationProblem:
    """The non-excluded layers of one allocation call and their limits.

    Attributes:
        shapes: the non-excluded layers, in order.
        target: the overall sparsity asked for (``None`` only for ``per_layer``).
        granularity: ``unstructured`` or ``channel``.
        units: per layer, the number of things that can be removed (weights or channels).
        max_removed: per layer, how many units may go at most (min density, protection).
        excluded: the layers left out of ``shapes``: excluded ones and, under channel
            granularity, the protected output layer (a ``per_layer`` value for it is ignored).
    """

    shapes: dict[str, LayerShape]
    target: float | None
    granularity: str
    units: dict[str, int]
    max_removed: dict[str, int]
    excluded: set[str]

    @property
    def caps(self) -> dict[str, float]:
        """The largest sparsity each layer may get."""
        return {name: self.max_removed[name] / self.units[name] for name in self.shapes}

    @property
    def numel(self) -> dict[str, int]:
        return {name: shape.numel for name, shape in self.shapes.items()}

    def unit_cost(self, name: str) -> int:
        """Weights removed with one unit: 1, or the channel's weight count."""
        return 1 if self.granularity == "unstructured" else self.shapes[name].channel_numel

    def removed(self, sparsity: Mapping[str, float]) -> float:
        """Weights removed by ``sparsity`` (numel-weighted)."""
        return sum(sparsity[name] * shape.numel for name, shape in self.shapes.items())

    @property
    def total(self) -> int:
        return sum(shape.numel for shape in self.shapes.values())


class Allocation(abc.ABC):
    """Base class of allocations: from a policy's target to one sparsity per layer.

    The shared rules (exclusion, minimum density, protected output channels, the budget
    check and its warning) live in :meth:`allocate`; a subclass only implements
    :meth:`_allocate` for the non-excluded layers, within :attr:`AllocationProblem.caps`.
    """

    name: ClassVar[str] = ""
    uses_target: ClassVar[bool] = True

    def allocate(
        self,
        layers: Mapping[str, nn.Module | LayerShape],
        target: float | None,
        *,
        scores: Mapping[str, Tensor] | None = None,
        explicit: Mapping[str, float] | None = None,
        min_density: float = 0.01,
        excluded: Collection[str] = (),
        protected_channels: Collection[str] = (),
        granularity: str = "unstructured",
    ) -> dict[str, float]:
        """Sparsity per layer, ``{name: fraction removed}`` for every layer of ``layers``.

        Args:
            layers: prunable layers in order, as modules or :class:`LayerShape`.
            target: overall sparsity in [0, 1) over the non-excluded layers; ignored by
                ``per_layer``.
            scores: per layer, weight-shaped (unstructured) or ``(out_channels,)`` (channel)
                scores; used by ``global`` and ``lamp``.
            explicit: per-layer sparsity, used by ``per_layer``.
            min_density: smallest fraction of each layer that is kept (at least one unit).
            excluded: layers never pruned and left out of the budget.
            protected_channels: layers whose output channels are never removed (channel
                granularity only; the classifier's output layer).
            granularity: ``unstructured`` (weights) or ``channel`` (output channels).
        """
        shapes = layer_shapes(layers)
        self._check_arguments(shapes, target, min_density, excluded, protected_channels, granularity)
        problem = _problem(shapes, target, min_density, set(excluded), set(protected_channels), granularity)
        modules = {name: layer for name, layer in layers.items() if isinstance(layer, nn.Module)}
        if problem.shapes:
            result = self._allocate(problem, scores=scores, explicit=explicit, modules=modules)
            if self.uses_target:
                self._check_budget(problem, result, min_density, set(protected_channels))
        else:
            result = {}
            if target:
                warnings.warn(
                    f"allocation {self.name!r}: every layer is excluded, so nothing is pruned and the "
                    f"target {target:g} is not reached; exclude fewer layers.",
                    AllocationWarning,
                    stacklevel=2,
                )
        return {name: float(result.get(name, 0.0)) for name in shapes}

    @abc.abstractmethod
    def _allocate(
        self,
        problem: AllocationProblem,
        *,
        scores: Mapping[str, Tensor] | None,
        explicit: Mapping[str, float] | None,
        modules: Mapping[str, nn.Module],
    ) -> dict[str, float]:
        """Sparsity of each layer in ``problem.shapes``, each within ``problem.caps``."""
        raise NotImplementedError

    def _check_arguments(
        self,
        shapes: dict[str, LayerShape],
        target: float | None,
        min_density: float,
        excluded: Collection[str],
        protected: Collection[str],
        granularity: str,
    ) -> None:
        if granularity not in GRANULARITIES:
            raise AutopruneError(f"unknown granularity {granularity!r}; allowed: {', '.join(GRANULARITIES)}")
        if self.uses_target and (target is None or not 0 <= target < 1):
            raise AutopruneError(f"allocation {self.name!r} needs a target sparsity in [0, 1), got {target}")
        if not 0 <= min_density <= 1:
            raise AutopruneError(f"min_layer_density must be in [0, 1], got {min_density}")
        unknown = sorted(set(excluded) - set(shapes))
        if unknown:
            raise AutopruneError(
                f"excluded layer {unknown[0]!r} is not a prunable layer; prunable layers: {', '.join(shapes)}"
            )
        if set(protected) - set(shapes):
            raise ValueError(f"protected layers {sorted(set(protected) - set(shapes))} are not prunable layers")

    def _check_budget(
        self, problem: AllocationProblem, result: Mapping[str, float], min_density: float, protected: set[str]
    ) -> None:
        """Warn when the achieved overall sparsity misses the target by more than one unit per layer."""
        assert problem.target is not None
        achieved = problem.removed(result)
        wanted = problem.target * problem.total
        tolerance = sum(problem.unit_cost(name) for name in problem.shapes) + 1e-9 * problem.total
        if abs(achieved - wanted) <= tolerance:
            return
        unit = "weights" if problem.granularity == "unstructured" else "output channels"
        capacity = problem.removed(problem.caps) / problem.total
        warnings.warn(
            f"allocation {self.name!r}: overall sparsity is {achieved / problem.total:.4f} instead of the "
            f"target {problem.target:.4f} because at most {capacity:.4f} of the weights of the "
            f"{len(problem.shapes)} non-excluded layers can be removed: every layer keeps at least max(1, "
            f"ceil({min_density:g} x size)) of its {unit}. Lower the target, lower "
            "min_layer_density, or exclude fewer layers.",
            AllocationWarning,
            stacklevel=3,
        )


ALLOCATIONS: Registry[type[Allocation]] = Registry("allocation")


def allocate(
    method: str, layers: Mapping[str, nn.Module | LayerShape], target: float | None, **kwargs: Any
) -> dict[str, float]:
    """``ALLOCATIONS.get(method)().allocate(layers, target, **kwargs)``."""
    return ALLOCATIONS.get(method)().allocate(layers, target, **kwargs)


@ALLOCATIONS.register("per_layer")
class PerLayerAllocation(Allocation):
    """The sparsity given explicitly for each layer (``explicit``); ``target`` is ignored.

    Every non-excluded layer must have a value (values for excluded layers are ignored). A
    value above the layer's cap (min density, protected output) is lowered to the cap with
    an :class:`AllocationWarning`; the overall sparsity is whatever the values give.
    """

    name = "per_layer"
    uses_target = False

    def _allocate(
        self,
        problem: AllocationProblem,
        *,
        scores: Mapping[str, Tensor] | None,
        explicit: Mapping[str, float] | None,
        modules: Mapping[str, nn.Module],
    ) -> dict[str, float]:
        explicit = dict(explicit or {})
        unknown = [name for name in explicit if name not in problem.shapes and name not in problem.excluded]
        if unknown:
            raise AutopruneError(
                f"allocation per_layer: {unknown[0]!r} is not a prunable layer; prunable layers: "
                f"{', '.join(problem.shapes)}"
            )
        missing = [name for name in problem.shapes if name not in explicit]
        if missing:
            raise AutopruneError(f"allocation per_layer: no sparsity given for layers {', '.join(missing)}")
        for name, value in explicit.items():
            if not 0 <= value <= 1:
                raise AutopruneError(
                    f"allocation per_layer: sparsity of layer {name!r} must be in [0, 1], got {value}"
                )
        caps = problem.caps
        capped = [name for name in problem.shapes if explicit[name] > caps[name]]
        if capped:
            details = ", ".join(f"{name} {explicit[name]:g}->{caps[name]:.4f}" for name in capped)
            warnings.warn(
                f"allocation 'per_layer': lowered the sparsity of {details} because every layer keeps at "
                "least max(1, ceil(min_density x size)) of its weights or channels and a protected output "
                "layer keeps all channels; give these layers lower values or lower min_layer_density.",
                AllocationWarning,
                stacklevel=3,
            )
        return {name: min(float(explicit[name]), caps[name]) for name in problem.shapes}


@ALLOCATIONS.register("uniform")
class UniformAllocation(Allocation):
    """Every non-excluded layer gets the target sparsity.

    Where a cap binds (a layer too small for the target at its minimum density, or a
    protected output layer under channel granularity), the other layers share the
    remainder equally: they all get the same slightly higher sparsity ``θ``, chosen so the
    overall target is met exactly.
    """

    name = "uniform"

    def _allocate(
        self,
        problem: AllocationProblem,
        *,
        scores: Mapping[str, Tensor] | None,
        explicit: Mapping[str, float] | None,
        modules: Mapping[str, nn.Module],
    ) -> dict[str, float]:
        caps = problem.caps
        assert problem.target is not None
        if all(problem.target <= cap for cap in caps.values()):
            return {name: problem.target for name in problem.shapes}
        ones = {name: 1.0 for name in problem.shapes}
        return solve_clamped_affine(
            {name: 0.0 for name in problem.shapes}, ones, caps, problem.numel, problem.target * problem.total
        )


@ALLOCATIONS.register("erk")
class ErkAllocation(Allocation):
    """Erdős–Rényi-Kernel: ``density_l = ε · (Σ_d shape_d) / (Π_d shape_d)`` (weight shape).

    Source: Evci, Gale, Menick, Castro & Elsen, "Rigging the Lottery: Making All Tickets
    Winners", ICML 2020 (Erdős–Rényi for linear layers: Mocanu et al. 2018). A layer with
    few weights relative to its dimensions stays denser. ε is chosen so the overall density
    is ``1 − target``; layers whose density would exceed 1 are dense and layers that would
    fall below their minimum density are held there, and ε is re-solved for the rest. This
    is the paper's iterative capping, solved exactly (total sparsity is piecewise linear in
    ε, see :func:`solve_clamped_affine`). Under channel granularity the same fractions are
    applied to output channels.
    """

    name = "erk"

    def _allocate(
        self,
        problem: AllocationProblem,
        *,
        scores: Mapping[str, Tensor] | None,
        explicit: Mapping[str, float] | None,
        modules: Mapping[str, nn.Module],
    ) -> dict[str, float]:
        assert problem.target is not None
        ratio = {name: sum(shape.shape) / shape.numel for name, shape in problem.shapes.items()}
        return solve_clamped_affine(
            {name: 1.0 for name in problem.shapes},
            ratio,
            problem.caps,
            problem.numel,
            problem.target * problem.total,
        )


@ALLOCATIONS.register("global")
class GlobalAllocation(Allocation):
    """One score threshold across all non-excluded layers.

    Everything scoring below the threshold is removed, the threshold chosen so the removed
    weights reach the target. ``scores`` are weight-shaped (unstructured) or
    ``(out_channels,)`` (channel). Under channel granularity a channel counts as its number
    of weights (``numel / out_channels``), so removing a wide channel spends more budget;
    the chosen count of channels brings the removed weights closest to the target. A layer
    at its cap keeps its remaining units and the threshold moves on in the other layers.
    Ties are broken by layer order, then by index within the layer (as
    :func:`masks_from_scores` does), so the selection is deterministic. The result is
    exact counts: ``sparsity × units`` is an integer for every layer.
    """

    name = "global"

    def _allocate(
        self,
        problem: AllocationProblem,
        *,
        scores: Mapping[str, Tensor] | None,
        explicit: Mapping[str, float] | None,
        modules: Mapping[str, nn.Module],
    ) -> dict[str, float]:
        if scores is None:
            raise ValueError(f"allocation {self.name!r} needs scores")
        return threshold_allocation(problem, scores)


@ALLOCATIONS.register("lamp")
class LampAllocation(Allocation):
    """Global threshold on LAMP scores (Lee et al., "Layer-adaptive Sparsity for the
    Magnitude-based Pruning", ICLR 2021).

    ``scores``, if given, must already be LAMP scores (e.g. from the ``lamp`` scorer). If
    not, they are computed from the weights with :func:`autoprune.scorers.lamp_scores`: on
    ``|w|`` (unstructured) or on the output channels' L2 norms (channel); ``layers`` must
    then be modules, not shapes. Selection as in ``global``.
    """

    name = "lamp"

    def _allocate(
        self,
        problem: AllocationProblem,
        *,
        scores: Mapping[str, Tensor] | None,
        explicit: Mapping[str, float] | None,
        modules: Mapping[str, nn.Module],
    ) -> dict[str, float]:
        if scores is None:
            missing = [name for name in problem.shapes if name not in modules]
            if missing:
                raise ValueError("allocation 'lamp' without scores needs modules, not shapes, as layers")
            scores = {}
            for name in problem.shapes:
                weight = modules[name].weight.detach().float()
                if problem.granularity == "channel":
                    weight = weight.flatten(1).norm(dim=1)
                scores[name] = lamp_scores(weight.abs())
        return threshold_allocation(problem, scores)


def threshold_allocation(problem: AllocationProblem, scores: Mapping[str, Tensor]) -> dict[str, float]:
    """Remove the lowest-scoring units across all layers until the target is reached.

    Per layer only the ``max_removed`` lowest units are candidates (the rest is the kept
    minimum). Candidates are sorted by score (stable: layer order, then ascending score
    with index order on ties) and the prefix whose weight count is closest to
    ``target × total`` is removed. Returns ``removed_units / units`` per layer.
    """
    assert problem.target is not None
    candidates, costs, owners = [], [], []
    names = list(problem.shapes)
    for index, name in enumerate(names):
        score = _unit_scores(problem, name, scores)
        lowest = torch.sort(score, stable=True).values[: problem.max_removed[name]]
        candidates.append(lowest)
        costs.append(torch.full_like(lowest, float(problem.unit_cost(name)), dtype=torch.float64))
        owners.append(torch.full(lowest.shape, index, dtype=torch.long))
    all_scores = torch.cat(candidates)
    order = torch.sort(all_scores, stable=True).indices
    cumulative = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cat(costs)[order].cumsum(0)])
    count = int((cumulative - problem.target * problem.total).abs().argmin())
    removed = torch.bincount(torch.cat(owners)[order[:count]], minlength=len(names))
    return {name: int(removed[i]) / problem.units[name] for i, name in enumerate(names)}


def _unit_scores(problem: AllocationProblem, name: str, scores: Mapping[str, Tensor]) -> Tensor:
    if name not in scores:
        raise ValueError(f"no scores for layer {name!r}")
    shape = problem.shapes[name]
    expected = shape.shape if problem.granularity == "unstructured" else (shape.out_channels,)
    score = scores[name]
    if tuple(score.shape) != tuple(expected):
        raise ValueError(
            f"scores of layer {name!r} have shape {tuple(score.shape)}, expected {tuple(expected)} "
            f"for {problem.granularity} granularity"
        )
    return score.detach().flatten().double().cpu()


def solve_clamped_affine(
    alpha: Mapping[str, float],
    beta: Mapping[str, float],
    caps: Mapping[str, float],
    numel: Mapping[str, int],
    budget: float,
) -> dict[str, float]:
    """Sparsities ``s_l = clamp(α_l + β_l θ, 0, cap_l)`` (β_l > 0) with ``Σ s_l numel_l = budget``.

    The removed total is piecewise linear and non-decreasing in θ with breakpoints where a
    layer hits 0 or its cap, so θ is found exactly by evaluating the breakpoints and
    interpolating within the segment containing ``budget``. If ``budget`` exceeds what the
    caps allow, every layer gets its cap; if it is below zero, every layer gets 0.
    """
    names = list(alpha)

    def at(theta: float) -> dict[str, float]:
        return {n: min(max(alpha[n] + beta[n] * theta, 0.0), caps[n]) for n in names}

    def removed(sparsity: Mapping[str, float]) -> float:
        return sum(sparsity[n] * numel[n] for n in names)

    points = sorted({-alpha[n] / beta[n] for n in names} | {(caps[n] - alpha[n]) / beta[n] for n in names})
    totals = [removed(at(point)) for point in points]
    if budget >= totals[-1]:
        return at(points[-1])
    if budget <= totals[0]:
        return at(points[0])
    for low, high, t_low, t_high in zip(points, points[1:], totals, totals[1:]):
        if t_low <= budget <= t_high and t_high > t_low:
            return at(low + (budget - t_low) * (high - low) / (t_high - t_low))
    return at(points[-1])


def _problem(
    shapes: dict[str, LayerShape],
    target: float | None,
    min_density: float,
    excluded: set[str],
    protected: set[str],
    granularity: str,
) -> AllocationProblem:
    # Under channel granularity a protected layer (the classifier's output) is left out of
    # the budget like an excluded one: the other layers reach the target among themselves,
    # so ``uniform`` gives each of them exactly the target.
    left_out = excluded | (protected if granularity == "channel" else set())
    kept = {name: shape for name, shape in shapes.items() if name not in left_out}
    units, max_removed = {}, {}
    for name, shape in kept.items():
        count = shape.numel if granularity == "unstructured" else shape.out_channels
        keep = max(1, math.ceil(min_density * count - 1e-9))
        units[name] = count
        max_removed[name] = count - min(keep, count)
    return AllocationProblem(kept, target, granularity, units, max_removed, left_out)


def masks_from_scores(scores: Mapping[str, Tensor], sparsity: Mapping[str, float]) -> dict[str, Tensor]:
    """Boolean keep-masks: per layer, the ``round(s · numel)`` lowest scores are removed.

    Args:
        scores: per layer, any-shaped scores (normally weight-shaped).
        sparsity: per layer, the fraction to remove; every layer of ``scores`` needs one.

    Returns:
        ``{name: bool tensor shaped like scores[name]}``, ``True`` = kept. Ties are broken
        deterministically: among equal scores the lower flat index is removed first.
    """
    masks = {}
    for name, score in scores.items():
        k = _removed_count(name, score.numel(), sparsity)
        order = torch.sort(score.detach().flatten(), stable=True).indices
        keep = torch.ones(score.numel(), dtype=torch.bool, device=score.device)
        keep[order[:k]] = False
        masks[name] = keep.reshape(score.shape)
    return masks


def channels_to_keep(channel_scores: Mapping[str, Tensor], sparsity: Mapping[str, float]) -> dict[str, Tensor]:
    """Sorted indices (``long``) of the output channels each layer keeps.

    Per layer ``min(round(s · C), C − 1)`` lowest-scoring channels are removed (at least one
    channel is always kept); ties remove the lower index first, as in :func:`masks_from_scores`.
    """
    kept = {}
    for name, score in channel_scores.items():
        count = score.numel()
        k = min(_removed_count(name, count, sparsity), count - 1)
        order = torch.sort(score.detach().flatten(), stable=True).indices
        kept[name] = torch.sort(order[k:]).values
    return kept


def kept_channels(channels: int, sparsity: float, *, round_to: int = 1, min_density: float = 0.0) -> int:
    """How many of a layer's ``channels`` output channels stay when ``sparsity`` of them go.

    ``channels − round(sparsity · channels)``, at least one. With ``round_to`` > 1 and a
    layer of at least ``round_to`` channels, the count is rounded to the nearest multiple of
    ``round_to`` (halves round up: the layer keeps more), at least ``round_to`` and at least
    ``ceil(min_density · channels)`` (rounding up to a multiple when that floor binds), and
    never more than ``channels``; a narrower layer keeps the unrounded count. Rounding moves
    a layer's sparsity by at most ``round_to / 2`` channels.

    Example: ``kept_channels(64, 0.3, round_to=8)`` is 48 (45 rounded), and
    ``kept_channels(6, 0.5, round_to=8)`` is 3.
    """
    if channels < 1:
        raise ValueError(f"a layer has at least one channel, got {channels}")
    if not 0 <= sparsity <= 1:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    if round_to < 1:
        raise ValueError(f"round_to must be at least 1, got {round_to}")
    keep = max(1, channels - round(sparsity * channels))
    if round_to == 1 or channels < round_to:
        return keep
    floor = max(1, math.ceil(min_density * channels - 1e-9))
    rounded = max(round_to, round_to * math.floor(keep / round_to + 0.5))
    if rounded < floor:
        rounded = round_to * math.ceil(floor / round_to)
    return min(rounded, channels)


def _removed_count(name: str, count: int, sparsity: Mapping[str, float]) -> int:
    if name not in sparsity:
        raise ValueError(f"no sparsity given for layer {name!r}")
    s = float(sparsity[name])
    if not 0 <= s <= 1:
        raise ValueError(f"sparsity of layer {name!r} must be in [0, 1], got {s}")
    return round(s * count)
