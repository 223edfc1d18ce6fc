"""The report of ``overhead.py``: the headline table, the per-run tables and the notes on missed targets.

Split from ``overhead.py`` (which runs the rounds and computes the ratios); the runs
themselves are in ``_overhead_runs.py``.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from _overhead_runs import RUNS, SCORERS, SPARSITY_RANGE, TARGET_RATIO, TARGET_SCALING


def mean_of(runs: Sequence[Mapping[str, Any]], *path: str) -> float:
    """Mean over ``runs`` of the number at ``path`` (keys) in each run."""
    values = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value[key]
        values.append(value)
    return statistics.mean(values)


def misses(result: Mapping[str, Any]) -> list[str]:
    """One line per missed target, with the measured cause."""
    s, rounds, lines, imports = result["summary"], result["rounds"], [], result.get("imports") or {}
    c1 = [r["runs"]["search_c1"] for r in rounds]
    if s["search_vs_loop"]["mean"] > TARGET_RATIO:
        trial = statistics.mean(r["runs"]["loop_c1"]["trial_mean_s"] for r in rounds)
        speed = s["ray_trial_vs_loop_trial"]
        worker = (f" (a fresh process importing Ray Tune, torch and autoprune: {imports['python_and_ray_s']:.1f} s to "
                  f"start Python and Ray plus {imports['worker_imports_s']:.1f} s of imports, timed alone)"
                  if imports else "")
        dynamo = (f" (torch.optim's first optimizer imports torch._dynamo: {imports['torch_dynamo_s']:.1f} s alone)"
                  if imports else "")
        lines.append(
            f"search/loop {s['search_vs_loop']['mean']:.2f} > {TARGET_RATIO}: the fixed cost outside the trials window "
            f"is {s['fixed_s_c1']['mean']:.1f} s per search against {int(s['policies']['mean'])} trials of {trial:.1f} s: "
            f"dense latency for MLflow {mean_of(c1, 'phases', 'before_ray_s'):.1f} s, ray.init "
            f"{mean_of(c1, 'phases', 'ray_init_s'):.1f} s (MLflow's start, {mean_of(c1, 'stages', 'tracking_start'):.1f} s, "
            f"runs alongside), first-trial delay {mean_of(c1, 'phases', 'first_trial_delay_s'):.1f} s{worker}, teardown "
            f"{mean_of(c1, 'phases', 'teardown_s'):.1f} s (ray.shutdown {mean_of(c1, 'stages', 'ray_shutdown'):.1f} s alongside "
            f"MLflow's finish {mean_of(c1, 'stages', 'tracking_finish'):.1f} s, then the retime "
            f"{mean_of(c1, 'stages', 'retime'):.1f} s). On top, the first trial runs "
            f"{s['first_trial_penalty_s']['mean']:.1f} s longer in the fresh worker{dynamo}. Without the fixed cost "
            f"the ratio is {s['search_vs_loop_steady']['mean']:.2f}. Warm trials took {speed['min']:.2f}–"
            f"{speed['max']:.2f}× as long in the Ray worker as in the loop; the modelled ratio leaves such speed "
            "differences out. The fixed cost is paid once per `autoprune search`: with trials of this length the target "
            f"is met from about {result['break_even']} trials on."
        )
    if s["search_scaling"]["mean"] < TARGET_SCALING:
        others = ", ".join(f"{statistics.mean(r['runs'][k]['other_cores'] for r in rounds):.2f} ({k})" for k in RUNS)
        ceiling = (f"{TARGET_SCALING}× is out of reach on this machine: the plain loop itself scales only "
                   f"{s['loop_scaling']['mean']:.2f}×" if s["loop_scaling"]["mean"] < TARGET_SCALING else
                   f"the plain loop scales {s['loop_scaling']['mean']:.2f}×")
        lines.append(
            f"search throughput 2 vs 1 = {s['search_scaling']['mean']:.2f}× < {TARGET_SCALING}×; {ceiling} (its "
            f"trials run {s['trial_slowdown_c2_loop']['mean']:.2f}× slower two at a time: two concurrent trials do not "
            f"get two cores' worth of speed), and the fixed cost does not shrink with concurrency. With trials scaling "
            f"like the loop's and the measured fixed cost, the search could reach {result['scaling_ceiling']:.2f}×; "
            f"its trials window alone scaled {s['search_scaling_steady']['mean']:.2f}× (search trials "
            f"{s['trial_slowdown_c2_search']['mean']:.2f}× slower two at a time). Other jobs' busy cores: {others}."
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
    ("driver bookkeeping per trial on the trial path (Optuna tell, CSVs; MLflow queued), ms", "record_per_trial_ms_c1",
     ".0f", "", None),
    ("search overhead per trial, concurrency 1, s: (wall − Σ trials)/N", "overhead_per_trial_s_c1", ".2f", "", None),
    ("same, trials window only (gap between trials), s", "steady_overhead_per_trial_s_c1", ".3f", "", None),
    ("run_trial time in a Ray worker / in the loop (warm trials)", "ray_trial_vs_loop_trial", ".3f", "", None),
    ("first trial in a fresh Ray worker: extra run_trial time, s", "first_trial_penalty_s", ".2f", "", None),
    ("MLflow logging per trial (StudyTracker.trial_done, background thread), ms", "mlflow_per_trial_ms_c1", ".0f", "",
     None),
    ("same, against the gap between trials (its share if it were still on the trial path)", "mlflow_vs_gap_c1", ".0%",
     "", None),
    ("MLflow hand-off on the trial path (queueing the update), ms", "mlflow_on_path_ms_c1", ".2f", "", None),
    ("driver peak RSS (high-water mark during the run), search concurrency 1, MB", "driver_peak_rss_mb_c1", ".0f", "",
     None),
    ("same, concurrency 2, MB", "driver_peak_rss_mb_c2", ".0f", "", None),
    ("driver RSS growth during a search (peak − RSS at its start), concurrency 1, MB", "driver_rss_growth_mb_c1", ".0f",
     "", None),
    ("Ray trial worker peak RSS (sampled every 0.25 s), MB", "worker_peak_rss_mb_c1", ".0f", "", None),
    ("whole process tree peak RSS, search concurrency 2 (shared pages counted per process), MB", "tree_peak_rss_mb_c2",
     ".0f", "", None),
    ("plain loop process peak RSS, concurrency 1, MB", "loop_peak_rss_mb_c1", ".0f", "", None),
)


def _cell(stat: Mapping[str, float], fmt: str = ".2f", unit: str = "") -> str:
    if len(stat["rounds"]) == 1:
        return f"{stat['mean']:{fmt}}{unit}"
    return f"{stat['mean']:{fmt}}{unit} ({stat['min']:{fmt}}–{stat['max']:{fmt}})"


def _phase_rows(res: Mapping[str, Any]) -> list[str]:
    """Where each search's time went (one row per search run)."""
    rows = ["| round | conc. | setup s (excluded) | dense latency s | ray.init s (MLflow start s alongside) "
            "| first-trial delay s | trials window s | teardown s | search phase s | per trial: record ms / MLflow ms "
            "(background) | ray.shutdown s (MLflow finish s alongside) | retime s |", "|---:" * 12 + "|"]
    for i, rnd in enumerate(res["rounds"], 1):
        for r in (rnd["runs"]["search_c1"], rnd["runs"]["search_c2"]):
            p, g = r["phases"], r["stages"]
            rows.append(
                f"| {i} | {r['concurrency']} | {p['setup_s']:.1f} | {p['before_ray_s']:.1f} | {p['ray_init_s']:.1f} "
                f"({g['tracking_start']:.1f}) | {p['first_trial_delay_s']:.1f} | {p['trials_window_s']:.1f} | "
                f"{p['teardown_s']:.1f} | {r['wall_s']:.1f} | {r['record_per_trial_s'] * 1000:.0f} / "
                f"{r['tracking_per_trial_s'] * 1000:.0f} | {g['ray_shutdown']:.1f} ({g['tracking_finish']:.1f}) | "
                f"{g['retime']:.1f} |")
    return rows


def _run_rows(res: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Every run: time and cores; memory."""
    runs = ["| round | run | concurrency | wall s | trials/s | Σ trial s | mean trial s | overhead/trial s "
            "| busy cores: machine / ours / others | load after |", "|---:|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    memory = ["| round | run | concurrency | driver RSS at start MB | driver peak RSS MB | Ray trial worker peak MB "
              "| process tree peak MB |", "|---:|---|---:|---:|---:|---:|---:|"]
    for i, rnd in enumerate(res["rounds"], 1):
        for key in rnd["order"]:
            r, kind = rnd["runs"][key], key.split("_c")[0]
            runs.append(
                f"| {i} | {kind} | {r['concurrency']} | {r['wall_s']:.1f} | {r['throughput']:.3f} | "
                f"{r['trial_sum_s']:.1f} | {r['trial_mean_s']:.2f} | {r['overhead_per_trial_s']:.2f} | "
                f"{r['busy_cores']:.2f} / {r['own_cores']:.2f} / {r['other_cores']:.2f} | {r['loadavg_after'][0]:.2f} |")
            worker = f"{r['worker_peak_rss_mb']:.0f}" if kind == "search" else "–"
            memory.append(f"| {i} | {kind} | {r['concurrency']} | {r['driver_start_rss_mb']:.0f} | "
                          f"{r['driver_peak_rss_mb']:.0f} | {worker} | {r['tree_peak_rss_mb']:.0f} |")
    return runs, memory


def _previous_rows(report: Mapping[str, Any]) -> list[str]:
    """The headline of the results this run replaced, next to this run's (when there were any)."""
    previous = report.get("previous") or {}
    keys = [k for k in report["headline"] if k in previous.get("headline", {})]
    if not keys:
        return []
    labels = {key: label for label, key, *_ in HEADLINE}
    rows = [f"Compared with earlier results: {previous.get('date')}, commit `{previous.get('git_commit')}`.", "",
            "| measure | previous | now |", "|---|---:|---:|"]
    for key in keys:
        rows.append(f"| {labels.get(key, key)} | {previous['headline'][key]:.3g} | {report['headline'][key]:.3g} |")
    return rows + [""]


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
    runs, memory = _run_rows(res)
    m = report["machine"]
    waited = sum(r.get("waited_for_quiet_s", 0.0) for rnd in res["rounds"] for r in rnd["runs"].values())
    miss_lines = [f"- {line}" for line in res["misses"]] or ["- none"]
    imports = res.get("imports") or {}
    probe = (f" Timed alone in fresh processes: Python with `import ray` {imports['python_and_ray_s']:.1f} s, "
             f"`import ray.tune, autoprune.search` {imports['worker_imports_s']:.1f} s, `import torch._dynamo` after "
             f"torch {imports['torch_dynamo_s']:.1f} s." if imports else "")
    return "\n".join([
        "# Overhead benchmark: what `autoprune search` costs over a plain loop",
        "",
        f"Command: `{report['command']}` (cwd `{report['cwd']}`), {report['date']}, commit `{report['git_commit']}`.",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} CPUs, {m['platform']}, torch {m['torch']}, Ray {m['ray']}, "
        f"Optuna {m['optuna']}; 1 torch thread per trial. Load average at start/end: {report['loadavg_start']} / "
        f"{report['loadavg_end']}. Busy cores per run: the whole machine (`/proc/stat`), this process with all its "
        "descendants (pool workers, Ray, trial workers; polled from `/proc`), and the difference, other jobs. "
        f"Before each run the script waited for other jobs to go quiet (at most {st['quiet_wait']:g} s in all; "
        f"waited {waited:.0f} s). Full run: {report['seconds']:.0f} s.",
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
        *_previous_rows(report),
        *headline,
        "",
        "Where a search's time goes. Setup (space file, data, study, dense cache) is excluded: the loop pays the "
        f"same before its timer ({res['loop_setup_s']:.1f} s). The driver then times the dense model's latency "
        "for MLflow (on a quiet machine), starts Ray on a background thread and sets up MLflow's parent run "
        "meanwhile (each search creates its own MLflow store), and waits for Ray. The first-trial delay (Ray up → "
        "first trial's `run_trial` starts) is mostly a fresh worker process starting Python and importing Ray "
        f"Tune, torch and autoprune.{probe} MLflow's and the plots' first use in a process, "
        f"{res['mlflow_import_s']:.1f} s, was paid once before timing, like Ray's and torch's imports; a fresh "
        "`autoprune search` process pays it on top. Per trial, *record* (Optuna tell, `trials.csv`/`pareto.csv`) "
        "is on the trial path; MLflow's update (child run, tags, front metrics, every few trials the plots) runs "
        "on a background thread at lower priority. Teardown (last trial end → return): the last record, "
        "`ray.shutdown` on its own thread while MLflow catches up and draws the final plots, then the retime of "
        "the Pareto front. Stages are timed by wrapping the driver's functions at run time:",
        "",
        *_phase_rows(res),
        "",
        "Peak memory per run: the driver's RSS high-water mark (`VmHWM`, reset at the start of each run through "
        "`/proc/self/clear_refs`; this process also holds the loop's context and the fork pool, hence the RSS at "
        "start), the largest RSS of a Ray trial worker and of the whole process tree (sampled every 0.25 s; "
        "shared pages, e.g. tensors mapped from Ray's object store, count in every process that maps them):",
        "",
        *memory,
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
