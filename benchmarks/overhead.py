"""What the framework costs: one list of policies run by a plain loop and by ``autoprune search``.

A search trial is :func:`autoprune.trial.run_trial` inside Ray Tune and Optuna, plus the
driver's bookkeeping (Optuna tell on SQLite, ``trials.csv``, MLflow tracking, the retime of
the Pareto front). The **same N policies** run:

* **plain loop** (a): the context is built once here (``build_setup`` + ``prepare_dense``,
  warm cache), then ``run_trial(policy, context, threads=1)`` per policy. Concurrency 2 is
  a pool of 2 processes *forked* once before any Ray instance exists in this process (they
  inherit the context; ``chunksize=1``, so each takes the next policy when free, as Ray does).
* **search** (b): a fresh study per run, opened with :func:`autoprune.search.open_study`,
  the N policies enqueued (``study.enqueue_trial``), the dense cache copied in, then
  :func:`autoprune.search.run_search` with default options but ``concurrency`` 1 or 2 and
  ``trials=N``. The study must then hold exactly N finished trials with the enqueued
  params and policies.

The **search phase** (``run_search`` after its data/dense setup, Ray start-up included) /
loop wall should be ≤ 1.10; throughput (N / wall) with 2 concurrent trials vs 1 should be
≥ 1.8×. The search is split into stages by its log lines, the trials' ``worker_seconds``
and wrappers timing the driver's own functions (:func:`stopwatch`). Per-trial overhead =
(concurrency × wall − Σ trial durations) / N. The four runs make a round; ratios are taken
within a round, the second round runs in reverse order. The machine may be shared: before
each run the script waits (within a budget) for other jobs to go quiet, and it records the
busy cores of the machine and of its own process tree. ``RAY_ADDRESS=local`` makes every
search start its own Ray instance, even if a ``ray start`` cluster runs on the machine.

Usage::

    python benchmarks/overhead.py [--smoke] [--out benchmarks/results]

writes ``overhead.json`` (every number, command, date, machine) and ``overhead.md`` (tables).
``--smoke`` runs a short version (digits MLP, N=2, one round).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import multiprocessing
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ["RAY_ADDRESS"] = "local"
os.environ.pop("MLFLOW_TRACKING_URI", None)

import optuna  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from autoprune.context import TrialContext, build_setup, trial_context  # noqa: E402
from autoprune.dense import prepare_dense  # noqa: E402
from autoprune.paths import study_paths  # noqa: E402
from autoprune.policy import Policy  # noqa: E402
from autoprune.search import SearchOptions, open_study, run_search  # noqa: E402
from autoprune.space import SearchSpace, parse_space  # noqa: E402
from autoprune.suggest import policy_from_params  # noqa: E402
from autoprune.trial import run_trial  # noqa: E402
from _common import git_commit, machine  # noqa: E402  (benchmarks/_common.py)

TARGET_RATIO = 1.10
TARGET_SCALING = 1.8
SCORERS = ("magnitude", "l2")
SPARSITY_RANGE = (0.5, 0.9)
REPO = Path(__file__).resolve().parents[1]
RUNS = ("loop_c1", "search_c1", "search_c2", "loop_c2")


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


FULL = Settings(
    data="fashion_mnist", train_subset=4000, model="small_cnn", model_args={"channels": [16, 32], "hidden": 64},
    pretrain_epochs=2, finetune_epochs=1.0, lr=0.02, latency_repeats=50, policies=8, rounds=2, quiet_wait=240,
)
SMOKE = Settings(
    data="digits", train_subset=None, model="mlp", model_args={"hidden": [64, 32]},
    pretrain_epochs=10, finetune_epochs=0.3, lr=0.02, latency_repeats=5, policies=2, rounds=1, quiet_wait=0,
)


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


def busy_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine since boot, from ``/proc/stat``."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4], sum(fields)


def own_jiffies() -> dict[tuple[int, int], int]:
    """User + system jiffies of this process and every descendant, by (pid, start time)."""
    table, children = {}, {}
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split() if entry.name.isdigit() else None
        except OSError:
            continue
        if fields:
            table[int(entry.name)] = ((int(entry.name), int(fields[19])), int(fields[11]) + int(fields[12]))
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = {}, [os.getpid()]
    while todo:
        pid = todo.pop()
        if pid in table:
            found[table[pid][0]] = table[pid][1]
            todo.extend(children.get(pid, []))
    return found


class CpuMonitor:
    """Busy cores of the machine and of this process tree (pool workers, Ray, trial workers) over a run.

    The tree is polled from ``/proc`` every ``interval`` s; a process that ends between polls
    loses at most that much CPU time, so ``own_cores`` is a slight underestimate.
    ``other_cores`` = machine − own estimates what other jobs used.
    """

    def __init__(self, interval: float = 0.25) -> None:
        self.interval, self.stop = interval, threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self.stop.wait(self.interval):
            self.last.update(own_jiffies())

    def __enter__(self) -> CpuMonitor:
        self.first = own_jiffies()
        self.last = dict(self.first)
        self.machine, self.started = busy_jiffies(), time.time()
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()
        self.last.update(own_jiffies())
        seconds, (busy, total) = time.time() - self.started, busy_jiffies()
        machine = (busy - self.machine[0]) / max(1, total - self.machine[1]) * (os.cpu_count() or 1)
        own = sum(v - self.first.get(k, 0) for k, v in self.last.items()) / os.sysconf("SC_CLK_TCK") / seconds
        self.cores = {"busy_cores": machine, "own_cores": own, "other_cores": max(0.0, machine - own)}

    def result(self) -> dict[str, float]:
        """``busy_cores`` (machine), ``own_cores`` and ``other_cores`` over the block."""
        return self.cores


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
    with CpuMonitor() as cpu:
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
    "ray_init": ("ray", "init"),
    "ray_shutdown": ("ray", "shutdown"),
    "record": ("autoprune.search", "StudyRecorder.record"),
    "tracking_start": ("autoprune.tracking", "StudyTracker.start"),
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
    not changed. A stage the driver does not have is skipped (it then costs nothing).
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
    with CpuMonitor() as cpu, stopwatch() as calls:
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


# --------------------------------------------------------------------------- rounds


def ratios(runs: Mapping[str, dict[str, Any]]) -> dict[str, float]:
    """The headline ratios of one round (all runs of the round measured back to back)."""
    loop1, loop2, search1, search2 = (runs[k] for k in ("loop_c1", "loop_c2", "search_c1", "search_c2"))
    n = len(loop1["trials"])
    window1 = search1["phases"]["trials_window_s"]
    first = min(search1["trials"], key=lambda t: t["start"])
    cold = first["trial_seconds"] - loop1["trials"][first["index"]]["trial_seconds"]
    framework = search1["fixed_s"] + max(0.0, cold) + n * max(0.0, search1["steady_overhead_per_trial_s"])
    return {
        "search_vs_loop": search1["wall_s"] / loop1["wall_s"],
        "search_vs_loop_steady": window1 / loop1["wall_s"],
        "search_vs_loop_modelled": 1 + framework / loop1["wall_s"],
        "ray_trial_vs_loop_trial": _warm_ratio(search1["trials"], loop1["trials"], first["index"]),
        "first_trial_penalty_s": cold,
        "fixed_s_c1": search1["fixed_s"],
        "overhead_per_trial_s_c1": search1["overhead_per_trial_s"],
        "steady_overhead_per_trial_s_c1": search1["steady_overhead_per_trial_s"],
        "record_per_trial_ms_c1": search1["record_per_trial_s"] * 1000,
        "search_scaling": search2["throughput"] / search1["throughput"],
        "search_scaling_steady": search2["steady_throughput"] / search1["steady_throughput"],
        "loop_scaling": loop2["throughput"] / loop1["throughput"],
        "trial_slowdown_c2_search": search2["trial_mean_s"] / search1["trial_mean_s"],
        "trial_slowdown_c2_loop": loop2["trial_mean_s"] / loop1["trial_mean_s"],
        "policies": n,
    }


def _warm_ratio(search: Sequence[Mapping[str, Any]], loop: Sequence[Mapping[str, Any]], cold: int) -> float:
    """Mean ``trial_seconds`` in the Ray worker / in the loop over the same policies, the cold one left out."""
    warm = [i for i in range(len(loop)) if i != cold] or [cold]
    return statistics.mean(search[i]["trial_seconds"] for i in warm) / statistics.mean(
        loop[i]["trial_seconds"] for i in warm)


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Mean, min and max of one number over rounds."""
    return {"mean": statistics.mean(values), "min": min(values), "max": max(values), "rounds": list(values)}


def same_work(rounds: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Largest spread of accuracy and of sparsity over all runs of the same policy."""
    trials = [t for rnd in rounds for run in rnd["runs"].values() for t in run["trials"]]
    spread_of = {m: max(max(v) - min(v) for v in ([t[m] for t in trials if t["index"] == i]
                                                   for i in {t["index"] for t in trials}))
                 for m in ("accuracy", "sparsity")}
    return {"max_accuracy_diff": spread_of["accuracy"], "max_sparsity_diff": spread_of["sparsity"]}


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


def benchmark(settings: Settings, root: Path) -> dict[str, Any]:
    """Prepare the dense model once, then run the rounds; every run's numbers plus the ratios."""
    space = make_space(settings, "overhead-loop")
    params = policy_params(settings.policies)
    paths = study_paths(space.study.name, root)
    log(f"dense model: {settings.model} on {settings.data} (trained once, cached in {paths.folder})")
    prepare_dense(build_setup(space), paths, log=lambda _: None)
    started = time.perf_counter()
    setup = build_setup(space)
    dense = prepare_dense(setup, paths, log=lambda _: None)
    setup_s = time.perf_counter() - started
    context = trial_context(setup, dense)
    policies = [policy_from_params(p, space.space, setup.layers, space.study.seed) for p in params]
    pool, pool_start_s = start_pool(policies, context, 2)
    import_s = warm_up_tracking(root / "warm-up")
    try:
        rounds = _rounds(settings, root, params, policies, context, pool, paths.folder)
    finally:
        pool.terminate()
        pool.join()
    keys = rounds[0]["ratios"].keys()
    return {
        "params": params,
        "dense_accuracy": dense.accuracy,
        "loop_setup_s": setup_s,
        "pool_start_s": pool_start_s,
        "mlflow_import_s": import_s,
        "rounds": rounds,
        "summary": {k: spread([r["ratios"][k] for r in rounds]) for k in keys},
        "same_work": same_work(rounds),
    }


def wait_for_quiet(budget: float, limit: float = 0.25, sample: float = 3.0) -> float:
    """Wait (at most ``budget`` s) until other jobs use under ``limit`` cores over ``sample`` s; seconds waited.

    A job starting mid-run still shows in the run's ``other_cores``.
    """
    started = time.time()
    while time.time() - started < budget:
        with CpuMonitor() as cpu:
            time.sleep(sample)
        if cpu.result()["other_cores"] < limit:
            break
    waited = time.time() - started
    if waited > 2 * sample:
        log(f"  waited {waited:.0f} s for other jobs to go quiet")
    return waited


def _rounds(settings: Settings, root: Path, params: Sequence[dict[str, Any]], policies: Sequence[Policy],
            context: TrialContext, pool: Any, dense_folder: Path) -> list[dict[str, Any]]:
    """Every round's four runs (order reversed in even rounds) and the round's ratios."""
    rounds = []
    budget = settings.quiet_wait
    for index in range(settings.rounds):
        order = RUNS if index % 2 == 0 else tuple(reversed(RUNS))
        runs: dict[str, dict[str, Any]] = {}
        for key in order:
            kind, concurrency = key.split("_c")[0], int(key.split("_c")[1])
            waited = wait_for_quiet(budget)
            budget -= waited
            log(f"round {index + 1}/{settings.rounds}: {kind}, {settings.policies} policies, concurrency {concurrency}"
                f" (load {os.getloadavg()[0]:.2f})")
            if kind == "loop":
                runs[key] = loop_run(policies, context, concurrency, pool)
            else:
                runs[key] = search_run(settings, root, f"overhead-r{index + 1}-c{concurrency}", params, policies,
                                       dense_folder, concurrency)
            runs[key]["waited_for_quiet_s"] = waited
            log(f"  wall {runs[key]['wall_s']:.1f} s, busy cores {runs[key]['busy_cores']:.2f} "
                f"(ours {runs[key]['own_cores']:.2f})")
        rounds.append({"order": list(order), "runs": runs, "ratios": ratios(runs)})
    return rounds


# --------------------------------------------------------------------------- report


def ray_version() -> str:
    import ray

    return ray.__version__


def break_even(summary: Mapping[str, Mapping[str, float]], trial_s: float) -> float:
    """Trials of ``trial_s`` s needed before the search/loop ratio reaches the target (may be inf).

    Search ≈ F + N (t + o) against the loop's N t, so N ≥ F / ((target − 1) t − o), with F the
    fixed cost plus the cold first trial, o the gap between trials, equal ``run_trial`` speed.
    """
    fixed = summary["fixed_s_c1"]["mean"] + max(0.0, summary["first_trial_penalty_s"]["mean"])
    allowance = (TARGET_RATIO - 1) * trial_s - max(0.0, summary["steady_overhead_per_trial_s_c1"]["mean"])
    return math.ceil(fixed / allowance) if allowance > 0 else math.inf


def misses(result: Mapping[str, Any]) -> list[str]:
    """One line per missed target, with the measured cause."""
    s, rounds, lines = result["summary"], result["rounds"], []
    if s["search_vs_loop"]["mean"] > TARGET_RATIO:
        c1 = [r["runs"]["search_c1"] for r in rounds]
        parts = {"MLflow start": ("phases", "before_ray_s"), "ray.init": ("phases", "ray_init_s"),
                 "first-trial delay": ("phases", "first_trial_delay_s"), "ray.shutdown": ("stages", "ray_shutdown"),
                 "MLflow finish": ("stages", "tracking_finish"), "retime": ("stages", "retime")}
        split = ", ".join(f"{k} {statistics.mean(r[a][b] for r in c1):.1f} s" for k, (a, b) in parts.items())
        trial = statistics.mean(r["runs"]["loop_c1"]["trial_mean_s"] for r in rounds)
        speed = s["ray_trial_vs_loop_trial"]
        lines.append(
            f"search/loop {s['search_vs_loop']['mean']:.2f} > {TARGET_RATIO}: the fixed cost outside the trials window "
            f"is {s['fixed_s_c1']['mean']:.1f} s per search ({split}) against {int(s['policies']['mean'])} trials of "
            f"{trial:.1f} s; without it the ratio is {s['search_vs_loop_steady']['mean']:.2f}, including a first "
            f"trial that runs {s['first_trial_penalty_s']['mean']:.1f} s longer in the fresh Ray worker. Warm trials "
            f"took {speed['min']:.2f}–{speed['max']:.2f}× as long in the Ray worker as in the loop; the modelled "
            "ratio leaves such speed differences out. The fixed cost is paid once per `autoprune search`: with "
            f"trials of this length the target is met from about {result['break_even']} trials on."
        )
    if s["search_scaling"]["mean"] < TARGET_SCALING:
        others = ", ".join(f"{statistics.mean(r['runs'][k]['other_cores'] for r in rounds):.2f} ({k})" for k in RUNS)
        lines.append(
            f"search throughput 2 vs 1 = {s['search_scaling']['mean']:.2f}× < {TARGET_SCALING}×: the fixed cost does "
            f"not shrink with concurrency (trials window only: {s['search_scaling_steady']['mean']:.2f}×), and trials "
            f"run {s['trial_slowdown_c2_search']['mean']:.2f}× slower two at a time (plain loop: "
            f"{s['trial_slowdown_c2_loop']['mean']:.2f}× slower, scaling {s['loop_scaling']['mean']:.2f}×): two "
            f"concurrent trials do not get two cores' worth of speed. Other jobs' busy cores: {others}."
        )
    return lines


HEADLINE = (  # label, summary key, number format, unit, target ("ratio", "scaling" or None)
    ("search phase / plain loop wall, concurrency 1", "search_vs_loop", ".2f", "", "ratio"),
    ("same, trials window only (no Ray start-up/teardown)", "search_vs_loop_steady", ".2f", "", "ratio"),
    ("1 + (fixed cost + cold first trial + N × gap) / loop wall (no trial-speed noise)",
     "search_vs_loop_modelled", ".2f", "", "ratio"),
    ("search throughput, 2 concurrent vs 1", "search_scaling", ".2f", "×", "scaling"),
    ("same, trials window only", "search_scaling_steady", ".2f", "×", "scaling"),
    ("plain loop throughput, 2 processes vs 1", "loop_scaling", ".2f", "×", "scaling"),
    ("fixed cost per search, concurrency 1 (search phase − trials window), s", "fixed_s_c1", ".1f", "", None),
    ("driver bookkeeping per trial (Optuna tell, CSVs, MLflow), ms", "record_per_trial_ms_c1", ".0f", "", None),
    ("search overhead per trial, concurrency 1, s: (wall − Σ trials)/N", "overhead_per_trial_s_c1", ".2f", "", None),
    ("same, trials window only (gap between trials), s", "steady_overhead_per_trial_s_c1", ".3f", "", None),
    ("run_trial time in a Ray worker / in the loop (warm trials)", "ray_trial_vs_loop_trial", ".3f", "", None),
    ("first trial in a fresh Ray worker: extra run_trial time, s", "first_trial_penalty_s", ".2f", "", None),
)


def _cell(stat: Mapping[str, float], fmt: str = ".2f", unit: str = "") -> str:
    if len(stat["rounds"]) == 1:
        return f"{stat['mean']:{fmt}}{unit}"
    return f"{stat['mean']:{fmt}}{unit} ({stat['min']:{fmt}}–{stat['max']:{fmt}})"


def markdown(report: Mapping[str, Any]) -> str:
    """The summary tables of ``report`` as markdown."""
    st, res = report["settings"], report["result"]
    s = res["summary"]
    headline = ["| measure | value | target | met? |", "|---|---:|---:|---|"]
    for label, key, fmt, unit, target in HEADLINE:
        value = s[key]["mean"]
        check = {"ratio": (f"≤ {TARGET_RATIO}", value <= TARGET_RATIO),
                 "scaling": (f"≥ {TARGET_SCALING}×", value >= TARGET_SCALING)}.get(target)
        met = f"{check[0]} | {'yes' if check[1] else '**no**'}" if check else "– | "
        headline.append(f"| {label} | {_cell(s[key], fmt, unit)} | {met} |")
    runs = ["| round | run | concurrency | wall s | trials/s | Σ trial s | mean trial s | overhead/trial s "
            "| busy cores: machine / ours / others | load after |", "|---:|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    phases = ["| round | conc. | setup s (excluded) | before Ray s | ray.init s | first-trial delay s "
              "| trials window s | teardown s | search phase s | per trial: record ms (MLflow ms) | ray.shutdown s "
              "| MLflow start + finish s | retime s |", "|---:" * 13 + "|"]
    for i, rnd in enumerate(res["rounds"], 1):
        for key in rnd["order"]:
            r = rnd["runs"][key]
            runs.append(
                f"| {i} | {key.split('_c')[0]} | {r['concurrency']} | {r['wall_s']:.1f} | {r['throughput']:.3f} | "
                f"{r['trial_sum_s']:.1f} | {r['trial_mean_s']:.2f} | {r['overhead_per_trial_s']:.2f} | "
                f"{r['busy_cores']:.2f} / {r['own_cores']:.2f} / {r['other_cores']:.2f} | {r['loadavg_after'][0]:.2f} |"
            )
        for r in (rnd["runs"]["search_c1"], rnd["runs"]["search_c2"]):
            p, g = r["phases"], r["stages"]
            phases.append(
                f"| {i} | {r['concurrency']} | {p['setup_s']:.1f} | {p['before_ray_s']:.1f} | {p['ray_init_s']:.1f} | "
                f"{p['first_trial_delay_s']:.1f} | {p['trials_window_s']:.1f} | {p['teardown_s']:.1f} | "
                f"{r['wall_s']:.1f} | {r['record_per_trial_s'] * 1000:.0f} ({r['tracking_per_trial_s'] * 1000:.0f}) | "
                f"{g['ray_shutdown']:.1f} | {g['tracking_start'] + g['tracking_finish']:.1f} | {g['retime']:.1f} |"
            )
    m = report["machine"]
    waited = sum(r.get("waited_for_quiet_s", 0.0) for rnd in res["rounds"] for r in rnd["runs"].values())
    miss_lines = [f"- {line}" for line in res["misses"]] or ["- none"]
    return "\n".join([
        "# Overhead benchmark: what `autoprune search` costs over a plain loop",
        "",
        f"Command: `{report['command']}` (cwd `{report['cwd']}`), {report['date']}, commit `{report['git_commit']}`.",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} CPUs, {m['platform']}, torch {m['torch']}, Ray {m['ray']}, "
        f"Optuna {m['optuna']}; 1 torch thread per trial. Load average at start/end: {report['loadavg_start']} / "
        f"{report['loadavg_end']}. Busy cores per run: the whole machine (`/proc/stat`), this process with all its "
        "descendants (pool workers, Ray, trial workers; polled from `/proc`), and the difference, other jobs. "
        f"Before each run the script waited for other jobs to go quiet (at most {st['quiet_wait']:g} s in all; "
        f"waited {waited:.0f} s).",
        "",
        f"Workload: {st['policies']} fixed policies (unstructured, uniform allocation, one-shot, scorer alternating "
        f"{' / '.join(SCORERS)}, target sparsity evenly spread over {list(SPARSITY_RANGE)}), `{st['model']}` "
        f"{dict(st['model_args'])} on `{st['data']}` (train subset {st['train_subset']}), finetune "
        f"{st['finetune_epochs']:g} epoch(s) at lr {st['lr']}, latency timed with {st['latency_repeats']} repeats. "
        f"Dense accuracy {res['dense_accuracy']:.4f}. Plain loop: `run_trial(policy, context, threads=1)` in one "
        "process, or a pool of 2 processes forked once before any Ray start (forking took "
        f"{res['pool_start_s'] * 1000:.0f} ms, not in the wall times); search: `run_search` on a fresh study with "
        "the policies enqueued, dense cache warm. Every search ran exactly the enqueued policies (params and "
        "recorded policy checked); the "
        f"same policy gave accuracies within {res['same_work']['max_accuracy_diff']:.2g} and sparsities within "
        f"{res['same_work']['max_sparsity_diff']:.2g} across all runs. " + (
            f"{st['rounds']} rounds of the four runs, every second round in reverse order; cells give the mean "
            "(min–max over rounds)." if st["rounds"] > 1 else "One round of the four runs."),
        "",
        *headline,
        "",
        "Where a search's time goes. Setup (space file, data, study, dense cache) is excluded: the loop pays the "
        f"same before its timer ({res['loop_setup_s']:.1f} s). Before Ray: mostly MLflow's start (tracking is on by "
        "default; each search creates its own MLflow store). MLflow's and the plots' first use in a process, "
        f"{res['mlflow_import_s']:.1f} s, was paid once before timing, like Ray's and torch's imports; a fresh "
        "`autoprune search` process pays it on top. Teardown (last trial end → return) holds the last result's "
        "record, `ray.shutdown`, MLflow's "
        "finish (plots) and the retime of the Pareto front. *record* is the driver's per-trial bookkeeping "
        "(Optuna tell, `trials.csv`/`pareto.csv`, MLflow child run), timed by wrapping the driver's functions:",
        "",
        *phases,
        "",
        "Every run:",
        "",
        *runs,
        "",
        "Below target, and why:",
        "",
        *miss_lines,
        "",
    ])


def run(settings: Settings, out: Path, argv: Sequence[str]) -> dict[str, Any]:
    """Run the benchmark, write ``overhead.json`` and ``overhead.md`` into ``out``, return the report."""
    started = time.perf_counter()
    report: dict[str, Any] = {
        "command": shlex.join(["python", *argv]), "cwd": os.getcwd(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "git_commit": git_commit(),
        "machine": machine(ray=ray_version(), optuna=optuna.__version__), "loadavg_start": [round(v, 2) for v in os.getloadavg()],
        "settings": {**asdict(settings), "model_args": dict(settings.model_args), "scorers": list(SCORERS),
                     "sparsity_range": list(SPARSITY_RANGE), "target_ratio": TARGET_RATIO,
                     "target_scaling": TARGET_SCALING},
    }
    with tempfile.TemporaryDirectory(prefix="autoprune-overhead-") as tmp:
        result = benchmark(settings, Path(tmp))
    trial_s = statistics.mean(r["runs"]["loop_c1"]["trial_mean_s"] for r in result["rounds"])
    result["break_even"] = break_even(result["summary"], trial_s)
    result["misses"] = misses(result)
    report["result"] = result
    report["headline"] = {k: result["summary"][k]["mean"] for k in (
        "search_vs_loop", "search_vs_loop_steady", "search_vs_loop_modelled", "search_scaling",
        "search_scaling_steady", "loop_scaling", "fixed_s_c1", "first_trial_penalty_s", "overhead_per_trial_s_c1",
        "steady_overhead_per_trial_s_c1", "ray_trial_vs_loop_trial")}
    report["targets_met"] = {"search_vs_loop": report["headline"]["search_vs_loop"] <= TARGET_RATIO,
                             "search_scaling": report["headline"]["search_scaling"] >= TARGET_SCALING}
    report["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    report["seconds"] = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    (out / "overhead.json").write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    (out / "overhead.md").write_text(markdown(report))
    log(f"wrote {out / 'overhead.json'} and {out / 'overhead.md'} in {report['seconds']:.0f} s")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: ``python benchmarks/overhead.py [--smoke] [--out DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a short run (digits MLP, 2 policies, one round)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results",
                        help="folder for overhead.json and overhead.md (default: benchmarks/results)")
    args = parser.parse_args(argv)
    report = run(SMOKE if args.smoke else FULL, args.out, sys.argv if argv is None else ["overhead.py", *argv])
    print((args.out / "overhead.md").read_text())
    return 0 if all(math.isfinite(v) for v in report["headline"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
