"""The runs of ``overhead.py``: the workload, the plain loop, one timed ``autoprune search``.

Split from ``overhead.py`` (which holds the rounds, ratios and report). A search run wraps
the driver's own functions at run time (:func:`stopwatch`: ``ray.init``, ``ray.shutdown``,
the per-trial record, MLflow's start / per-trial update / finish, the retime) to split its
time into stages, without editing the driver; :class:`~_monitors.TreeMonitor` adds busy
cores and peak memory (driver RSS high-water mark, Ray trial workers, the whole tree).
"""

from __future__ import annotations

import importlib
import json
import math
import multiprocessing
import os
import shutil
import statistics
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from autoprune.context import TrialContext
from autoprune.paths import study_paths
from autoprune.policy import Policy
from autoprune.search import SearchOptions, open_study, run_search
from autoprune.space import SearchSpace, parse_space
from autoprune.trial import run_trial
from _monitors import TreeMonitor  # benchmarks/_monitors.py

TARGET_RATIO = 1.10  # search phase / plain loop wall, concurrency 1
TARGET_SCALING = 1.8  # search throughput, 2 concurrent trials vs 1
RUNS = ("loop_c1", "search_c1", "search_c2", "loop_c2")  # the four runs of a round
SCORERS = ("magnitude", "l2")
SPARSITY_RANGE = (0.5, 0.9)

@dataclass(frozen=True)
class Settings:
    """The workload: the full run, or the short ``--smoke`` version."""

    data: str
    train_subset: int | None
    model: str
    model_args: Mapping[str, Any]
    pretrain_epochs: float
    finetune_epochs: float
    lr: float
    latency_repeats: int
    policies: int
    rounds: int
    quiet_wait: float
    probe_imports: bool  # time a fresh Ray worker's imports in separate processes (explains the first-trial delay)


FULL = Settings(
    data="fashion_mnist", train_subset=4000, model="small_cnn", model_args={"channels": [16, 32], "hidden": 64},
    pretrain_epochs=2, finetune_epochs=1.0, lr=0.02, latency_repeats=50, policies=8, rounds=2, quiet_wait=240,
    probe_imports=True,
)
SMOKE = Settings(
    data="digits", train_subset=None, model="mlp", model_args={"hidden": [64, 32]},
    pretrain_epochs=10, finetune_epochs=0.3, lr=0.02, latency_repeats=5, policies=2, rounds=1, quiet_wait=0,
    probe_imports=False,
)

IMPORT_PROBES = {  # what a fresh Ray trial worker imports before and during its first trial, timed alone
    "python_and_ray_s": (None, "import ray"),  # None: the whole process, interpreter start included
    "worker_imports_s": ("", "import ray.tune, autoprune.search"),  # the trainable's module and Tune's wrapper
    "torch_dynamo_s": ("import torch", "import torch._dynamo"),  # torch.optim's first optimizer imports it
}


def log(message: str) -> None:
    """Progress on stderr, so a background run's log shows where it is."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- workload


def make_space(settings: Settings, name: str) -> SearchSpace:
    """The benchmark's space: searched ``scorer`` and ``target_sparsity``, everything else fixed."""
    return parse_space({
        "study": {"name": name, "trials": settings.policies, "sampler": "tpe", "seed": 0},
        "objectives": {"accuracy": "max", "sparsity": "max"},
        "model": {"name": settings.model, "args": dict(settings.model_args),
                  "pretrain": {"epochs": settings.pretrain_epochs, "lr": 0.05}},
        "data": {"name": settings.data, "train_subset": settings.train_subset, "batch_size": 128},
        "latency": {"batch_size": 1, "threads": 1, "repeats": settings.latency_repeats,
                    "warmup": min(5, settings.latency_repeats)},
        "space": {"granularity": "unstructured", "scorer": list(SCORERS), "allocation": "uniform",
                  "target_sparsity": list(SPARSITY_RANGE), "schedule": {"shape": "one_shot", "steps": 1},
                  "finetune": {"epochs": settings.finetune_epochs, "lr": settings.lr}},
    }, source="benchmarks/overhead.py")


def policy_params(count: int) -> list[dict[str, Any]]:
    """``count`` fixed parameter dicts: scorers alternate, sparsity evenly spread over the range."""
    low, step = SPARSITY_RANGE[0], (SPARSITY_RANGE[1] - SPARSITY_RANGE[0]) / max(1, count - 1)
    return [{"scorer": SCORERS[i % len(SCORERS)], "target_sparsity": round(low + step * i, 4)} for i in range(count)]


# --------------------------------------------------------------------------- plain loop

_POOL: dict[str, Any] = {}


def _pool_trial(index: int) -> dict[str, Any]:
    """One trial in a forked pool worker (context and policies inherited from the parent)."""
    return _timed_trial(index, _POOL["policies"][index], _POOL["context"])


def _timed_trial(index: int, policy: Policy, context: TrialContext) -> dict[str, Any]:
    """Run one policy; its epoch start/end, ``trial_seconds`` and the metrics that identify it."""
    start = time.time()
    result = run_trial(policy, context, threads=1)
    end = time.time()
    return {"index": index, "start": start, "end": end, "trial_seconds": result.metrics["trial_seconds"],
            "accuracy": result.metrics["accuracy"], "sparsity": result.metrics["sparsity"]}


def start_pool(policies: Sequence[Policy], context: TrialContext, processes: int) -> tuple[Any, float]:
    """A pool of ``processes`` forked workers that inherit ``policies`` and ``context``; its start time.

    Forked before any Ray instance exists in this process (forking a process with Ray's
    threads could deadlock), and reused by every concurrent loop run.
    """
    _POOL.update(policies=list(policies), context=context)
    started = time.perf_counter()
    pool = multiprocessing.get_context("fork").Pool(processes)
    pool.map(abs, range(processes), chunksize=1)
    return pool, time.perf_counter() - started


def loop_run(policies: Sequence[Policy], context: TrialContext, concurrency: int, pool: Any) -> dict[str, Any]:
    """The plain loop: sequential ``run_trial`` calls, or the forked ``pool`` taking one policy at a time."""
    with TreeMonitor() as cpu:
        started = time.time()
        if concurrency == 1:
            trials = [_timed_trial(i, policy, context) for i, policy in enumerate(policies)]
        else:
            trials = sorted(pool.imap_unordered(_pool_trial, range(len(policies)), chunksize=1),
                            key=lambda t: t["index"])
        ended = time.time()
    return _summary(trials, concurrency, started, ended, cpu.result())


def _summary(trials: list[dict[str, Any]], concurrency: int, started: float, ended: float,
             cores: dict[str, float]) -> dict[str, Any]:
    """Wall time, throughput and per-trial overhead of one run whose timed part is started..ended."""
    wall = ended - started
    durations = [t["end"] - t["start"] for t in trials]
    return {"concurrency": concurrency, "wall_s": wall, "throughput": len(trials) / wall,
            "trial_sum_s": sum(durations), "trial_mean_s": statistics.mean(durations),
            "overhead_per_trial_s": (concurrency * wall - sum(durations)) / len(trials), **cores,
            "loadavg_after": [round(v, 2) for v in os.getloadavg()], "trials": trials}


# --------------------------------------------------------------------------- search


STAGES = {  # stage → (module, attribute path) of the driver code it wraps while a search runs
    "dense_metrics": ("autoprune.search", "dense_metrics"),
    "ray_init": ("ray", "init"),
    "ray_shutdown": ("ray", "shutdown"),
    "record": ("autoprune.search", "StudyRecorder.record"),
    "tracking_start": ("autoprune.tracking", "StudyTracker.start"),
    "tracking_queue": ("autoprune.tracking_thread", "TrackingThread.trial_done"),
    "tracking_trial": ("autoprune.tracking", "StudyTracker.trial_done"),
    "tracking_finish": ("autoprune.tracking", "StudyTracker.finish"),
    "retime": ("autoprune.retime", "retime_setup"),
}


def _timed(calls: list[tuple[float, float]], original: Any) -> Any:
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.time()
        try:
            return original(*args, **kwargs)
        finally:
            calls.append((start, time.time()))
    return timed


@contextmanager
def stopwatch() -> Iterator[dict[str, list[tuple[float, float]]]]:
    """Epoch (start, end) of every call of the driver's :data:`STAGES` inside the block, by stage.

    Each function is replaced by a timing wrapper and restored afterwards; the code itself is
    not changed. A stage the driver does not have is skipped (it then costs nothing). Calls
    on the driver's background threads (``ray.init``/``ray.shutdown``, MLflow's per-trial
    update) are timed too.
    """
    calls: dict[str, list[tuple[float, float]]] = {stage: [] for stage in STAGES}
    patched = []
    for stage, (module, path) in STAGES.items():
        try:
            owner: Any = importlib.import_module(module)
            for parent in path.split(".")[:-1]:
                owner = getattr(owner, parent)
            name = path.split(".")[-1]
            patched.append((owner, name, getattr(owner, name)))
        except (ImportError, AttributeError):
            continue
        setattr(owner, name, _timed(calls[stage], patched[-1][2]))
    try:
        yield calls
    finally:
        for owner, name, original in reversed(patched):
            setattr(owner, name, original)


def search_run(settings: Settings, root: Path, name: str, params: Sequence[dict[str, Any]],
               expected: Sequence[Policy], dense_folder: Path, concurrency: int) -> dict[str, Any]:
    """One ``run_search`` of the enqueued ``params`` in a fresh study, split into stages, verified.

    Each search gets its own studies folder, so each creates its own MLflow store, as a
    first study in a folder does.
    """
    space = make_space(settings, name)
    root = root / name
    paths = study_paths(name, root)
    paths.create()
    for file in ("dense.pt", "dense.json"):
        shutil.copy2(dense_folder / file, paths.folder / file)
    study, storage = open_study(space, paths)
    for p in params:
        study.enqueue_trial(dict(p))
    storage.engine.dispose()
    events: list[tuple[float, str]] = []
    options = SearchOptions(studies=root, concurrency=concurrency, trials=len(params), quiet=True)
    with TreeMonitor() as cpu, stopwatch() as calls:
        started = time.time()
        outcome = run_search(space, options, log=lambda message: events.append((time.time(), message)))
        ended = time.time()
    trials = verify(paths.optuna_db, name, params, expected)
    if outcome.finished != len(params) or outcome.failed:
        raise RuntimeError(f"{name}: {outcome.finished} finished, {outcome.failed} failed; wanted {len(params)}, 0")
    dense_at = next((t for t, m in events if m.startswith("dense model")), math.nan)
    first_start = min(t["start"] for t in trials)
    last_end = max(t["end"] for t in trials)
    window = last_end - first_start
    summary = _summary(trials, concurrency, dense_at, ended, cpu.result())
    ray_ready = max((end for _, end in calls["ray_init"]), default=dense_at)
    stages = {stage: sum(end - start for start, end in calls[stage]) for stage in STAGES}
    summary.update(
        total_s=ended - started,
        phases={
            "setup_s": dense_at - started,
            "before_ray_s": min((s for s, _ in calls["ray_init"]), default=ray_ready) - dense_at,
            "ray_init_s": stages["ray_init"],
            "first_trial_delay_s": first_start - ray_ready,
            "trials_window_s": window,
            "teardown_s": ended - last_end,
        },
        stages=stages,
        record_per_trial_s=stages["record"] / len(trials),
        tracking_per_trial_s=stages["tracking_trial"] / len(trials),
        tracking_queue_per_trial_s=stages["tracking_queue"] / len(trials),
        tracking_calls=len(calls["tracking_trial"]),
        fixed_s=summary["wall_s"] - window,
        steady_throughput=len(trials) / window,
        steady_overhead_per_trial_s=(concurrency * window - summary["trial_sum_s"]) / len(trials),
        events=[[t - started, m] for t, m in events],
    )
    return summary


def verify(db: Path, name: str, params: Sequence[dict[str, Any]], expected: Sequence[Policy]) -> list[dict[str, Any]]:
    """The study's trials, after checking they are exactly the enqueued policies, each finished once.

    Trial ``i`` must be COMPLETE with ``params == params[i]`` and a recorded policy equal to
    ``expected[i]`` (what the loop ran). Returns per trial the worker's start/end (epoch s),
    ``trial_seconds`` and the metrics that identify the work.
    """
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    states = [t.state.name for t in trials]
    if len(trials) != len(params) or set(states) != {"COMPLETE"}:
        raise RuntimeError(f"{name}: expected {len(params)} COMPLETE trials, found states {states}")
    out = []
    for trial, wanted, policy in zip(trials, params, expected):
        span, metrics = trial.user_attrs.get("worker_seconds") or [None, None], trial.user_attrs["metrics"]
        problem = ("params differ" if trial.params != dict(wanted) else "recorded policy differs"
                   if trial.user_attrs.get("policy") != json.loads(json.dumps(policy.to_dict()))
                   else "no worker_seconds" if None in span else None)
        if problem:
            raise RuntimeError(f"{name}: trial {trial.number}: {problem} (enqueued {wanted})")
        out.append({"index": trial.number, "start": span[0], "end": span[1], "trial_seconds": metrics["trial_seconds"],
                    "accuracy": metrics["accuracy"], "sparsity": metrics["sparsity"]})
    return out


def warm_up_tracking(folder: Path) -> float:
    """Seconds of MLflow's and the plots' first use in this process (lazy imports, a store).

    Paid here, so that not only the first timed search carries it; reported separately.
    """
    started = time.perf_counter()
    try:
        import plotly.graph_objects  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
        from mlflow.tracking import MlflowClient

        folder.mkdir(parents=True, exist_ok=True)
        MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    except ImportError:
        pass
    return time.perf_counter() - started


def import_seconds() -> dict[str, float]:
    """Seconds of each of :data:`IMPORT_PROBES` in a fresh process: the faster of 2 (after one warm-up run)."""
    import subprocess

    out = {}
    for key, (before, timed) in IMPORT_PROBES.items():
        code = timed if before is None else f"import time\n{before}\nt = time.perf_counter()\n{timed}\n" \
                                           "print(time.perf_counter() - t)"
        runs = []
        for _ in range(3):
            began = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            runs.append(time.perf_counter() - began if before is None else float(done.stdout.split()[-1]))
        out[key] = min(runs[1:])
    return out


def wait_for_quiet(budget: float, limit: float = 0.25, sample: float = 3.0) -> float:
    """Wait (at most ``budget`` s) until other jobs use under ``limit`` cores over ``sample`` s; seconds waited.

    A job starting mid-run still shows in the run's ``other_cores``.
    """
    started = time.time()
    while time.time() - started < budget:
        with TreeMonitor() as cpu:
            time.sleep(sample)
        if cpu.result()["other_cores"] < limit:
            break
    waited = time.time() - started
    if waited > 2 * sample:
        log(f"  waited {waited:.0f} s for other jobs to go quiet")
    return waited


