"""The search driver: ``autoprune search`` on Ray Tune with an Optuna sampler.

One driver process runs a study:

1. the space file (plus command-line overrides) is validated and saved as
   ``studies/<study>/space.yaml``; an existing study folder must hold the same space;
2. the data is loaded and the dense model trained (or loaded) **once**, in the driver;
   they reach the trials through Ray's object store (``tune.with_parameters``);
3. Ray Tune runs trials (:func:`autoprune.trial.run_trial`), each on ``--cpus-per-trial``
   cores or ``--gpus-per-trial`` GPUs, with a :class:`ConcurrencyLimiter` so that as many
   trials as the resources allow start together, and reused worker processes;
4. the search algorithm is Ray's ``OptunaSearch`` on a multi-objective Optuna study stored
   in ``studies/<study>/optuna.db`` (RDB storage: optuna-dashboard opens it), with the
   define-by-run space of :mod:`autoprune.suggest` and a seeded sampler of
   :mod:`autoprune.samplers`. :class:`StudySearcher` is the single writer: it tells Optuna
   each result with the metrics, policy and error as user attributes, and rewrites
   ``trials.csv`` and ``pareto.csv`` after every trial;
5. unless ``--no-tracking``, a :class:`~autoprune.tracking.StudyTracker` mirrors the study in
   MLflow from this process (parent run, one child run per trial, the live front), caught
   up at start and at the end (:mod:`autoprune.tracking`); its per-trial updates run on a
   background thread (:mod:`autoprune.tracking_thread`), so Ray Tune starts the next trial
   without waiting for MLflow.

**Framework cost.** Ray starts on a background thread (:mod:`autoprune.raycluster`) while
MLflow's parent run is set up, and stops while MLflow catches up at the end; the dense
model's latency is timed before Ray starts, on a quiet machine.

**Failures.** A trial that raises or diverges reports ``failed`` with its error; a worker
that dies is restarted by Ray up to ``--retries`` times. Either way the Optuna trial ends
FAIL with the error recorded, and the study goes on: ``trials`` counts *finished* trials,
and failed ones are run again with new policies, up to ``--max-failures``.

**Interrupt and resume.** The Optuna study is the source of truth. Ctrl-C stops the running
trials, marks them failed ("interrupted") and prints the resume command; running the same
command again (or with ``--resume``) marks trials a killed driver left RUNNING as failed and
runs exactly the trials still missing. Finished trials are never rerun. Ray Tune's own
experiment state is kept under ``tune/`` for inspection; resume does not need it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_ZERO_COPY_TORCH_TENSORS", "1")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import warnings  # noqa: E402

import optuna  # noqa: E402
import yaml  # noqa: E402
from ray.tune.search import ConcurrencyLimiter  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

from autoprune.context import StudySetup, TrialContext, build_setup, trial_context  # noqa: E402
from autoprune.dense import check_checkpoint, prepare_dense  # noqa: E402
from autoprune.errors import AutopruneError  # noqa: E402
from autoprune.faults import FaultPlan  # noqa: E402
from autoprune.layers import LayerInfo  # noqa: E402
from autoprune.lock import StudyLock  # noqa: E402
from autoprune.params import Param  # noqa: E402
from autoprune.paths import StudyPaths, study_paths  # noqa: E402
from autoprune.progress import SearchProgress  # noqa: E402
from autoprune.raycluster import RayCluster, start_ray, trial_concurrency  # noqa: E402
from autoprune.results import is_feasible, write_tables  # noqa: E402
from autoprune.samplers import make_sampler  # noqa: E402
from autoprune.space import PolicySpace, SearchSpace, parse_space  # noqa: E402
from autoprune.suggest import PolicySuggester, policy_from_params  # noqa: E402
from autoprune.tracking import StudyTracker, dense_metrics, make_tracker  # noqa: E402
from autoprune.tracking_thread import TrackingThread  # noqa: E402

logger = logging.getLogger("autoprune.search")
optuna.logging.set_verbosity(optuna.logging.WARNING)
# Trials receive the shared context read-only (they copy the model before training), so
# Ray's zero-copy tensor warning does not apply.
warnings.filterwarnings("ignore", message="Zero-copy tensor serialization is enabled")
OUTCOME_KEY = "autoprune_outcome"  # JSON text: Ray flattens nested dicts in results
TRIAL_NUMBER_KEY = "trial_number"  # the Optuna trial number, added to each trial's config
FINISHED = optuna.trial.TrialState.COMPLETE
FAILED = optuna.trial.TrialState.FAIL
_start_ray = start_ray  # the synchronous start, under its old name


@dataclass
class SearchOptions:
    """How to run a study (the ``autoprune search`` flags)."""

    studies: str | Path | None = None
    trials: int | None = None
    name: str | None = None
    sampler: str | None = None
    seed: int | None = None
    gpus: float = 0
    gpus_per_trial: float = 1
    cpus_per_trial: float = 1
    concurrency: int | None = None
    address: str | None = None
    resume: bool = False
    retries: int = 1
    max_failures: int | None = None
    seed_baselines: bool = False
    quiet: bool = False
    faults: FaultPlan | None = None
    tracking: bool = True
    tracking_uri: str | None = None
    retime: bool = True


@dataclass
class SearchOutcome:
    """What a call of :func:`run_search` ended with."""

    paths: StudyPaths
    finished: int
    failed: int
    interrupted: bool
    front_size: int


def apply_overrides(space: SearchSpace, options: SearchOptions) -> SearchSpace:
    """The space with ``--trials``, ``--name``, ``--sampler`` and ``--seed`` applied (validated)."""
    raw = space.to_yaml_dict()
    for key in ("trials", "name", "sampler", "seed"):
        value = getattr(options, key)
        if value is not None:
            raw["study"][key] = value
    return parse_space(raw, source=space.source)


def _comparable(space: SearchSpace) -> dict[str, Any]:
    raw = space.to_yaml_dict()
    raw["study"].pop("trials", None)
    return raw


def save_space(space: SearchSpace, paths: StudyPaths) -> None:
    """Write ``space.yaml``, refusing to reuse a study folder that ran a different space."""
    paths.create()
    if paths.space.exists():
        previous = parse_space(yaml.safe_load(paths.space.read_text()), source=str(paths.space))
        if _comparable(previous) != _comparable(space):
            raise AutopruneError(
                f"{paths.space}: study {space.study.name!r} already exists with a different space; "
                "use --name to start a new study, or delete the folder to start over"
            )
    text = yaml.safe_dump(space.to_yaml_dict(), sort_keys=False)
    tmp = paths.space.with_suffix(".yaml.tmp")
    tmp.write_text(text)
    os.replace(tmp, paths.space)


def open_study(space: SearchSpace, paths: StudyPaths) -> tuple[optuna.Study, optuna.storages.RDBStorage]:
    """The study's Optuna study in ``optuna.db``; trials a dead driver left RUNNING become FAIL."""
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{paths.optuna_db}", engine_kwargs={"connect_args": {"timeout": 30}}
    )
    sampler = make_sampler(space.study.sampler, seed=space.study.seed, trials=space.study.trials)
    study = optuna.create_study(
        storage=storage,
        study_name=space.study.name,
        sampler=sampler,
        directions=["maximize" if d == "max" else "minimize" for d in space.objectives.values()],
        load_if_exists=True,
    )
    fail_running(study, "the driver stopped while the trial was running (interrupted or killed)")
    return study, storage


def fail_running(study: optuna.Study, reason: str) -> int:
    """Mark every RUNNING trial of ``study`` FAIL with ``reason``; returns how many."""
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in stale:
        study._storage.set_trial_user_attr(trial._trial_id, "error", reason)
        study.tell(trial.number, state=FAILED)
    return len(stale)


def count(study: optuna.Study, state: optuna.trial.TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=(state,)))


class StudyRecorder:
    """Turns one Ray Tune trial result into an Optuna tell plus ``trials.csv``/``pareto.csv``.

    Kept apart from the searcher so that the driver-side progress display and the MLflow
    tracker can listen to it; it pickles without them (Ray checkpoints the searcher).
    """

    def __init__(self, space: SearchSpace, paths: StudyPaths) -> None:
        self.objectives = dict(space.objectives)
        self.constraints = space.constraints.model_dump()
        self.trials_csv = paths.trials_csv
        self.pareto_csv = paths.pareto_csv
        self.listener: SearchProgress | None = None
        self.tracker: StudyTracker | TrackingThread | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "listener": None, "tracker": None}

    def record(self, study: optuna.Study, ot_trial: optuna.Trial, result: dict[str, Any] | None, error: bool) -> None:
        encoded = (result or {}).get(OUTCOME_KEY)
        outcome = json.loads(encoded) if isinstance(encoded, str) else None
        if outcome and not outcome.get("error"):
            metrics = outcome["metrics"]
            ot_trial.set_user_attr("metrics", metrics)
            ot_trial.set_user_attr("policy", outcome["policy"])
            ot_trial.set_user_attr("steps", outcome.get("steps", []))
            ot_trial.set_user_attr("curve", outcome.get("curve", []))
            ot_trial.set_user_attr("layer_sparsity", outcome.get("layer_sparsity", {}))
            ot_trial.set_user_attr("layer_channels", outcome.get("layer_channels", {}))
            ot_trial.set_user_attr("feasible", is_feasible(metrics, self.constraints))
            bound = self.constraints.get("accuracy_drop")
            if bound is not None:
                ot_trial.set_constraint("accuracy_drop", float(metrics["accuracy_drop"]) - bound)
            ot_trial.set_user_attr("device", outcome.get("device", ""))
            ot_trial.set_user_attr("worker_seconds", [outcome.get("started"), outcome.get("ended")])
            study.tell(ot_trial, [float(metrics[name]) for name in self.objectives])
        else:
            message = (outcome or {}).get("error") or (
                "the trial's worker process died or was stopped (see search.log)" if error else "the trial was stopped"
            )
            ot_trial.set_user_attr("error", message)
            if outcome and outcome.get("policy"):
                ot_trial.set_user_attr("policy", outcome["policy"])
            study.tell(ot_trial, state=FAILED)
        trials = study.get_trials(deepcopy=False)
        frame = write_tables(trials, self.objectives, self.trials_csv, self.pareto_csv)
        if self.tracker is not None:
            self.tracker.trial_done(trials, frame)
        if self.listener is not None:
            self.listener.trial_done(frame, ot_trial.number)


class StudySearcher(OptunaSearch):
    """Ray's ``OptunaSearch`` whose results are told by a :class:`StudyRecorder`.

    Optuna gets every metric, the policy and any error as user attributes, and failed trials
    end FAIL with their error instead of disappearing.
    """

    def __init__(self, *args: Any, recorder: StudyRecorder, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._recorder = recorder

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        if config is not None:
            config[TRIAL_NUMBER_KEY] = self._ot_trials[trial_id].number
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        self._recorder.record(self._ot_study, self._ot_trials[trial_id], result, error)
        self._completed_trials.add(trial_id)


def make_searcher(space: SearchSpace, layers: list[LayerInfo], study_storage: optuna.storages.RDBStorage,
                  recorder: StudyRecorder, concurrency: int) -> ConcurrencyLimiter:
    """A :class:`StudySearcher` on the study's storage behind a concurrency limiter."""
    sampler = make_sampler(space.study.sampler, seed=space.study.seed, trials=space.study.trials)
    searcher = StudySearcher(
        space=PolicySuggester(space.space, layers, space.study.seed),
        metric=list(space.objectives),
        mode=list(space.objectives.values()),
        sampler=sampler,
        study_name=space.study.name,
        storage=study_storage,
        recorder=recorder,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=concurrency)


def policy_trainable(config: dict[str, Any], *, shared: dict[str, Any]) -> None:
    """The Ray Tune trainable: one policy, run with the shared context, reported once.

    Never raises for a failing policy: it reports ``{OUTCOME_KEY: '{"error": ...}'}`` so the
    error reaches the study. Objective placeholders keep Ray's metric check satisfied; the
    recorder never tells them to Optuna.
    """
    import torch
    from ray import tune

    from autoprune.trial import TrialFailed, run_trial

    context: TrialContext = shared["context"]
    space: PolicySpace = shared["space"]
    threads = max(1, int(shared["cpus_per_trial"]))
    torch.set_num_threads(threads)
    device = "cuda" if shared["gpus_per_trial"] > 0 and torch.cuda.is_available() else "cpu"
    if device != context.device:
        context = replace(context, device=device)
    number = int(config.get(TRIAL_NUMBER_KEY, -1))
    policy = policy_from_params(config, space, shared["layers"], shared["seed"])
    placeholders = {name: 0.0 for name in shared["objectives"]}
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    started = time.time()
    try:
        faults: FaultPlan | None = shared.get("faults")
        if faults is not None:
            context = faults.apply(number, context)
        result = run_trial(policy, context, threads=threads)
    except (TrialFailed, AutopruneError, RuntimeError, ValueError, MemoryError, FloatingPointError) as exc:
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        tune.report({**placeholders, OUTCOME_KEY: json.dumps({"error": message, "policy": policy.to_dict()})})
        return
    outcome = {
        "metrics": result.metrics,
        "policy": policy.to_dict(),
        "steps": result.steps,
        "curve": [{k: entry[k] for k in ("step", "loss", "lr", "schedule_step") if k in entry} for entry in result.curve],
        "layer_sparsity": result.layer_sparsity,
        "layer_channels": result.layer_channels,
        "device": f"{device} CUDA_VISIBLE_DEVICES={visible}" if visible else device,
        "started": started,
        "ended": time.time(),
    }
    tune.report({**{k: result.metrics[k] for k in shared["objectives"]}, OUTCOME_KEY: json.dumps(outcome)})


def _check_options(options: SearchOptions) -> None:
    if options.gpus < 0:
        raise AutopruneError(f"--gpus {options.gpus:g}: must be 0 (CPU trials) or more")
    if options.gpus > 0 and not 0 < options.gpus_per_trial <= options.gpus:
        raise AutopruneError(
            f"--gpus-per-trial {options.gpus_per_trial:g}: must be more than 0 and at most --gpus ({options.gpus:g})"
        )
    if options.cpus_per_trial <= 0:
        raise AutopruneError(f"--cpus-per-trial {options.cpus_per_trial:g}: must be more than 0")
    if options.retries < 0:
        raise AutopruneError(f"--retries {options.retries}: must be 0 or more")


def _allows(param: Param, value: Any) -> bool:
    """Whether ``value`` is one of the values ``param`` can take."""
    if param.kind == "range":
        return param.low <= value <= param.high
    return value in param.options()


def _seed_baselines(study: optuna.Study, space: SearchSpace) -> int:
    """Enqueue uniform and global magnitude pruning at three sparsities (only values the space allows)."""
    policy_space = space.space
    target = policy_space.target_sparsity
    if target.kind == "range":
        sparsities = [target.low + (target.high - target.low) * q for q in (0.25, 0.5, 0.75)]
    else:
        sparsities = list(target.options())
    queued = 0
    for allocation in ("uniform", "global"):
        for sparsity in sparsities:
            wanted = {
                "granularity": (policy_space.granularity, "unstructured"),
                "scorer": (policy_space.scorer, "magnitude"),
                "allocation": (policy_space.allocation, allocation),
                "target_sparsity": (target, sparsity),
                "schedule.shape": (policy_space.schedule.shape, "one_shot"),
            }
            if not all(_allows(param, value) for param, value in wanted.values()):
                continue
            params = {name: value for name, (param, value) in wanted.items() if param.searched}
            if params:
                study.enqueue_trial(params, skip_if_exists=True)
                queued += 1
    return queued


def run_search(space: SearchSpace, options: SearchOptions, *, log: Callable[[str], None] = print) -> SearchOutcome:
    """Run (or resume) the study of ``space`` until ``study.trials`` trials have finished.

    Everything that can be checked is checked before the study folder is touched; the study
    is then locked (:class:`~autoprune.lock.StudyLock`) so that no second driver writes it.
    """
    _check_options(options)
    space = apply_overrides(space, options)
    setup = build_setup(space)
    check_checkpoint(setup)  # a bad model.checkpoint is refused before the study folder is touched
    paths = study_paths(space.study.name, options.studies)
    tracker = make_tracker(space, paths, uri=options.tracking_uri, layers=setup.layers, log=log) if options.tracking else None
    paths.create()
    with StudyLock(paths.lock, log=log):
        return _run_locked(space, setup, options, paths, log, tracker)


def _run_locked(space: SearchSpace, setup: StudySetup, options: SearchOptions, paths: StudyPaths,
                log: Callable[[str], None], tracker: StudyTracker | None = None) -> SearchOutcome:
    save_space(space, paths)
    study, storage = open_study(space, paths)
    finished = count(study, FINISHED)
    failed_before = count(study, FAILED)
    wanted = space.study.trials
    if finished and not options.resume:
        log(f"study {space.study.name}: {finished} of {wanted} trials already finished; resuming")
    if finished >= wanted:
        frame = write_tables(study.get_trials(deepcopy=False), space.objectives, paths.trials_csv, paths.pareto_csv)
        if tracker is not None:  # catch MLflow up (e.g. after a run with --no-tracking)
            tracker.start(study, dense_metrics(trial_context(setup, prepare_dense(setup, paths, log=log))))
            tracker.finish(study)
        return SearchOutcome(paths, finished, failed_before, False, int(frame["pareto"].sum()) if len(frame) else 0)
    dense = prepare_dense(setup, paths, log=log)
    context = trial_context(setup, dense)
    # The dense latency is timed before Ray's start loads the machine; MLflow's start then runs
    # while Ray starts (autoprune/raycluster.py), and per-trial MLflow logging on its own thread.
    dense_values = dense_metrics(context) if tracker is not None else {}
    max_failures = options.max_failures if options.max_failures is not None else max(3, wanted)
    concurrency_hint = options.concurrency or (
        max(1, int(options.gpus // options.gpus_per_trial)) if options.gpus > 0 else 1
    )
    cluster = RayCluster(options, concurrency_hint, paths.log)
    tracking = TrackingThread(tracker, log=log) if tracker is not None else None
    interrupted = False
    status = "FAILED"
    try:
        if tracking is not None:
            tracking.start(study, dense_values)
        if options.seed_baselines and not finished:
            log(f"seeded the study with {_seed_baselines(study, space)} baseline policies")
        cluster.wait()
        progress = SearchProgress(space, dense_accuracy=dense.accuracy, total=wanted, already=finished,
                                  quiet=options.quiet, log=log)
        concurrency = trial_concurrency(options)
        log(f"running {wanted - finished} trials, {concurrency} at a time "
            f"({'GPU' if options.gpus else 'CPU'}); Ray's log: {paths.log}")
        recorder = StudyRecorder(space, paths)
        recorder.listener = progress
        recorder.tracker = tracking
        shared = {
            "context": context,
            "space": space.space,
            "layers": setup.layers,
            "seed": space.study.seed,
            "objectives": list(space.objectives),
            "cpus_per_trial": options.cpus_per_trial,
            "gpus_per_trial": options.gpus_per_trial if options.gpus > 0 else 0,
            "faults": options.faults,
        }
        with progress:
            while True:
                finished = count(study, FINISHED)
                failures = count(study, FAILED) - failed_before
                if finished >= wanted:
                    break
                if failures >= max_failures:
                    raise AutopruneError(
                        f"study {space.study.name}: {failures} trials failed (--max-failures {max_failures}); "
                        f"see the error column of {paths.trials_csv}"
                    )
                remaining = wanted - finished
                interrupted = _fit(space, setup.layers, storage, recorder, shared, options, paths,
                                   samples=remaining,
                                   concurrency=concurrency)
                if interrupted:
                    fail_running(study, "interrupted (Ctrl-C)")
                    break
        status = "KILLED" if interrupted else "FINISHED"
    finally:  # Ray stops while MLflow catches up; both are done before the retime times anything
        cluster.stop()
        try:
            if tracking is not None and tracking.started:
                tracking.finish(study, status=status)
        finally:
            cluster.join()
    frame = write_tables(study.get_trials(deepcopy=False), space.objectives, paths.trials_csv, paths.pareto_csv)
    if options.retime and not interrupted:  # every Pareto candidate timed alone (autoprune/retime.py)
        from autoprune.retime import retime_setup

        frame = retime_setup(setup, paths, tracking=options.tracking, tracking_uri=options.tracking_uri, log=log).frame
    finished = count(study, FINISHED)
    return SearchOutcome(
        paths=paths,
        finished=finished,
        failed=count(study, FAILED) - failed_before,
        interrupted=interrupted,
        front_size=int(frame["pareto"].sum()) if len(frame) else 0,
    )


def _fit(space: SearchSpace, layers: list[LayerInfo], storage: optuna.storages.RDBStorage, recorder: StudyRecorder,
         shared: dict[str, Any], options: SearchOptions, paths: StudyPaths, *, samples: int, concurrency: int) -> bool:
    """One ``Tuner.fit()`` of up to ``samples`` trials; returns whether it was interrupted."""
    from ray import tune

    searcher = make_searcher(space, layers, storage, recorder, concurrency)
    resources = {"cpu": options.cpus_per_trial}
    if shared["gpus_per_trial"]:
        resources["gpu"] = shared["gpus_per_trial"]
    trainable = tune.with_resources(tune.with_parameters(policy_trainable, shared=shared), resources)
    run_name = f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=samples, reuse_actors=True,
                                    max_concurrent_trials=concurrency),
        run_config=tune.RunConfig(
            name=run_name,
            storage_path=str(paths.tune),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=options.retries),
            log_to_file=True,
        ),
    )
    interrupted = {"flag": False}
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum: int, frame: Any) -> None:
        # First Ctrl-C: ask Ray Tune to stop gracefully (its SIGUSR1 handler does that);
        # a second one aborts at once.
        if interrupted["flag"]:
            raise KeyboardInterrupt
        interrupted["flag"] = True
        os.kill(os.getpid(), signal.SIGUSR1)

    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    signal.signal(signal.SIGINT, on_sigint)
    try:
        tuner.fit()
    except KeyboardInterrupt:
        interrupted["flag"] = True
    finally:
        signal.signal(signal.SIGINT, previous)
    return interrupted["flag"]
