from __future__ import annotations

import math

import pytest

from autoprune.errors import AutopruneError
from autoprune.schedules import (
    SCHEDULES,
    AdaptiveController,
    AdaptiveSchedule,
    CubicSchedule,
    DynamicSchedule,
    make_schedule,
)

FIXED = [name for name in SCHEDULES if not SCHEDULES.get(name).adaptive]
CASES = [(0.5, 1), (0.9, 3), (0.7, 7), (0.95, 10), (0.0, 4), (0.3333, 100)]


@pytest.mark.parametrize("name", SCHEDULES.names())
@pytest.mark.parametrize("final,steps", CASES)
def test_targets_monotone_and_end_exactly_at_final(name: str, final: float, steps: int) -> None:
    targets = make_schedule(name).targets(final, steps)
    assert targets[-1] == final
    assert all(a <= b for a, b in zip(targets, targets[1:]))
    assert all(0.0 <= t <= final for t in targets)


@pytest.mark.parametrize("name", SCHEDULES.names())
@pytest.mark.parametrize("steps", [1, 2, 3, 7, 10])
def test_budget_split_sums_to_one_and_matches_targets(name: str, steps: int) -> None:
    schedule = make_schedule(name)
    split = schedule.budget_split(steps)
    assert math.isclose(sum(split), 1.0, abs_tol=1e-12)
    assert all(share > 0 for share in split)
    assert len(split) == len(schedule.targets(0.8, steps))


def test_cubic_matches_zhu_gupta_formula() -> None:
    # s_t = s_f + (s_0 - s_f)(1 - t/n)^3 at s_f=0.8, n=4, t=2: 0.8 - 0.8/8 = 0.7
    assert CubicSchedule().targets(0.8, 4)[1] == pytest.approx(0.7)
    # with s_0 = 0.2, t=1: 0.8 + (0.2 - 0.8) * 0.75^3
    assert CubicSchedule().targets(0.8, 4, initial=0.2)[0] == pytest.approx(0.8 - 0.6 * 0.421875)


def test_linear_and_exponential_formulas() -> None:
    assert make_schedule("linear").targets(0.9, 3) == pytest.approx([0.3, 0.6, 0.9])
    exp = make_schedule("exponential").targets(0.75, 2)
    assert exp[0] == pytest.approx(1 - 0.25**0.5)  # density halves each step


def test_one_shot_is_a_single_step_whatever_steps_asked() -> None:
    schedule = make_schedule("one_shot")
    assert schedule.targets(0.9, 5) == [0.9]
    assert schedule.budget_split(5) == [1.0]


def test_dynamic_flags_and_targets_follow_shape() -> None:
    dynamic = make_schedule("dynamic", shape="linear", regrow_every=5)
    assert isinstance(dynamic, DynamicSchedule)
    assert dynamic.recompute_masks and dynamic.allows_regrowth and dynamic.regrow_every == 5
    assert dynamic.targets(0.6, 3) == make_schedule("linear").targets(0.6, 3)
    assert make_schedule("dynamic").targets(0.6, 3) == make_schedule("cubic").targets(0.6, 3)
    assert not make_schedule("cubic").recompute_masks and make_schedule("cubic").regrow_every is None


def test_layer_targets_end_at_each_layers_final() -> None:
    finals = {"conv1": 0.5, "fc": 0.9, "head": 0.0}
    steps = make_schedule("linear").layer_targets(finals, 4)
    assert len(steps) == 4
    assert steps[-1] == finals
    assert steps[1]["fc"] == pytest.approx(0.45) and steps[1]["conv1"] == pytest.approx(0.25)
    assert all(s["head"] == 0.0 for s in steps)


def _run(controller: AdaptiveController, drop: float) -> list[float]:
    issued = []
    target = controller.next_target(0.0, None)
    while target is not None:
        issued.append(target)
        target = controller.next_target(target, drop)
    return issued


def test_adaptive_reaches_target_when_accuracy_holds() -> None:
    ctrl = make_schedule("adaptive", tolerance=0.01).controller(0.8, 4)
    issued = _run(ctrl, drop=0.0)
    assert issued == pytest.approx([0.2, 0.4, 0.6, 0.8]) and issued[-1] == 0.8
    assert ctrl.stop_reason == "reached_target"
    assert ctrl.reached == 0.8


def test_adaptive_backs_off_on_large_drops_and_spends_budget() -> None:
    ctrl = AdaptiveController(0.8, 5, tolerance=0.01, shrink=0.5, min_increment=0.01)
    issued = _run(ctrl, drop=0.2)
    increments = [b - a for a, b in zip([0.0] + issued, issued)]
    assert len(issued) == 5
    assert all(b < a for a, b in zip(increments, increments[1:]))
    assert ctrl.stop_reason == "budget_spent"
    assert ctrl.reached == pytest.approx(issued[-1]) and ctrl.reached < 0.8
    assert [s.accuracy_drop for s in ctrl.history] == [None, 0.2, 0.2, 0.2, 0.2]


def test_adaptive_recovers_pace_after_drop_returns_within_tolerance() -> None:
    ctrl = AdaptiveController(0.6, 3, tolerance=0.05)
    first = ctrl.next_target(0.0, None)
    second = ctrl.next_target(first, 0.5)
    third = ctrl.next_target(second, 0.0)
    assert second - first < first and third == 0.6
    assert ctrl.next_target(third, 0.0) is None and ctrl.stop_reason == "reached_target"


def test_adaptive_increment_never_below_min_increment() -> None:
    ctrl = AdaptiveController(0.9, 10, shrink=0.1, min_increment=0.05)
    issued = _run(ctrl, drop=1.0)
    increments = [b - a for a, b in zip([0.0] + issued, issued)]
    assert min(increments) == pytest.approx(0.05)


def test_adaptive_layer_targets_scale_and_end_exactly() -> None:
    ctrl = AdaptiveController(0.8, 4)
    finals = {"a": 0.4, "b": 0.9}
    assert ctrl.layer_targets(finals, 0.4) == pytest.approx({"a": 0.2, "b": 0.45})
    assert ctrl.layer_targets(finals, 0.8) == finals


def test_adaptive_schedule_plan_is_linear_and_flagged() -> None:
    schedule = AdaptiveSchedule()
    assert schedule.adaptive and schedule.targets(0.6, 3) == pytest.approx([0.2, 0.4, 0.6])


@pytest.mark.parametrize(
    "final,steps,initial",
    [(1.0, 3, 0.0), (-0.1, 3, 0.0), (float("nan"), 3, 0.0), ("0.5", 3, 0.0), (0.5, 0, 0.0),
     (0.5, 2.0, 0.0), (0.5, True, 0.0), (0.5, 3, 0.6)],
)
@pytest.mark.parametrize("name", ["linear", "one_shot", "adaptive"])
def test_bad_inputs_raise_autoprune_error(name: str, final: object, steps: object, initial: float) -> None:
    with pytest.raises(AutopruneError):
        make_schedule(name).targets(final, steps, initial)  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs", [{"tolerance": 1.5}, {"shrink": 0.0}, {"shrink": 1.0}, {"min_increment": 0}])
def test_bad_adaptive_options_raise(kwargs: dict[str, float]) -> None:
    with pytest.raises(AutopruneError):
        make_schedule("adaptive", **kwargs)


def test_bad_controller_inputs_raise() -> None:
    with pytest.raises(AutopruneError, match="steps"):
        AdaptiveController(0.5, 0)
    with pytest.raises(AutopruneError, match="final"):
        AdaptiveController(1.0, 3)


def test_unknown_name_lists_valid_ones() -> None:
    with pytest.raises(AutopruneError, match="did you mean 'cubic'.*one_shot, linear, cubic"):
        make_schedule("cubc")


def test_unknown_option_lists_allowed_ones() -> None:
    with pytest.raises(AutopruneError, match="tolerance.*allowed: none"):
        make_schedule("cubic", tolerance=0.1)
    with pytest.raises(AutopruneError, match="allowed: shape, regrow_every"):
        make_schedule("dynamic", tolerance=0.1)
    with pytest.raises(AutopruneError, match="shape"):
        make_schedule("dynamic", shape="adaptive")


def test_registry_covers_the_documented_schedules() -> None:
    assert SCHEDULES.names() == ["one_shot", "linear", "cubic", "exponential", "dynamic", "adaptive"]
    assert "adaptive" not in FIXED
