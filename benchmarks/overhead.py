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
and wrappers timing the driver's own functions (``_overhead_runs.stopwatch``). Per-trial
overhead = (concurrency × wall − Σ trial durations) / N. Framework cost beyond time: the
driver's peak memory (RSS high-water mark per run; Ray trial workers' peak RSS, sampled)
and MLflow's per-trial logging (ms per trial, and its size against the gap between
trials). The runs themselves are in ``_overhead_runs.py``, the process-tree monitor in
``_monitors.py``. The four runs make a round; ratios are taken
within a round, the second round runs in reverse order. The machine may be shared: before
each run the script waits (within a budget) for other jobs to go quiet, and it records the
busy cores of the machine and of its own process tree. ``RAY_ADDRESS=local`` makes every
search start its own Ray instance, even if a ``ray start`` cluster runs on the machine.

Usage::

    python benchmarks/overhead.py [--smoke] [--policies N] [--rounds R] [--out benchmarks/results]

writes ``overhead.json`` (every number, command, date, machine) and ``overhead.md`` (tables).
``--smoke`` runs a short version (digits MLP, N=2, one round).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
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
from autoprune.suggest import policy_from_params  # noqa: E402
from _common import git_commit, machine  # noqa: E402  (benchmarks/_common.py)
from _overhead_report import mean_of, markdown, misses  # noqa: E402  (benchmarks/_overhead_report.py)
from _overhead_runs import (  # noqa: E402  (benchmarks/_overhead_runs.py)
    FULL, RUNS, SCORERS, SMOKE, SPARSITY_RANGE, TARGET_RATIO, TARGET_SCALING, Settings, import_seconds, log, loop_run,
    make_space, policy_params, search_run, start_pool, wait_for_quiet, warm_up_tracking,
)

REPO = Path(__file__).resolve().parents[1]

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
        "mlflow_per_trial_ms_c1": search1["tracking_per_trial_s"] * 1000,
        "mlflow_per_trial_ms_c2": search2["tracking_per_trial_s"] * 1000,
        "mlflow_on_path_ms_c1": search1["tracking_queue_per_trial_s"] * 1000,
        "mlflow_vs_gap_c1": search1["tracking_per_trial_s"] / max(1e-3, search1["steady_overhead_per_trial_s"]),
        "driver_peak_rss_mb_c1": search1["driver_peak_rss_mb"],
        "driver_peak_rss_mb_c2": search2["driver_peak_rss_mb"],
        "driver_rss_growth_mb_c1": search1["driver_peak_rss_mb"] - search1["driver_start_rss_mb"],
        "worker_peak_rss_mb_c1": search1["worker_peak_rss_mb"],
        "tree_peak_rss_mb_c2": search2["tree_peak_rss_mb"],
        "loop_peak_rss_mb_c1": loop1["driver_peak_rss_mb"],
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
    if settings.probe_imports:
        log("timing a fresh worker's imports alone")
    return {
        "imports": import_seconds() if settings.probe_imports else {},
        "params": params,
        "dense_accuracy": dense.accuracy,
        "loop_setup_s": setup_s,
        "pool_start_s": pool_start_s,
        "mlflow_import_s": import_s,
        "rounds": rounds,
        "summary": {k: spread([r["ratios"][k] for r in rounds]) for k in keys},
        "same_work": same_work(rounds),
    }


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


def scaling_ceiling(result: Mapping[str, Any]) -> float:
    """Search throughput 2 vs 1 if its trials scaled like the plain loop's, with the measured fixed cost.

    c1 takes F + W; c2 at best F + W / s, with W the c1 trials window, F the fixed cost and s
    the loop's own 2-vs-1 throughput on this machine.
    """
    c1 = [r["runs"]["search_c1"] for r in result["rounds"]]
    fixed, window = mean_of(c1, "fixed_s"), mean_of(c1, "phases", "trials_window_s")
    return (fixed + window) / (fixed + window / result["summary"]["loop_scaling"]["mean"])


def previous_headline(path: Path) -> dict[str, Any] | None:
    """Date, commit and headline numbers of the results at ``path`` (to be replaced), if readable."""
    try:
        old = json.loads(path.read_text())
        return {"date": old["date"], "git_commit": old["git_commit"], "headline": dict(old["headline"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


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
    result["scaling_ceiling"] = scaling_ceiling(result)
    result["misses"] = misses(result)
    report["result"] = result
    report["headline"] = {k: result["summary"][k]["mean"] for k in (
        "search_vs_loop", "search_vs_loop_steady", "search_vs_loop_modelled", "search_scaling",
        "search_scaling_steady", "loop_scaling", "fixed_s_c1", "first_trial_penalty_s", "overhead_per_trial_s_c1",
        "steady_overhead_per_trial_s_c1", "ray_trial_vs_loop_trial", "record_per_trial_ms_c1",
        "mlflow_per_trial_ms_c1", "mlflow_vs_gap_c1", "mlflow_on_path_ms_c1", "driver_peak_rss_mb_c1",
        "driver_peak_rss_mb_c2", "driver_rss_growth_mb_c1", "worker_peak_rss_mb_c1", "tree_peak_rss_mb_c2")}
    report["previous"] = previous_headline(out / "overhead.json")
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
    parser.add_argument("--policies", type=int, default=None,
                        help=f"policies per run, i.e. the study's trial count (default {FULL.policies}; the fixed "
                             "cost of a search is paid once, so its share shrinks as this grows)")
    parser.add_argument("--rounds", type=int, default=None, help=f"rounds of the four runs (default {FULL.rounds})")
    args = parser.parse_args(argv)
    for flag, value in (("--policies", args.policies), ("--rounds", args.rounds)):
        if value is not None and value < 1:
            parser.error(f"{flag} {value}: give a whole number of at least 1")
    settings = SMOKE if args.smoke else FULL
    if args.policies is not None:
        settings = replace(settings, policies=args.policies)
    if args.rounds is not None:
        settings = replace(settings, rounds=args.rounds)
    report = run(settings, args.out, sys.argv if argv is None else ["overhead.py", *argv])
    print((args.out / "overhead.md").read_text())
    return 0 if all(math.isfinite(v) for v in report["headline"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
