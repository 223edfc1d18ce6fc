"""Load: a 200-trial study of fast trials, four at a time, with MLflow tracking on.

One ``autoprune search`` (:func:`autoprune.search.run_search`, default options) of a digits
MLP space whose trials take well under a second (a few epochs of a tiny MLP, few latency
repeats), with
``gpus=4, gpus_per_trial=1`` declared on a machine without GPUs: Ray sees 4 GPUs, so 4
trials run at once, each falls back to the CPU (``device`` = ``cpu CUDA_VISIBLE_DEVICES=k``).
With GPUs declared, the driver sizes the local cluster's CPUs to fit them
(``max(cores, 4 × cpus_per_trial)`` = 4 here), so the default ``cpus_per_trial=1`` keeps one
torch thread per trial while 4 trials share 2 cores. MLflow logs to the default sqlite store
in the studies folder; the dense model is trained beforehand (warm cache).

The run must end with every trial finished and the three records agreeing: the Optuna study,
``trials.csv`` and MLflow's child runs hold the same trial numbers, each once (and the
parent's ``hypervolume`` series one step per finished trial, the ``pareto`` tags the rows of
``pareto.csv``). Reported: total wall time, overhead per trial, the driver's per-trial
bookkeeping and MLflow update times early and late in the study, and the driver's memory:
its RSS high-water mark over the run and at 50 / 100 / 150 / 200 finished trials (read when
the driver handles the result that reaches each count), with the largest Ray trial worker.

Usage::

    python benchmarks/load.py [--smoke] [--out benchmarks/results]

writes ``load.json`` (every number, command, date, machine, commit) and ``load.md``.
``--smoke`` runs 8 trials on 2 declared GPUs (milestones 4 and 8) in about half a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ["RAY_ADDRESS"] = "local"
os.environ.pop("MLFLOW_TRACKING_URI", None)

import optuna  # noqa: E402

from autoprune.context import build_setup  # noqa: E402
from autoprune.dense import prepare_dense  # noqa: E402
from autoprune.paths import study_paths  # noqa: E402
from autoprune.search import SearchOptions, run_search  # noqa: E402
from autoprune.space import SearchSpace, parse_space  # noqa: E402
from _common import git_commit, machine  # noqa: E402  (benchmarks/_common.py)
from _monitors import MB, TreeMonitor, current_rss, peak_rss, tree  # noqa: E402  (benchmarks/_monitors.py)
from _overhead_runs import log, stopwatch  # noqa: E402  (benchmarks/_overhead_runs.py)

REPO = Path(__file__).resolve().parents[1]
NAME = "load"


@dataclass(frozen=True)
class Settings:
    """The full run or the ``--smoke`` version."""

    trials: int
    milestones: tuple[int, ...]
    gpus: int
    finetune_epochs: tuple[float, float]
    latency_repeats: int


FULL = Settings(trials=200, milestones=(50, 100, 150, 200), gpus=4, finetune_epochs=(4.0, 15.0), latency_repeats=5)
SMOKE = Settings(trials=8, milestones=(4, 8), gpus=2, finetune_epochs=(1.0, 3.0), latency_repeats=3)  # 2 workers: quicker


def make_space(settings: Settings) -> SearchSpace:
    """Digits MLP; scorer, allocation, target sparsity and finetune length searched (trials well under 1 s).

    A digits MLP epoch takes about 30 ms on one core, so the finetune range sets the trial length.
    """
    low, high = settings.finetune_epochs
    return parse_space({
        "study": {"name": NAME, "trials": settings.trials, "sampler": "tpe", "seed": 0},
        "objectives": {"accuracy": "max", "sparsity": "max"},
        "constraints": {"accuracy_drop": 0.05},
        "model": {"name": "mlp", "args": {"hidden": [64, 32]}, "pretrain": {"epochs": 15, "lr": 0.05}},
        "data": {"name": "digits", "batch_size": 64},
        "latency": {"batch_size": 1, "threads": 1, "repeats": settings.latency_repeats, "warmup": 1},
        "space": {"granularity": "unstructured", "scorer": ["magnitude", "l2", "random"],
                  "allocation": ["uniform", "global"], "target_sparsity": [0.3, 0.95],
                  "schedule": {"shape": "one_shot", "steps": 1},
                  "finetune": {"epochs": [low, high], "lr": {"low": 0.005, "high": 0.05, "log": True}}},
    }, source="benchmarks/load.py")


class Milestones:
    """The driver's memory when the study reaches each milestone of finished trials.

    Wraps :meth:`autoprune.progress.SearchProgress.trial_done` (called by the driver after
    every result, with the trials table) while the search runs, and restores it afterwards.
    """

    def __init__(self, counts: Sequence[int], started: float) -> None:
        self.todo, self.started, self.rows = list(counts), started, []

    def __enter__(self) -> Milestones:
        from autoprune.progress import SearchProgress

        self.owner, self.original = SearchProgress, SearchProgress.trial_done
        probe = self

        def trial_done(progress: Any, frame: Any, number: int) -> None:
            probe.original(progress, frame, number)
            finished = int((frame["state"] == "finished").sum()) if len(frame) else 0
            while probe.todo and finished >= probe.todo[0]:
                probe.todo.pop(0)
                now = current_rss()  # read before the high-water mark, which then includes it
                probe.rows.append({"finished": finished, "seconds": time.time() - probe.started,
                                   "driver_peak_rss_mb": peak_rss() / MB, "driver_rss_mb": now / MB,
                                   "tree_rss_mb": sum(rss for _, rss in tree().values()) / MB})

        SearchProgress.trial_done = trial_done
        return self

    def __exit__(self, *exc: Any) -> None:
        self.owner.trial_done = self.original


def check(root: Path, expected: int) -> dict[str, Any]:
    """The Optuna study, ``trials.csv`` and MLflow, compared: numbers, states, duplicates."""
    import pandas as pd
    from mlflow.tracking import MlflowClient

    paths = study_paths(NAME, root)
    trials = optuna.load_study(study_name=NAME, storage=f"sqlite:///{paths.optuna_db}").get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    finished = sorted(t.number for t in trials if t.state == optuna.trial.TrialState.COMPLETE)
    ended = sorted(t.number for t in trials if t.state.is_finished())
    table = pd.read_csv(paths.trials_csv)
    pareto = sorted(pd.read_csv(paths.pareto_csv)["number"].astype(int))
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(NAME).experiment_id

    def runs(role: str) -> list[Any]:
        return client.search_runs([experiment], filter_string=f"tags.`autoprune.role` = '{role}'", max_results=10000)

    parents, children = runs("parent"), runs("trial")
    child_numbers = sorted(int(r.data.tags["autoprune.trial"]) for r in children)
    child_finished = sorted(int(r.data.tags["autoprune.trial"]) for r in children if r.info.status == "FINISHED")
    tagged_pareto = sorted(int(r.data.tags["autoprune.trial"]) for r in children if r.data.tags.get("pareto") == "true")
    steps = sorted(m.step for m in client.get_metric_history(parents[0].info.run_id, "hypervolume")) if parents else []
    checks = {
        "optuna_finished_as_wanted": len(finished) == expected,
        "optuna_numbers_unique_none_running": len(set(numbers)) == len(numbers) == len(ended),
        "csv_numbers_unique": bool(table["number"].is_unique),
        "csv_matches_optuna": sorted(table["number"].astype(int)) == sorted(numbers)
        and sorted(table.loc[table["state"] == "finished", "number"].astype(int)) == finished,
        "one_parent_run_finished": len(parents) == 1 and parents[0].info.status == "FINISHED",
        "child_runs_unique": len(set(child_numbers)) == len(child_numbers),
        "child_runs_match_optuna": child_numbers == ended and child_finished == finished,
        "hypervolume_one_step_per_finished_trial": steps == list(range(1, len(finished) + 1)),
        "pareto_tags_match_pareto_csv": tagged_pareto == pareto,
    }
    return {"checks": checks, "finished": len(finished), "failed": len(ended) - len(finished),
            "child_runs": len(children), "csv_rows": len(table), "pareto_size": len(pareto)}


def quarter_means(calls: Sequence[tuple[float, float]]) -> dict[str, float]:
    """Mean duration (ms) of the first and the last quarter of ``calls`` (in call order), and of all."""
    durations = [(end - start) * 1000 for start, end in sorted(calls)]
    if not durations:
        return {"first_quarter_ms": 0.0, "last_quarter_ms": 0.0, "mean_ms": 0.0, "calls": 0}
    size = max(1, len(durations) // 4)
    return {"first_quarter_ms": statistics.mean(durations[:size]), "last_quarter_ms": statistics.mean(durations[-size:]),
            "mean_ms": statistics.mean(durations), "calls": len(durations)}


def benchmark(settings: Settings, root: Path) -> dict[str, Any]:
    """Train the dense model, run the study with tracking on, check the records, collect the numbers."""
    space = make_space(settings)
    warm = study_paths(NAME, root / "dense-cache")
    log(f"dense model: mlp on digits (trained once, cached in {warm.folder})")
    prepare_dense(build_setup(space), warm, log=lambda _: None)
    studies = root / "studies"
    paths = study_paths(NAME, studies).create()
    for file in ("dense.pt", "dense.json"):
        shutil.copy2(warm.folder / file, paths.folder / file)
    options = SearchOptions(studies=studies, gpus=settings.gpus, gpus_per_trial=1, quiet=True)
    events: list[tuple[float, str]] = []
    log(f"search: {settings.trials} trials, gpus={settings.gpus} (declared), MLflow on")
    with TreeMonitor() as monitor, stopwatch() as calls:
        started = time.time()
        with Milestones(settings.milestones, started) as milestones:
            outcome = run_search(space, options, log=lambda message: events.append((time.time(), message)))
        ended = time.time()
    log(f"  {outcome.finished} finished, {outcome.failed} failed in {ended - started:.0f} s; checking the records")
    records = check(studies, settings.trials)
    study = optuna.load_study(study_name=NAME, storage=f"sqlite:///{paths.optuna_db}")
    spans = [t.user_attrs["worker_seconds"] for t in study.get_trials(deepcopy=False)
             if t.user_attrs.get("worker_seconds") and None not in t.user_attrs["worker_seconds"]]
    durations = [end - start for start, end in spans]
    first, last = min(s for s, _ in spans), max(e for _, e in spans)
    concurrency = settings.gpus
    wall, window = ended - started, last - first
    devices = sorted({t.user_attrs.get("device", "") for t in study.get_trials(deepcopy=False)})
    return {
        "outcome": {"finished": outcome.finished, "failed": outcome.failed, "interrupted": outcome.interrupted,
                    "front_size": outcome.front_size},
        **records,
        "devices": devices,
        "concurrency": concurrency,
        "wall_s": wall,
        "trials_window_s": window,
        "fixed_s": wall - window,
        "trial_sum_s": sum(durations),
        "trial_mean_s": statistics.mean(durations),
        "trial_min_s": min(durations),
        "trial_max_s": max(durations),
        "throughput": outcome.finished / wall,
        "overhead_per_trial_s": (concurrency * wall - sum(durations)) / len(durations),
        "window_overhead_per_trial_s": (concurrency * window - sum(durations)) / len(durations),
        "record": quarter_means(calls["record"]),
        "mlflow_update": quarter_means(calls["tracking_trial"]),
        "stages_s": {stage: sum(end - start for start, end in spans_) for stage, spans_ in calls.items()},
        "milestones": milestones.rows,
        **monitor.result(),
        "events": [[t - started, m] for t, m in events],
    }


def markdown(report: Mapping[str, Any]) -> str:
    """The report as markdown."""
    r, st, m = report["result"], report["settings"], report["machine"]
    checks = "\n".join(f"| {name.replace('_', ' ')} | {'yes' if ok else '**no**'} |" for name, ok in r["checks"].items())
    rows = "\n".join(
        f"| {row['finished']} | {row['seconds']:.0f} | {row['driver_peak_rss_mb']:.0f} | {row['driver_rss_mb']:.0f} | "
        f"{row['tree_rss_mb']:.0f} |" for row in r["milestones"])
    growth = ""
    if len(r["milestones"]) >= 2:
        a, b = r["milestones"][0], r["milestones"][-1]
        per = (b["driver_rss_mb"] - a["driver_rss_mb"]) / max(1, b["finished"] - a["finished"]) * 1000
        growth = (f" From {a['finished']} to {b['finished']} finished trials the driver's RSS changed by "
                  f"{b['driver_rss_mb'] - a['driver_rss_mb']:+.0f} MB ({per:+.0f} kB per trial) and its high-water mark "
                  f"by {b['driver_peak_rss_mb'] - a['driver_peak_rss_mb']:+.0f} MB.")
    rec, ml = r["record"], r["mlflow_update"]
    return "\n".join([
        "# Load benchmark: a long study of fast trials, four at a time, MLflow on",
        "",
        f"Command: `{report['command']}` (cwd `{report['cwd']}`), {report['date']}, commit `{report['git_commit']}`.",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} CPUs, {m['platform']}, torch {m['torch']}, Ray {m['ray']}, "
        f"Optuna {m['optuna']}, MLflow {m['mlflow']}. Load average at start/end: {report['loadavg_start']} / "
        f"{report['loadavg_end']}; busy cores during the search: machine {r['busy_cores']:.2f}, this process tree "
        f"{r['own_cores']:.2f}, other jobs {r['other_cores']:.2f}. Whole script: {report['seconds']:.0f} s.",
        "",
        f"Workload: {st['trials']} trials of a digits MLP (hidden [64, 32]), unstructured one-shot pruning with "
        f"scorer, allocation, target sparsity and a finetune of {st['finetune_epochs'][0]:g}–{st['finetune_epochs'][1]:g} "
        f"epochs searched (TPE, seed 0), latency {st['latency_repeats']} repeats; `run_search` with default options "
        f"(MLflow tracking to `studies/mlflow.db`, retime of the front) and `gpus={st['gpus']}, gpus_per_trial=1` on a "
        f"machine without GPUs: {r['concurrency']} trials at once, each on the CPU with one torch thread (devices seen: "
        f"{', '.join(r['devices'])}). Dense model trained beforehand (warm cache).",
        "",
        f"Result: {r['finished']} finished, {r['failed']} failed; {r['child_runs']} MLflow child runs, "
        f"{r['csv_rows']} rows in `trials.csv`, Pareto front of {r['pareto_size']}.",
        "",
        "| consistency check | passed |",
        "|---|---|",
        checks,
        "",
        "| measure | value |",
        "|---|---:|",
        f"| total wall (`run_search`, dense cache warm), s | {r['wall_s']:.1f} |",
        f"| trials window (first trial start → last trial end), s | {r['trials_window_s']:.1f} |",
        f"| fixed cost outside the window (Ray start, first worker, teardown, retime), s | {r['fixed_s']:.1f} |",
        f"| trial duration in the worker: mean (min–max), s | {r['trial_mean_s']:.2f} ({r['trial_min_s']:.2f}–"
        f"{r['trial_max_s']:.2f}) |",
        f"| throughput, finished trials / s | {r['throughput']:.2f} |",
        f"| overhead per trial, s: ({r['concurrency']} × wall − Σ trial durations) / N | {r['overhead_per_trial_s']:.3f} |",
        f"| same over the trials window only, s | {r['window_overhead_per_trial_s']:.3f} |",
        f"| driver bookkeeping per trial (Optuna tell, CSVs), ms: first / last quarter | {rec['first_quarter_ms']:.0f} / "
        f"{rec['last_quarter_ms']:.0f} |",
        f"| MLflow update per trial (background thread), ms: first / last quarter | {ml['first_quarter_ms']:.0f} / "
        f"{ml['last_quarter_ms']:.0f} ({ml['calls']} calls) |",
        f"| driver peak RSS over the run (high-water mark), MB | {r['driver_peak_rss_mb']:.0f} |",
        f"| driver RSS before the search, MB | {r['driver_start_rss_mb']:.0f} |",
        f"| largest Ray trial worker RSS (sampled), MB | {r['worker_peak_rss_mb']:.0f} |",
        f"| process tree peak RSS (sampled, shared pages per process), MB | {r['tree_peak_rss_mb']:.0f} |",
        "",
        "Driver memory as the study grows (read when the driver handles the result that reaches each count):"
        + growth,
        "",
        "| finished trials | seconds into the search | driver peak RSS MB | driver RSS MB | process tree RSS MB |",
        "|---:|---:|---:|---:|---:|",
        rows,
        "",
    ])


def run(settings: Settings, out: Path, argv: Sequence[str]) -> dict[str, Any]:
    """Run the benchmark, write ``load.json`` and ``load.md`` into ``out``; the report."""
    import mlflow
    import ray

    started = time.perf_counter()
    report: dict[str, Any] = {
        "command": shlex.join(["python", *argv]), "cwd": os.getcwd(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "git_commit": git_commit(),
        "machine": machine(ray=ray.__version__, optuna=optuna.__version__, mlflow=mlflow.__version__),
        "loadavg_start": [round(v, 2) for v in os.getloadavg()], "settings": asdict(settings),
    }
    with tempfile.TemporaryDirectory(prefix="autoprune-load-") as tmp:
        report["result"] = benchmark(settings, Path(tmp))
    report["passed"] = all(report["result"]["checks"].values())
    report["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    report["seconds"] = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    (out / "load.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "load.md").write_text(markdown(report))
    log(f"wrote {out / 'load.json'} and {out / 'load.md'} in {report['seconds']:.0f} s")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: ``python benchmarks/load.py [--smoke] [--out DIR]``; exit 1 if a consistency check failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="8 trials on 2 declared GPUs, milestones 4 and 8")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results",
                        help="folder for load.json and load.md (default: benchmarks/results)")
    args = parser.parse_args(argv)
    report = run(SMOKE if args.smoke else FULL, args.out, sys.argv if argv is None else ["load.py", *argv])
    print((args.out / "load.md").read_text())
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
