"""How sparsity grows over finetuning: the prune → finetune rounds of one trial.

Pruning everything at once and then finetuning is the simplest recipe, but a network often
recovers better when it is pruned a little at a time with finetuning in between. A
*schedule* splits the finetune budget of a trial into ``steps`` rounds. Each round the trial
engine prunes the model up to that round's sparsity target, then finetunes for that round's
share of the budget. The schedule only says *how much* and *when*; *which* weights go is
the scorer's and the allocation's business.

Two questions define a schedule:

* :meth:`Schedule.targets` — the sparsity target after each step. For every schedule except
  ``adaptive`` the targets are non-decreasing and the last one equals the final target
  exactly: **every schedule ends at the policy's target**.
* :meth:`Schedule.budget_split` — the fraction of the finetune epochs spent after each step
  (summing to 1).

Per-layer targets follow the same curve: :meth:`Schedule.layer_targets` applies the
schedule's formula to each layer's own final sparsity, so layer *l* at step *t* sits at
``s_{l,t} = curve_t(s_{l,f})`` and every layer ends exactly at the sparsity the allocation
gave it.

Three flags tell the engine how to run the rounds:

* ``recompute_masks`` — masks are recomputed from the current scores during finetuning,
  every ``regrow_every`` optimizer steps (``None`` for schedules with fixed masks).
* ``allows_regrowth`` — pruned weights keep receiving updates and may come back when
  the masks are recomputed (dynamic network surgery).
* ``adaptive`` — the targets are decided online from validation accuracy: the engine asks
  :meth:`AdaptiveSchedule.controller` for an :class:`AdaptiveController` instead of
  following :meth:`Schedule.targets`.

Schedules are looked up by name in :data:`SCHEDULES` (the ``space.schedule.shape`` key);
:func:`make_schedule` builds one with options and reports unknown names or options as
:class:`~autoprune.errors.AutopruneError`.

Example::

    schedule = make_schedule("cubic")
    schedule.targets(0.9, 3)        # [0.6333..., 0.8666..., 0.9]
    schedule.budget_split(3)        # [0.333..., 0.333..., 0.333...]
"""

from __future__ import annotations

import abc
import inspect
import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import ClassVar, Mapping

from autoprune.errors import AutopruneError
from autoprune.registry import Registry

SCHEDULES: Registry[type["Schedule"]] = Registry("schedule")

STOP_REACHED_TARGET = "reached_target"
STOP_BUDGET_SPENT = "budget_spent"


def _check_fraction(value: object, what: str, *, closed: bool = False) -> float:
    """``value`` as a float in [0, 1) (or [0, 1] with ``closed``); AutopruneError otherwise."""
    upper = "1]" if closed else "1)"
    ok = isinstance(value, Real) and not isinstance(value, bool) and not math.isnan(float(value))
    if ok:
        x = float(value)
        ok = 0.0 <= x <= 1.0 if closed else 0.0 <= x < 1.0
    if not ok:
        raise AutopruneError(f"{what} must be a number in [0, {upper}, got {value!r}")
    return float(value)


def _check_steps(value: object, what: str) -> int:
    """``value`` as an int ≥ 1; AutopruneError otherwise."""
    if not isinstance(value, Integral) or isinstance(value, bool) or int(value) < 1:
        raise AutopruneError(f"{what} must be an integer >= 1, got {value!r}")
    return int(value)


class Schedule(abc.ABC):
    """Base class for sparsity schedules.

    A schedule turns a final sparsity ``s_f`` (reached from a starting sparsity ``s_0``,
    usually 0) and a number of prune steps ``n`` into the target after each step
    ``t = 1..n``. Subclasses implement :meth:`_target`, the value at progress ``t/n``;
    the base class validates inputs, forces the last target to be exactly ``s_f`` (so
    floating-point rounding can never leave a model short of, or past, its policy) and
    keeps the sequence non-decreasing.

    Finetuning is split evenly over the steps by default (:meth:`budget_split`): each round
    gets ``1/n`` of the finetune epochs.
    """

    name: ClassVar[str] = ""
    recompute_masks: ClassVar[bool] = False
    allows_regrowth: ClassVar[bool] = False
    adaptive: ClassVar[bool] = False
    regrow_every: int | None = None

    @abc.abstractmethod
    def _target(self, progress: float, initial: float, final: float) -> float:
        """The sparsity at ``progress`` = t/n in (0, 1], between ``initial`` and ``final``."""

    def effective_steps(self, steps: int) -> int:
        """The number of prune steps this schedule really uses when ``steps`` are asked for."""
        return _check_steps(steps, f"schedule {self.name!r}: steps")

    def targets(self, final: float, steps: int, initial: float = 0.0) -> list[float]:
        """Sparsity target after each of the ``effective_steps(steps)`` prune steps.

        Non-decreasing, every value in ``[initial, final]``, and the last value is
        ``final`` exactly. ``final`` and ``initial`` must lie in [0, 1) with
        ``initial <= final``; ``steps`` must be an integer >= 1.
        """
        final = _check_fraction(final, f"schedule {self.name!r}: final sparsity")
        initial = _check_fraction(initial, f"schedule {self.name!r}: initial sparsity")
        if initial > final:
            raise AutopruneError(
                f"schedule {self.name!r}: initial sparsity {initial} exceeds final sparsity {final}"
            )
        n = self.effective_steps(steps)
        out: list[float] = []
        previous = initial
        for t in range(1, n):
            value = min(final, max(previous, self._target(t / n, initial, final)))
            out.append(value)
            previous = value
        out.append(final)
        return out

    def budget_split(self, steps: int) -> list[float]:
        """Fraction of the finetune epochs spent after each prune step; sums to 1."""
        n = self.effective_steps(steps)
        share = [1.0 / n] * n
        share[-1] = 1.0 - sum(share[:-1])
        return share

    def layer_targets(self, finals: Mapping[str, float], steps: int) -> list[dict[str, float]]:
        """Per-layer targets: one ``{layer: sparsity}`` dict per prune step.

        The schedule's curve is applied to each layer's own final sparsity (starting from
        0), so every layer follows the same shape and ends exactly at ``finals[layer]``.
        """
        per_layer = {
            layer: self.targets(
                _check_fraction(s, f"schedule {self.name!r}: layer {layer!r} sparsity"), steps
            )
            for layer, s in finals.items()
        }
        n = self.effective_steps(steps)
        return [{layer: values[t] for layer, values in per_layer.items()} for t in range(n)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@SCHEDULES.register("one_shot")
class OneShotSchedule(Schedule):
    """Prune once to the final target, then spend the whole budget finetuning.

    ``targets(s_f, n) == [s_f]`` and ``budget_split(n) == [1.0]`` whatever ``n`` is: a
    search space may sample ``steps`` alongside the shape, and for ``one_shot`` the number
    of steps is meaningless, so it is ignored rather than refused. The classic
    prune-then-retrain recipe (e.g. Li et al. 2017, "Pruning Filters for Efficient
    ConvNets").
    """

    name = "one_shot"

    def effective_steps(self, steps: int) -> int:
        _check_steps(steps, f"schedule {self.name!r}: steps")
        return 1

    def _target(self, progress: float, initial: float, final: float) -> float:
        return final


@SCHEDULES.register("linear")
class LinearSchedule(Schedule):
    """Equal increments: ``s_t = s_0 + (s_f - s_0) · t/n`` for ``t = 1..n``.

    The plain baseline for gradual pruning; with ``s_0 = 0`` it is ``s_f · t/n``.
    """

    name = "linear"

    def _target(self, progress: float, initial: float, final: float) -> float:
        return initial + (final - initial) * progress


@SCHEDULES.register("cubic")
class CubicSchedule(Schedule):
    """Automated gradual pruning: ``s_t = s_f + (s_0 - s_f)(1 - t/n)^3``.

    Zhu & Gupta 2017, "To prune, or not to prune". Sparsity grows fast while the network
    still has many redundant weights and slowly near the end, when every weight counts.
    ``s_0`` defaults to 0.
    """

    name = "cubic"

    def _target(self, progress: float, initial: float, final: float) -> float:
        return final + (initial - final) * (1.0 - progress) ** 3


@SCHEDULES.register("exponential")
class ExponentialSchedule(Schedule):
    """Each step removes the same fraction of the weights still alive.

    Geometric in density: ``d_t = d_0 · (d_f / d_0)^(t/n)`` with ``d = 1 - s``, i.e.
    ``s_t = 1 - (1 - s_0)·((1 - s_f)/(1 - s_0))^(t/n)``; with ``s_0 = 0`` this is
    ``d_t = (1 - s_f)^(t/n)``. This is iterative magnitude pruning at a fixed rate per
    round (Han et al. 2015; Frankle & Carbin 2019, "The Lottery Ticket Hypothesis"). In
    sparsity terms it front-loads the pruning, less than ``cubic`` and more than
    ``linear``: large removals while many weights are alive, ever smaller ones as the
    network thins out.
    """

    name = "exponential"

    def _target(self, progress: float, initial: float, final: float) -> float:
        d0, df = 1.0 - initial, 1.0 - final
        return 1.0 - d0 * (df / d0) ** progress


@SCHEDULES.register("dynamic")
class DynamicSchedule(Schedule):
    """Dynamic network surgery: masks are recomputed during finetuning; weights may return.

    Guo, Yao & Chen 2016, "Dynamic Network Surgery for Efficient DNNs". The step targets
    are those of ``shape`` (``cubic`` by default), but between steps the engine keeps the
    pruned weights' dense values and keeps updating them, and every ``regrow_every``
    optimizer steps it recomputes the masks from the current scores at the round's target.
    A weight pruned too early can thus grow back (``allows_regrowth``), correcting the
    scorer's early mistakes. ``regrow_every`` trades stability for responsiveness:
    recomputing after every batch makes masks flicker, rarely recomputing approaches a
    static schedule; 10 batches is the default.
    """

    name = "dynamic"
    recompute_masks = True
    allows_regrowth = True

    def __init__(self, shape: str = "cubic", regrow_every: int = 10) -> None:
        base = SCHEDULES.get(shape, where="schedule 'dynamic': shape: ")
        if base.adaptive or base.recompute_masks:
            raise AutopruneError(
                f"schedule 'dynamic': shape must be a fixed curve, got {shape!r}; "
                f"valid: one_shot, linear, cubic, exponential"
            )
        self.shape = shape
        self._base = base()
        self.regrow_every = _check_steps(regrow_every, "schedule 'dynamic': regrow_every")

    def effective_steps(self, steps: int) -> int:
        return self._base.effective_steps(steps)

    def _target(self, progress: float, initial: float, final: float) -> float:
        return self._base._target(progress, initial, final)

    def __repr__(self) -> str:
        return f"DynamicSchedule(shape={self.shape!r}, regrow_every={self.regrow_every})"


@SCHEDULES.register("adaptive")
class AdaptiveSchedule(Schedule):
    """Validation accuracy steers the pace of pruning.

    The targets are not fixed in advance: after each round the engine measures the
    accuracy drop against the dense model and asks an :class:`AdaptiveController`
    (from :meth:`controller`) for the next target. While the drop stays within
    ``tolerance`` the controller keeps a pace that reaches the final target on the last
    step; when it exceeds ``tolerance`` the next increment shrinks by ``shrink`` (never
    below ``min_increment``), so more of the remaining rounds go to recovery and less to
    pruning. It stops at the final target or when the ``steps`` rounds are spent, and
    records why.

    :meth:`targets` returns the plan followed when every drop is within tolerance (the
    ``linear`` targets), so the schedule still satisfies the common contract; unlike the
    other schedules, an adaptive run may stop short of the policy's target — the reached
    sparsity and the stop reason are what the trial reports.
    """

    name = "adaptive"
    adaptive = True

    def __init__(self, tolerance: float = 0.01, shrink: float = 0.5, min_increment: float = 0.01) -> None:
        self.tolerance = _check_fraction(tolerance, "schedule 'adaptive': tolerance", closed=True)
        self.shrink = _check_fraction(shrink, "schedule 'adaptive': shrink")
        if self.shrink == 0.0:
            raise AutopruneError("schedule 'adaptive': shrink must be in (0, 1), got 0")
        self.min_increment = _check_fraction(min_increment, "schedule 'adaptive': min_increment")
        if self.min_increment == 0.0:
            raise AutopruneError("schedule 'adaptive': min_increment must be in (0, 1), got 0")

    def _target(self, progress: float, initial: float, final: float) -> float:
        return initial + (final - initial) * progress

    def controller(self, final: float, steps: int, initial: float = 0.0) -> "AdaptiveController":
        """A fresh controller for one trial."""
        return AdaptiveController(
            final,
            steps,
            initial=initial,
            tolerance=self.tolerance,
            shrink=self.shrink,
            min_increment=self.min_increment,
        )

    def __repr__(self) -> str:
        return (
            f"AdaptiveSchedule(tolerance={self.tolerance}, shrink={self.shrink}, "
            f"min_increment={self.min_increment})"
        )


@dataclass(frozen=True)
class AdaptiveStep:
    """One decision of an :class:`AdaptiveController`: the drop it saw and the target it set."""

    current_sparsity: float
    accuracy_drop: float | None
    target: float


class AdaptiveController:
    """The online loop of the ``adaptive`` schedule, one instance per trial.

    Usage by the engine::

        ctrl = AdaptiveController(final=0.8, steps=5, tolerance=0.01)
        target = ctrl.next_target(0.0, None)          # nothing measured yet
        while target is not None:
            prune to target; finetune one round (1/steps of the budget)
            target = ctrl.next_target(measured_sparsity, accuracy_drop)
        ctrl.stop_reason    # "reached_target" | "budget_spent"
        ctrl.reached        # the sparsity actually reached (the last one reported)

    Rule for the increment of the next step, with ``remaining = final - current`` and
    ``k`` steps left:

    * no measurement yet, or ``accuracy_drop <= tolerance``: ``remaining / k`` — the pace
      that reaches ``final`` exactly on the last step;
    * ``accuracy_drop > tolerance``: ``shrink ×`` the previous increment, but at least
      ``min(min_increment, remaining)``.

    The last target issued is ``final`` exactly when the pace allows it. ``next_target``
    returns ``None`` once the final target was issued (``stop_reason = "reached_target"``)
    or ``steps`` targets were issued without reaching it (``"budget_spent"``).
    """

    def __init__(
        self,
        final: float,
        steps: int,
        *,
        initial: float = 0.0,
        tolerance: float = 0.01,
        shrink: float = 0.5,
        min_increment: float = 0.01,
    ) -> None:
        self.final = _check_fraction(final, "schedule 'adaptive': final sparsity")
        self.initial = _check_fraction(initial, "schedule 'adaptive': initial sparsity")
        if self.initial > self.final:
            raise AutopruneError(
                f"schedule 'adaptive': initial sparsity {self.initial} exceeds final sparsity {self.final}"
            )
        self.steps = _check_steps(steps, "schedule 'adaptive': steps")
        checked = AdaptiveSchedule(tolerance, shrink, min_increment)
        self.tolerance = checked.tolerance
        self.shrink = checked.shrink
        self.min_increment = checked.min_increment
        self.history: list[AdaptiveStep] = []
        self.stop_reason: str | None = None
        self.reached: float = self.initial
        self._increment: float | None = None

    @property
    def done(self) -> bool:
        return self.stop_reason is not None

    def next_target(self, current_sparsity: float, accuracy_drop: float | None) -> float | None:
        """The next sparsity target, or ``None`` when the schedule has stopped.

        ``current_sparsity`` is the sparsity the model has now (as measured after the last
        round, or ``initial`` before the first); ``accuracy_drop`` is dense validation
        accuracy minus the current one, or ``None`` before anything was measured.
        """
        current = _check_fraction(current_sparsity, "adaptive controller: current_sparsity", closed=True)
        self.reached = current
        if self.stop_reason is not None:
            return None
        last_target = self.history[-1].target if self.history else self.initial
        if self.history and last_target >= self.final:
            self.stop_reason = STOP_REACHED_TARGET
            return None
        if len(self.history) >= self.steps:
            self.stop_reason = STOP_BUDGET_SPENT
            return None
        base = max(current, last_target)
        remaining = self.final - base
        steps_left = self.steps - len(self.history)
        pace = remaining / steps_left
        if accuracy_drop is None or self._increment is None or accuracy_drop <= self.tolerance:
            increment = pace
        else:
            increment = max(self._increment * self.shrink, min(self.min_increment, remaining))
        increment = min(increment, remaining)
        self._increment = increment
        target = base + increment
        if increment >= remaining or self.final - target < 1e-12:
            target = self.final
        self.history.append(AdaptiveStep(current, accuracy_drop, target))
        return target

    def layer_targets(self, finals: Mapping[str, float], target: float) -> dict[str, float]:
        """Per-layer targets for a global ``target``: each layer's final scaled by target/final.

        The controller's pace is linear in sparsity, so every layer moves by the same
        fraction of its own final sparsity; at ``target == final`` each layer is exactly at
        its final value.
        """
        if target >= self.final:
            return {layer: float(s) for layer, s in finals.items()}
        scale = target / self.final
        return {layer: float(s) * scale for layer, s in finals.items()}


def make_schedule(name: str, *, where: str = "", **options: object) -> Schedule:
    """The schedule registered as ``name``, built with ``options``.

    Unknown names and options the schedule does not take raise
    :class:`~autoprune.errors.AutopruneError`; ``where`` (e.g. ``"space.yaml: "``) prefixes
    the message.
    """
    cls = SCHEDULES.get(name, where=where)
    accepted = [
        p.name
        for p in inspect.signature(cls).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        allowed = ", ".join(accepted) if accepted else "none"
        raise AutopruneError(
            f"{where}schedule {name!r} does not take option(s) {', '.join(unknown)}; allowed: {allowed}"
        )
    return cls(**options)
