"""From a search space to policies: the define-by-run space for Optuna.

:class:`PolicySuggester` is called with an ``optuna.Trial`` and suggests one value for every
searched parameter that is *active* given the values chosen before it:

* ``scorer.<name>.<param>`` only when that scorer is chosen (e.g. λ of ``gradient_magnitude``);
* ``target_sparsity`` only when the allocation is not ``per_layer``, or when some layer
  matched by no pattern follows it;
* ``layer.<name>`` (one per layer matched by a ``space.layers`` pattern) only for ``per_layer``;
* ``schedule.steps`` only for multi-step schedules, ``schedule.tolerance`` only for ``adaptive``;
* ``finetune.temperature`` and ``finetune.distill_weight`` only when distilling.

Fixed values are not suggested (they are not search dimensions); :func:`policy_from_params`
fills them in from the space. The suggester is a module-level class, not a closure, because
Ray Tune pickles it by reference into its experiment checkpoint.
"""

from __future__ import annotations

from typing import Any

import optuna

from autoprune.layers import LayerInfo
from autoprune.params import Param
from autoprune.policy import FinetuneSettings, Policy, ScheduleSettings
from autoprune.space import PolicySpace

SINGLE_STEP_SCHEDULES = ("one_shot",)


def _suggest(trial: optuna.Trial, name: str, param: Param) -> Any:
    if not param.searched:
        return param.options()[0]
    if param.kind == "choice":
        return trial.suggest_categorical(name, list(param.choices))
    if param.value_type == "int":
        return trial.suggest_int(name, int(param.low), int(param.high), log=param.log)
    return trial.suggest_float(name, float(param.low), float(param.high), log=param.log)


class _Values:
    """Reads a parameter either from a finished params dict or by suggesting it on a trial."""

    def __init__(self, trial: optuna.Trial | None, params: dict[str, Any] | None) -> None:
        self.trial = trial
        self.params = params or {}

    def get(self, name: str, param: Param) -> Any:
        if self.trial is not None:
            return _suggest(self.trial, name, param)
        if name in self.params:
            return self.params[name]
        if param.searched:
            raise KeyError(f"searched parameter {name!r} has no value")
        return param.options()[0]


def _build(space: PolicySpace, layers: list[LayerInfo], seed: int, values: _Values) -> Policy:
    granularity = values.get("granularity", space.granularity)
    scorer = values.get("scorer", space.scorer)
    scorer_params = {
        key: values.get(f"scorer.{scorer}.{key}", param)
        for key, param in space.scorer_params.get(scorer, {}).items()
    }
    allocation = values.get("allocation", space.allocation)
    round_to = values.get("round_to", space.round_to) if granularity == "channel" else 1
    follows_target = allocation != "per_layer" or any(
        layer.sparsity is None and not layer.excluded for layer in layers
    )
    target = values.get("target_sparsity", space.target_sparsity) if follows_target else None
    layer_sparsity: dict[str, float] = {}
    if allocation == "per_layer":
        for layer in layers:
            if layer.excluded:
                continue
            if layer.sparsity is not None:
                layer_sparsity[layer.name] = float(values.get(f"layer.{layer.name}", layer.sparsity))
            else:
                layer_sparsity[layer.name] = float(target)
    shape = values.get("schedule.shape", space.schedule.shape)
    steps = 1 if shape in SINGLE_STEP_SCHEDULES else values.get("schedule.steps", space.schedule.steps)
    tolerance = (
        values.get("schedule.tolerance", space.schedule.tolerance)
        if shape == "adaptive"
        else ScheduleSettings().tolerance
    )
    ft = space.finetune
    distill = values.get("finetune.distill", ft.distill)
    finetune = FinetuneSettings(
        epochs=values.get("finetune.epochs", ft.epochs),
        lr=values.get("finetune.lr", ft.lr),
        optimizer=values.get("finetune.optimizer", ft.optimizer),
        distill=distill,
        temperature=values.get("finetune.temperature", ft.temperature) if distill else 4.0,
        distill_weight=values.get("finetune.distill_weight", ft.distill_weight) if distill else 0.5,
    )
    return Policy(
        granularity=granularity,
        scorer=scorer,
        scorer_params=scorer_params,
        allocation=allocation,
        target_sparsity=None if target is None else float(target),
        layer_sparsity=layer_sparsity,
        exclude=[layer.name for layer in layers if layer.excluded],
        min_layer_density=space.min_layer_density,
        round_to=int(round_to),
        schedule=ScheduleSettings(shape=shape, steps=int(steps), tolerance=float(tolerance)),
        finetune=finetune,
        seed=seed,
    )


class PolicySuggester:
    """The define-by-run space: ``suggester(trial)`` suggests one policy's searched values.

    Example::

        suggester = PolicySuggester(space.space, layers, seed=0)
        study.optimize(lambda t: objective(suggester.policy(t)), n_trials=10)

    ``__call__`` returns nothing (Ray's ``OptunaSearch`` reads ``trial.params``);
    :meth:`policy` suggests and returns the full :class:`Policy`.
    """

    def __init__(self, space: PolicySpace, layers: list[LayerInfo], seed: int) -> None:
        self.space = space
        self.layers = layers
        self.seed = seed

    def __call__(self, trial: optuna.Trial) -> None:
        self.policy(trial)

    def policy(self, trial: optuna.Trial) -> Policy:
        return _build(self.space, self.layers, self.seed, _Values(trial, None))


def policy_from_params(
    params: dict[str, Any], space: PolicySpace, layers: list[LayerInfo], seed: int
) -> Policy:
    """The :class:`Policy` that the suggested ``params`` (``trial.params``) stand for."""
    return _build(space, layers, seed, _Values(None, params))


def search_dimensions(space: PolicySpace, layers: list[LayerInfo]) -> dict[str, str]:
    """Every parameter that may be searched (conditional ones included) → its range, for ``validate``."""
    dims: dict[str, Param] = {}
    top = {
        "granularity": space.granularity,
        "scorer": space.scorer,
        "allocation": space.allocation,
        "target_sparsity": space.target_sparsity,
    }
    dims.update(top)
    if "channel" in space.granularity.options():
        dims["round_to"] = space.round_to
    for scorer in space.scorer.options():
        for key, param in space.scorer_params.get(scorer, {}).items():
            dims[f"scorer.{scorer}.{key}"] = param
    if "per_layer" in space.allocation.options():
        for layer in layers:
            if layer.sparsity is not None and not layer.excluded:
                dims[f"layer.{layer.name}"] = layer.sparsity
    shapes = space.schedule.shape.options()
    if any(shape not in SINGLE_STEP_SCHEDULES for shape in shapes):
        dims["schedule.steps"] = space.schedule.steps
    if "adaptive" in shapes:
        dims["schedule.tolerance"] = space.schedule.tolerance
    dims["schedule.shape"] = space.schedule.shape
    ft = space.finetune
    dims.update({"finetune.epochs": ft.epochs, "finetune.lr": ft.lr, "finetune.optimizer": ft.optimizer})
    dims["finetune.distill"] = ft.distill
    if True in ft.distill.options():
        dims.update({"finetune.temperature": ft.temperature, "finetune.distill_weight": ft.distill_weight})
    return {name: param.describe() for name, param in dims.items() if param.searched}
