"""The no-search references: what an engineer would do by hand, at the study's budget.

A search is only worth running if its front beats the standard recipes. A *baseline* is one
such recipe at one overall sparsity: a fixed scorer and allocation (:data:`METHODS`), pruned
on one schedule (``one_shot`` unless asked otherwise) and finetuned with one budget. Every
baseline runs through the same :func:`~autoprune.trial.run_trial` as the search's trials,
on the same cached dense model, data, seed and latency settings, so the two are measured
alike.

The budget (:func:`baseline_settings`) comes from the space: a fixed value is used as it
is; a searched ``finetune.epochs`` gives the baselines its largest value (the most any trial
can spend), a searched ``finetune.lr`` its (geometric, when log-scaled) middle. Flags of
``autoprune baselines`` override each of them.

Results go to ``studies/<study>/baselines.csv`` (one row per method and sparsity, written
after each point, so an interrupted run loses nothing and the same command skips what is
done), to MLflow (a ``baselines`` run in the study's experiment with a child run per point,
:mod:`autoprune.baseline_tracking`) and onto the study's ``pareto.html``/``pareto.png``.

Example::

    settings = baseline_settings(space, sparsities=[0.9, 0.95], methods=["global", "lamp"])
    outcome = run_baselines(space, settings)
    outcome.frame[["method", "target_sparsity", "accuracy", "sparsity"]]
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from autoprune.errors import AutopruneError
from autoprune.params import Param
from autoprune.paths import StudyPaths, study_paths
from autoprune.policy import FinetuneSettings, Policy, ScheduleSettings
from autoprune.registry import Registry
from autoprune.results import METRIC_COLUMNS, is_feasible, pareto_mask, write_csv
from autoprune.space import SearchSpace

DEFAULT_SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.98)
KEY_COLUMNS = ("method", "target_sparsity", "granularity", "schedule", "steps", "epochs", "lr", "seed")


@dataclass(frozen=True)
class BaselineMethod:
    """A standard pruning recipe: which scorer ranks the weights and how sparsity is spread."""

    scorer: str
    allocation: str
    description: str


METHODS: Registry[BaselineMethod] = Registry("baseline method")
METHODS.register("uniform")(BaselineMethod("magnitude", "uniform", "the same sparsity in every layer, smallest |w| first"))
METHODS.register("global")(BaselineMethod("magnitude", "global", "one |w| threshold across layers (Han et al. 2015)"))
METHODS.register("lamp")(BaselineMethod("lamp", "lamp", "one threshold on LAMP scores (Lee et al. 2021)"))
METHODS.register("erk")(BaselineMethod("magnitude", "erk", "Erdős–Rényi-kernel layer sparsities (Evci et al. 2020)"))
METHODS.register("random")(BaselineMethod("random", "uniform", "uniform sparsity, seeded random choice"))


@dataclass(frozen=True)
class BaselineSettings:
    """What the baselines run: methods × sparsities, on one schedule and finetune budget."""

    methods: tuple[str, ...]
    sparsities: tuple[float, ...]
    granularity: str
    schedule: str
    steps: int
    epochs: float
    lr: float
    optimizer: str
    seed: int

    def budget(self) -> str:
        """One line describing the schedule and budget (for logs and the MLflow run)."""
        steps = f" ({self.steps} steps)" if self.schedule != "one_shot" else ""
        return (f"{self.granularity}, {self.schedule}{steps}, finetune {self.epochs:g} epochs "
                f"at lr {self.lr:.3g} ({self.optimizer}), seed {self.seed}")


def _middle(param: Param) -> Any:
    """A searched learning rate's middle: geometric for a log range, the first choice otherwise."""
    if not param.searched:
        return param.options()[0]
    if param.kind == "range":
        if param.log:
            return math.sqrt(float(param.low) * float(param.high))
        return (float(param.low) + float(param.high)) / 2
    return param.options()[0]


def _largest(param: Param) -> float:
    """The most a searched number can be (its only value when fixed)."""
    if param.kind == "range":
        return float(param.high)
    return max(float(value) for value in param.options())


def baseline_settings(
    space: SearchSpace,
    *,
    methods: Sequence[str] | None = None,
    sparsities: Sequence[float] | None = None,
    granularity: str | None = None,
    schedule: str | None = None,
    steps: int | None = None,
    epochs: float | None = None,
    lr: float | None = None,
) -> BaselineSettings:
    """The baselines' settings: each argument left ``None`` comes from ``space`` (module docstring).

    Raises:
        AutopruneError: an unknown method, schedule or granularity, a sparsity outside
            [0, 1), or a non-positive budget; the message names the ``autoprune baselines`` flag.
    """
    from autoprune.schedules import SCHEDULES

    chosen_methods = tuple(methods) if methods else tuple(METHODS.names())
    for name in chosen_methods:
        METHODS.get(name, where="--methods: ")
    chosen_sparsities = tuple(float(s) for s in (sparsities if sparsities else DEFAULT_SPARSITIES))
    bad = [s for s in chosen_sparsities if not 0 <= s < 1]
    if bad:
        raise AutopruneError(f"--sparsities {bad[0]:g}: each sparsity must be in [0, 1)")
    chosen_granularity = granularity or space.space.granularity.options()[0]
    if chosen_granularity not in ("unstructured", "channel"):
        raise AutopruneError(f"--granularity {chosen_granularity!r}: allowed: unstructured, channel")
    shape = schedule or "one_shot"
    SCHEDULES.get(shape, where="--schedule: ")
    if steps is None:
        steps = 1 if shape == "one_shot" else int(_largest(space.space.schedule.steps))
    if steps < 1:
        raise AutopruneError(f"--steps {steps}: must be 1 or more")
    finetune = space.space.finetune
    chosen_epochs = _largest(finetune.epochs) if epochs is None else float(epochs)
    if not chosen_epochs >= 0:
        raise AutopruneError(f"--epochs {chosen_epochs:g}: must be 0 or more")
    chosen_lr = float(_middle(finetune.lr)) if lr is None else float(lr)
    if not chosen_lr > 0:
        raise AutopruneError(f"--lr {chosen_lr:g}: must be more than 0")
    return BaselineSettings(
        methods=chosen_methods, sparsities=chosen_sparsities, granularity=chosen_granularity, schedule=shape,
        steps=1 if shape == "one_shot" else int(steps), epochs=chosen_epochs, lr=chosen_lr,
        optimizer=str(finetune.optimizer.options()[0]), seed=space.study.seed,
    )


def baseline_policy(settings: BaselineSettings, method: str, sparsity: float, exclude: Sequence[str] = (),
                    min_layer_density: float = 0.01) -> Policy:
    """The :class:`Policy` of one baseline point (no distillation: the recipe as usually run)."""
    recipe = METHODS.get(method, where="--methods: ")
    return Policy(
        granularity=settings.granularity,
        scorer=recipe.scorer,
        allocation=recipe.allocation,
        target_sparsity=sparsity,
        exclude=list(exclude),
        min_layer_density=min_layer_density,
        schedule=ScheduleSettings(shape=settings.schedule, steps=settings.steps),
        finetune=FinetuneSettings(epochs=settings.epochs, lr=settings.lr, optimizer=settings.optimizer),
        seed=settings.seed,
    )


def point_key(settings: BaselineSettings, method: str, sparsity: float) -> tuple[Any, ...]:
    """What identifies a row of ``baselines.csv``: a rerun with the same key is skipped."""
    return (method, round(float(sparsity), 6), settings.granularity, settings.schedule, int(settings.steps),
            round(float(settings.epochs), 6), round(float(settings.lr), 9), int(settings.seed))


def row_key(row: pd.Series | dict[str, Any]) -> tuple[Any, ...]:
    """:func:`point_key` of a row read back from ``baselines.csv``."""
    return (str(row["method"]), round(float(row["target_sparsity"]), 6), str(row["granularity"]),
            str(row["schedule"]), int(row["steps"]), round(float(row["epochs"]), 6),
            round(float(row["lr"]), 9), int(row["seed"]))


def read_baselines(paths: StudyPaths) -> pd.DataFrame | None:
    """The study's ``baselines.csv``, or ``None`` when there is none (or it cannot be read)."""
    if not paths.baselines_csv.is_file():
        return None
    try:
        frame = pd.read_csv(paths.baselines_csv)
    except (OSError, ValueError, pd.errors.ParserError):
        return None
    return frame if {"method", "target_sparsity", "state"} <= set(frame.columns) else None


def baselines_table(rows: Sequence[dict[str, Any]], space: SearchSpace) -> pd.DataFrame:
    """Rows as the ``baselines.csv`` table, with a ``pareto`` column: the baselines' own front."""
    frame = pd.DataFrame(list(rows)).drop(columns=["pareto"], errors="ignore")
    if frame.empty:
        return pd.DataFrame(columns=[*KEY_COLUMNS, "state", "feasible", "pareto", *METRIC_COLUMNS, "error"])
    frame.insert(len(KEY_COLUMNS) + 2, "pareto", pareto_mask(frame, space.objectives))
    return frame


@dataclass
class BaselinesOutcome:
    """What :func:`run_baselines` did."""

    paths: StudyPaths
    frame: pd.DataFrame
    ran: int = 0
    skipped: int = 0
    failed: int = 0
    interrupted: bool = False
    plots: list[Path] = field(default_factory=list)


def _row(settings: BaselineSettings, method: str, sparsity: float, policy: Policy) -> dict[str, Any]:
    key = dict(zip(KEY_COLUMNS, point_key(settings, method, sparsity)))
    return {**key, "scorer": policy.scorer, "allocation": policy.allocation}


def run_baselines(
    space: SearchSpace,
    settings: BaselineSettings,
    *,
    studies: str | Path | None = None,
    threads: int = 1,
    tracking: bool = True,
    tracking_uri: str | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> BaselinesOutcome:
    """Run every (method, sparsity) point of ``settings`` not in ``baselines.csv`` yet.

    The dense model is the study's (trained once and cached in ``studies/<study>/``); the
    study is locked while the baselines run. ``force`` runs every point again (the old rows
    are replaced). Ctrl-C stops after writing what finished (``interrupted`` is then true).
    """
    from autoprune.baseline_tracking import BaselineTracker
    from autoprune.context import build_setup, trial_context
    from autoprune.dense import prepare_dense
    from autoprune.lock import StudyLock
    from autoprune.tracking import check_tracking_uri, resolve_tracking_uri

    setup = build_setup(space)
    paths = study_paths(space.study.name, studies)
    uri = None
    if tracking:
        uri, source = resolve_tracking_uri(tracking_uri, paths.root)
        check_tracking_uri(uri, source)
    paths.create()
    with StudyLock(paths.lock, log=log):
        dense = prepare_dense(setup, paths, log=log)
        context = trial_context(setup, dense)
        existing = read_baselines(paths)
        rows = [] if existing is None else existing.to_dict("records")
        wanted = [(m, s) for m in settings.methods for s in settings.sparsities]
        if force:
            keys = {point_key(settings, m, s) for m, s in wanted}
            rows = [row for row in rows if row_key(row) not in keys]
        done = {row_key(row) for row in rows}
        todo = [(m, s) for m, s in wanted if point_key(settings, m, s) not in done]
        outcome = BaselinesOutcome(paths, baselines_table(rows, space), skipped=len(wanted) - len(todo))
        tracker = BaselineTracker(space, paths, settings, uri=uri, log=log) if uri else None
        if tracker is not None:
            tracker.start(float(dense.accuracy), outcome.frame)
        log(f"baselines of {space.study.name}: {len(todo)} to run, {outcome.skipped} already in "
            f"{paths.baselines_csv.name}; {settings.budget()}")
        exclude = [layer.name for layer in setup.layers if layer.excluded]
        status = "FINISHED"
        try:
            for index, (method, sparsity) in enumerate(todo, start=1):
                row = _run_point(context, settings, method, sparsity, exclude, space, threads)
                rows.append(row)
                outcome.frame = baselines_table(rows, space)
                write_csv(outcome.frame, paths.baselines_csv)
                outcome.ran += 1
                outcome.failed += row["state"] == "failed"
                log(f"[{index}/{len(todo)}] {_describe(row)}")
                if tracker is not None:
                    tracker.point_done(row)
        except KeyboardInterrupt:
            outcome.interrupted = True
            status = "KILLED"
        outcome.plots = overlay_plots(space, paths, outcome.frame)
        if tracker is not None:
            tracker.finish(outcome.frame, outcome.plots, status=status)
    return outcome


def _run_point(context: Any, settings: BaselineSettings, method: str, sparsity: float, exclude: Sequence[str],
               space: SearchSpace, threads: int) -> dict[str, Any]:
    """One baseline through :func:`run_trial`; a failed trial becomes a ``failed`` row with its error."""
    from autoprune.trial import run_trial

    policy = baseline_policy(settings, method, sparsity, exclude, space.space.min_layer_density)
    row = _row(settings, method, sparsity, policy)
    started = time.perf_counter()
    try:
        result = run_trial(policy, context, threads=threads)
    except AutopruneError:
        raise
    except Exception as error:  # TrialFailed or a crash: recorded like a failed search trial; the others go on
        row.update(state="failed", feasible=False, error=f"{type(error).__name__}: {error}".splitlines()[0],
                   duration_s=time.perf_counter() - started)
        row.update({name: math.nan for name in METRIC_COLUMNS})
        return row
    metrics = result.metrics
    row.update(state="finished", feasible=is_feasible(metrics, space.constraints.model_dump()), error="")
    row.update({name: metrics.get(name, math.nan) for name in METRIC_COLUMNS})
    row["duration_s"] = time.perf_counter() - started
    return row


def _describe(row: dict[str, Any]) -> str:
    head = f"{row['method']} @ {row['target_sparsity']:g}"
    if row["state"] != "finished":
        return f"{head}: failed ({row['error']})"
    return (f"{head}: accuracy {row['accuracy']:.4f} (drop {row['accuracy_drop']:+.4f}), "
            f"sparsity {row['sparsity']:.4f}, latency {row['latency_ms']:.3g} ms, {row['duration_s']:.1f} s")


def overlay_plots(space: SearchSpace, paths: StudyPaths, baselines: pd.DataFrame) -> list[Path]:
    """Redraw the study's ``pareto.html``/``pareto.png`` with the baselines on them.

    Only when the study has trials (``trials.csv``); returns the files written.
    """
    from autoprune.plots import write_plots

    if not paths.trials_csv.is_file() or baselines.empty:
        return []
    try:
        trials = pd.read_csv(paths.trials_csv)
    except (OSError, ValueError, pd.errors.ParserError):
        return []
    page, image = write_plots(trials, space.objectives, paths.folder, title=f"Pareto front of {space.study.name}",
                              baselines=baselines)
    return [page, image]
