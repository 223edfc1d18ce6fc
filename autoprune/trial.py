"""One policy end to end: prune → finetune (on the policy's schedule) → measure.

:func:`run_trial` is the body of every search trial and of ``autoprune trial``. It takes the
dense model and data through a :class:`~autoprune.context.TrialContext` (never retrained or
reloaded per trial) and returns the metrics of :mod:`autoprune.measure` plus the history of
the schedule.

How one trial runs:

1. **Allocate** the final sparsity of every layer once, from the dense model
   (:mod:`autoprune.allocation`; ``global`` ranks the dense scores across layers).
2. **Step** through the schedule (:mod:`autoprune.schedules`). Each step raises every layer
   to its sparsity target for the step, ranking by the scorer's current scores
   (:mod:`autoprune.scorers`), then finetunes for the step's share of the epochs:

   * ``unstructured``: weight masks (:mod:`autoprune.prune`). Masks only grow: a weight
     pruned at one step stays pruned, except under ``dynamic``, where masks are recomputed
     from the dense weights every ``regrow_every`` optimizer steps and pruned weights keep
     training, so they may return.
   * ``channel``: output channels are physically removed with their dependants. Targets
     count channels of the *dense* layer, so a step only removes what the curve adds.
     Removed channels cannot return, so ``dynamic`` follows its base curve here.
   * ``adaptive``: after each step the validation accuracy is measured; the schedule's
     controller slows the pace when the drop exceeds its tolerance, and the trial records
     where and why it stopped (``stop_reason``).

3. **Measure** the pruned model: validation accuracy, sparsity, params, MACs, size, and
   latency timed alternately with the dense model in this process (``speedup``).

A run that diverges (NaN or infinite loss or metrics) raises :class:`TrialFailed`.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from autoprune.allocation import allocate, channels_to_keep, kept_channels, masks_from_scores
from autoprune.context import TrialContext
from autoprune.measure import measure_latency_pair, measure_model, prunable_weight_count
from autoprune.models import example_input, prunable_layers
from autoprune.policy import Policy
from autoprune.prune import apply_masks, enforce_masks, remove_channels, remove_masks
from autoprune.schedules import Schedule, make_schedule
from autoprune.scorers import SCORERS, Scorer, make_scorer
from autoprune.train import bundle_batches, evaluate, train

METRICS = ("accuracy", "accuracy_drop", "sparsity", "params", "params_nonzero", "macs",
           "latency_ms", "speedup", "size_bytes")


class TrialFailed(Exception):
    """A trial that could not produce finite metrics (diverged, NaN, ...)."""


@dataclass
class TrialResult:
    """What one trial produced.

    Attributes:
        metrics: the metric names of DESIGN.md (``accuracy``, ``sparsity``, ...), plus
            ``dense_accuracy``, ``dense_latency_ms`` and ``trial_seconds``.
        steps: one entry per schedule step: target and reached sparsity, validation
            accuracy after finetuning, epochs spent, and (unstructured) ``regrown``: pruned
            weights brought back by mask recomputation so far (non-zero only for ``dynamic``).
        curve: finetune log entries (epoch, step, loss, lr) across all steps.
        layer_sparsity: per prunable layer of the dense model, the sparsity reached.
        stop_reason: for ``adaptive``, ``reached_target`` or ``budget_spent``.
        layer_channels: per prunable layer of the pruned model, its output channels/units
            (what rebuilds the pruned architecture without re-running the trial).
        model: the pruned model (plain ``nn.Module``, masks baked in, channels removed).
    """

    metrics: dict[str, float]
    steps: list[dict[str, Any]]
    curve: list[dict[str, Any]]
    layer_sparsity: dict[str, float]
    stop_reason: str | None
    layer_channels: dict[str, int]
    model: nn.Module = field(repr=False)


@dataclass
class _Run:
    """The mutable state of one trial while it runs."""

    policy: Policy
    context: TrialContext
    model: nn.Module
    teacher: nn.Module | None
    scorer: Scorer
    schedule: Schedule
    calibration: list[tuple[Tensor, Tensor]] | None
    dense_shapes: dict[str, tuple[int, ...]]
    excluded: set[str]
    epochs_done: float = 0.0
    regrown: int = 0
    curve: list[dict[str, Any]] = field(default_factory=list)

    @property
    def granularity(self) -> str:
        return self.policy.granularity

    @property
    def dense_total(self) -> int:
        """Prunable weights of the dense model (the denominator of ``sparsity``)."""
        return sum(math.prod(shape) for shape in self.dense_shapes.values())

    def layers(self) -> dict[str, nn.Module]:
        """The prunable, non-excluded layers of the current model."""
        return {n: m for n, m in prunable_layers(self.model).items() if n not in self.excluded}


def run_trial(
    policy: Policy,
    context: TrialContext,
    *,
    threads: int | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> TrialResult:
    """Prune the context's dense model with ``policy``, finetune and measure it.

    Args:
        policy: the policy to run (see :class:`~autoprune.policy.Policy`).
        context: dense model, data and settings shared by every trial of a study.
        threads: torch intra-op threads for this trial (``None`` leaves torch's setting).
        on_step: called with each schedule step's record as soon as it is finished.

    Raises:
        TrialFailed: finetuning diverged or a metric is not finite.
        AutopruneError: the policy does not fit the model (unknown layer names, ...).
    """
    started = time.perf_counter()
    if threads is not None:
        torch.set_num_threads(threads)
    policy.check_complete()
    run = _start(policy, context)
    finals = _final_sparsity(run)
    steps = _run_schedule(run, finals, on_step)
    model = run.model
    if run.granularity == "unstructured":
        remove_masks(run.layers())
    model.eval()
    metrics = _measure(run)
    metrics["trial_seconds"] = time.perf_counter() - started
    bad = [name for name, value in metrics.items() if not math.isfinite(value)]
    if bad:
        raise TrialFailed(f"non-finite metrics: {', '.join(bad)}")
    stop = steps[-1].get("stop_reason") if steps else None
    return TrialResult(
        metrics=metrics,
        steps=steps,
        curve=run.curve,
        layer_sparsity=_reached_sparsity(model, run.dense_shapes),
        stop_reason=stop,
        layer_channels={name: int(layer.weight.shape[0]) for name, layer in prunable_layers(model).items()},
        model=model,
    )


def _start(policy: Policy, context: TrialContext) -> _Run:
    torch.manual_seed(policy.seed)
    model = context.dense_model()
    known = prunable_layers(model)
    policy.check_layers(list(known))
    scorer_params = dict(policy.scorer_params)
    if "seed" in SCORERS.get(policy.scorer).defaults and "seed" not in scorer_params:
        scorer_params["seed"] = policy.seed
    scorer = make_scorer(policy.scorer, scorer_params, where="policy: ")
    options: dict[str, Any] = {"tolerance": policy.schedule.tolerance} if policy.schedule.shape == "adaptive" else {}
    schedule = make_schedule(policy.schedule.shape, where="policy: ", **options)
    calibration = None
    if scorer.needs_data:
        calibration = context.data.calibration_batches(context.calibration_batches, context.batch_size, policy.seed)
    teacher = context.dense_model().eval() if policy.finetune.distill else None
    return _Run(
        policy=policy,
        context=context,
        model=model,
        teacher=teacher,
        scorer=scorer,
        schedule=schedule,
        calibration=calibration,
        dense_shapes={name: tuple(m.weight.shape) for name, m in known.items()},
        excluded=set(policy.exclude),
    )


def _final_sparsity(run: _Run) -> dict[str, float]:
    """Each non-excluded layer's final sparsity (weights, or output channels for ``channel``)."""
    policy = run.policy
    everything = prunable_layers(run.model)
    scores = None
    if policy.allocation == "global":
        scores = _scores(run, run.layers(), previous=None)
    protected = {run.context.output_layer} if run.granularity == "channel" else set()
    finals = allocate(
        policy.allocation,
        everything,
        policy.target_sparsity,
        scores=scores,
        explicit=policy.layer_sparsity or None,
        min_density=policy.min_layer_density,
        excluded=run.excluded,
        protected_channels=protected,
        granularity=run.granularity,
    )
    return {name: s for name, s in finals.items() if name not in run.excluded}


def _overall(finals: Mapping[str, float], shapes: Mapping[str, tuple[int, ...]]) -> float:
    """The numel-weighted mean of per-layer sparsities."""
    total = sum(math.prod(shapes[name]) for name in finals)
    return sum(s * math.prod(shapes[name]) for name, s in finals.items()) / total if total else 0.0


def _run_schedule(
    run: _Run, finals: dict[str, float], on_step: Callable[[dict[str, Any]], None] | None
) -> list[dict[str, Any]]:
    policy = run.policy
    steps = run.schedule.effective_steps(policy.schedule.steps)
    budget = run.schedule.budget_split(policy.schedule.steps)
    records: list[dict[str, Any]] = []
    if run.schedule.adaptive:
        controller = run.schedule.controller(_overall(finals, run.dense_shapes), steps)  # type: ignore[attr-defined]
        target = controller.next_target(0.0, None)
        index = 0
        while target is not None:
            layer_targets = controller.layer_targets(finals, target)
            record = _step(run, index, layer_targets, policy.finetune.epochs / steps)
            record["target"] = target
            drop = run.context.dense.accuracy - record["accuracy"]
            target = controller.next_target(record["sparsity"], drop)
            record["stop_reason"] = controller.stop_reason
            records.append(record)
            if on_step:
                on_step(record)
            index += 1
        return records
    for index, layer_targets in enumerate(run.schedule.layer_targets(finals, policy.schedule.steps)):
        record = _step(run, index, layer_targets, policy.finetune.epochs * budget[index])
        record["target"] = _overall(layer_targets, run.dense_shapes)
        records.append(record)
        if on_step:
            on_step(record)
    return records


def _step(run: _Run, index: int, targets: dict[str, float], epochs: float) -> dict[str, Any]:
    """Prune every layer up to ``targets``, finetune ``epochs``, and record the result."""
    if run.granularity == "channel":
        _prune_channels(run, targets)
        after_step = None
    else:
        _prune_weights(run, targets)
        after_step = _mask_keeper(run, targets)
    result = _finetune(run, epochs, after_step, index)
    if result.diverged:
        raise TrialFailed(f"finetuning diverged at schedule step {index + 1}: {result.reason}; lower finetune.lr")
    if run.granularity == "unstructured" and run.schedule.allows_regrowth:
        _prune_weights(run, targets)
    x, y = run.context.data.split("val")
    accuracy = evaluate(run.model, x, y)
    _, nonzero = prunable_weight_count(run.model)
    return {
        "step": index + 1,
        "sparsity": 1.0 - nonzero / run.dense_total,
        "accuracy": accuracy,
        "epochs": epochs,
        "loss": result.last_epoch_loss,
        "regrown": run.regrown,
    }


def _plain_copy(model: nn.Module, *, dense_values: bool) -> nn.Module:
    """A mask-free copy for scoring: masked weights zero, or (dynamic) their dense values."""
    clone = copy.deepcopy(model)
    layers = prunable_layers(clone)
    if dense_values:
        ones = {n: torch.ones_like(m.weight_orig) for n, m in layers.items() if hasattr(m, "weight_orig")}
        apply_masks(layers, ones, dynamic=True)
    remove_masks(layers)
    return clone


def _scores(run: _Run, layers: Mapping[str, nn.Module], previous: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    """The scorer's weight or channel scores of ``layers`` on a mask-free copy of the model."""
    dynamic = run.schedule.allows_regrowth
    clone = _plain_copy(run.model, dense_values=dynamic)
    clone_layers = {name: prunable_layers(clone)[name] for name in layers}
    if run.granularity == "channel":
        return run.scorer.channel_scores(clone, clone_layers, run.calibration)
    scores = run.scorer.weight_scores(clone, clone_layers, run.calibration)
    if previous and not dynamic:
        # Masks only grow outside dynamic schedules: what is pruned ranks below everything.
        scores = {n: torch.where(previous[n], s, torch.full_like(s, -1.0)) for n, s in scores.items()}
    return scores


def _current_masks(layers: Mapping[str, nn.Module]) -> dict[str, Tensor] | None:
    masks = {n: m.weight_mask.bool() for n, m in layers.items() if hasattr(m, "weight_mask")}
    return masks or None


def _prune_weights(run: _Run, targets: dict[str, float]) -> None:
    """Mask every layer up to ``targets``; count weights a dynamic schedule brings back."""
    layers = run.layers()
    previous = _current_masks(layers)
    scores = _scores(run, layers, previous)
    masks = masks_from_scores(scores, targets)
    if previous:
        run.regrown += sum(int((masks[n] & ~previous[n]).sum()) for n in previous)
    apply_masks(layers, masks, dynamic=run.schedule.allows_regrowth)


def _mask_keeper(run: _Run, targets: dict[str, float]) -> Callable[[], None]:
    """The ``after_step`` hook: keep static masks enforced, or regrow dynamic ones."""
    layers = run.layers()
    every = run.schedule.regrow_every if run.schedule.recompute_masks else None
    counter = {"steps": 0}

    def after_step() -> None:
        counter["steps"] += 1
        if every and counter["steps"] % every == 0:
            _prune_weights(run, targets)
        else:
            enforce_masks(layers)

    return after_step


def _prune_channels(run: _Run, targets: dict[str, float]) -> None:
    layers = run.layers()
    protected = run.context.output_layer
    wanted = {}
    for name, layer in layers.items():
        if name == protected:
            continue
        keep_count = kept_channels(
            run.dense_shapes[name][0], targets.get(name, 0.0),
            round_to=run.policy.round_to, min_density=run.policy.min_layer_density,
        )
        if layer.weight.shape[0] > keep_count:
            wanted[name] = keep_count
    if not wanted:
        return
    scores = _scores(run, {n: layers[n] for n in wanted}, None)
    sparsity = {n: 1.0 - wanted[n] / layers[n].weight.shape[0] for n in wanted}
    keep = channels_to_keep(scores, sparsity)
    example = example_input(tuple(run.context.data.input_shape)).to(run.context.device)
    remove_channels(run.model, example, keep, protected={protected} | run.excluded)


def _finetune(run: _Run, epochs: float, after_step: Callable[[], None] | None, index: int) -> Any:
    policy = run.policy
    context = run.context
    ft = policy.finetune

    def log(entry: dict[str, Any]) -> None:
        run.curve.append({**entry, "schedule_step": index + 1})

    result = train(
        run.model,
        bundle_batches(context.data, context.batch_size, seed=policy.seed),
        epochs=epochs,
        lr=ft.lr,
        start_epoch=run.epochs_done,
        optimizer=ft.optimizer,
        teacher=run.teacher,
        temperature=ft.temperature,
        distill_weight=ft.distill_weight,
        after_step=after_step,
        on_log=log,
        device=context.device,
        seed=policy.seed + index,
    )
    run.epochs_done += epochs
    return result


def _measure(run: _Run) -> dict[str, float]:
    context = run.context
    model = run.model
    x, y = context.data.split("val")
    accuracy = evaluate(model, x, y)
    metrics = measure_model(model, dense_prunable=run.dense_total, input_shape=tuple(context.data.input_shape))
    dense = context.dense_model().eval()
    latency = context.latency
    timing = measure_latency_pair(
        dense,
        model,
        tuple(context.data.input_shape),
        batch_size=latency.batch_size,
        warmup=latency.warmup,
        repeats=latency.repeats,
        threads=latency.threads,
        device=context.device,
        runtime=latency.runtime,
    )
    metrics.update(
        accuracy=accuracy,
        accuracy_drop=context.dense.accuracy - accuracy,
        latency_ms=timing["latency_ms"],
        speedup=timing["speedup"],
        dense_latency_ms=timing["dense_latency_ms"],
        dense_accuracy=context.dense.accuracy,
    )
    return metrics


def _reached_sparsity(model: nn.Module, dense_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, float]:
    """Per dense layer: 1 − non-zero weights now / weights in the dense layer."""
    layers = prunable_layers(model)
    reached = {}
    for name, shape in dense_shapes.items():
        nonzero = int((layers[name].weight != 0).sum()) if name in layers else 0
        reached[name] = 1.0 - nonzero / math.prod(shape)
    return reached
