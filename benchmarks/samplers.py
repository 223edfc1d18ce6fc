"""Workload W1: which sampler finds a good accuracy/sparsity front in fewest trials.

Each sampler of :mod:`autoprune.samplers` (``tpe``, ``nsga2``, ``gp``, ``random``) searches
the same space (``benchmarks/spaces/w1_digits.yaml``: the policy space of the shipped
``search_spaces/digits.yaml``, MLP 300-100 on 8x8 digits) for ~100 trials, once per seed.
Every run measures the product's own pieces:

* the context (data, dense model trained once) is built once with ``build_setup`` +
  ``prepare_dense`` and shared by every run;
* each run creates its study as :func:`autoprune.search.open_study` does (seeded sampler from
  ``make_sampler``, directions from the objectives) but in memory: storage does not change
  what a sampler proposes, and SQLite costs ~0.5 s per ask/tell on this machine, more than a
  trial. It asks Optuna directly, suggests with the define-by-run
  :class:`~autoprune.suggest.PolicySuggester`, runs :func:`autoprune.trial.run_trial` (one
  torch thread) and tells through :class:`autoprune.search.StudyRecorder` (metrics,
  feasibility, ``set_constraint``), exactly as the Ray driver does. Ray Tune only places
  trials on workers; it does not change what the sampler sees, so it is left out;
* the sampler seed varies per run; the dense model, data split and policy seed do not, so
  the same policy scores the same in every run.

Hypervolume (:mod:`autoprune.pareto`, Optuna's exact implementation) over feasible trials in
finish order, with one reference point for all runs: the product's
:func:`~autoprune.pareto.reference_point` (accuracy 0, sparsity 0, the ``hypervolume`` that
MLflow shows) as headline, and the constraint boundary (accuracy = dense − allowed drop,
sparsity 0) as a check that weighs the feasible band only. Each is normalised by the
hypervolume of the best front found over all runs together (the union of every run's
feasible trials), so 1.0 is "as good as everything any sampler found".

Target: the best model-based sampler reaches random search's median 100-trial
hypervolume within 50 trials (on its median-over-seeds curve).

Usage::

    python benchmarks/samplers.py [--smoke] [--out benchmarks/results]

writes ``samplers.json`` (every trial of every run, curves, settings, machine, commit),
``samplers.md`` (tables, verdict) and ``samplers.png`` (median curves with min–max bands).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shlex
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

torch.set_num_threads(1)

from autoprune.context import TrialContext, build_setup, trial_context  # noqa: E402
from autoprune.dense import prepare_dense  # noqa: E402
from autoprune.errors import AutopruneError  # noqa: E402
from autoprune.layers import LayerInfo  # noqa: E402
from autoprune.pareto import front_progress, hypervolume, reference_point  # noqa: E402
from autoprune.paths import study_paths  # noqa: E402
from autoprune.samplers import make_sampler, nsga2_population, startup_trials  # noqa: E402
from autoprune.search import OUTCOME_KEY, SearchOptions, StudyRecorder, apply_overrides  # noqa: E402
from autoprune.space import SearchSpace, load_space, parse_space  # noqa: E402
from autoprune.suggest import PolicySuggester  # noqa: E402
from autoprune.trial import TrialFailed, run_trial  # noqa: E402
from _common import git_commit, machine  # noqa: E402  (benchmarks/_common.py)

REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "benchmarks" / "spaces" / "w1_digits.yaml"
MODEL_BASED = ("tpe", "nsga2", "gp")


@dataclass(frozen=True)
class Settings:
    """What to run: samplers × seeds × trials, and edits to the space (smoke only)."""

    samplers: tuple[str, ...]
    seeds: tuple[int, ...]
    trials: int
    workers: int = 2
    space_edits: dict[str, Any] = field(default_factory=dict)


FULL = Settings(samplers=("tpe", "nsga2", "gp", "random"), seeds=(0, 1, 2, 3, 4), trials=100)
SMOKE = Settings(samplers=("tpe", "random"), seeds=(0,), trials=6, space_edits={
    "model": {"pretrain": {"epochs": 5}}, "latency": {"repeats": 5, "warmup": 1},
    "space": {"finetune": {"epochs": [0.1, 0.3]}}})

_SHARED: dict[str, Any] = {}  # set in the parent before the worker processes fork


def log(message: str) -> None:
    """Progress on stderr, so a background run's log shows where it is."""
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def _merge(base: dict[str, Any], edits: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``edits`` applied recursively (mappings merge, other values replace)."""
    out = dict(base)
    for key, value in edits.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, Mapping) else value
    return out


def load_benchmark_space(settings: Settings) -> SearchSpace:
    """The W1 space with the settings' edits, validated like any space file."""
    space = load_space(SPACE)
    if not settings.space_edits:
        return space
    return parse_space(_merge(space.to_yaml_dict(), settings.space_edits), source=str(SPACE))


# --------------------------------------------------------------------------- one run


def run_one(job: tuple[str, int]) -> dict[str, Any]:
    """One (sampler, seed) run of ``trials`` finished trials, ask/tell in this process.

    Returns every trial in number order: state, objectives, feasibility, the seconds spent
    sampling (ask + suggest), in the trial and in the tell, and the suggested params (the
    policy is ``policy_from_params(params, space, layers, seed=0)``).
    """
    sampler, seed = job
    space: SearchSpace = _SHARED["space"]
    context: TrialContext = _SHARED["context"]
    layers: list[LayerInfo] = _SHARED["layers"]
    trials: int = _SHARED["trials"]
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    paths = study_paths(f"{space.study.name}-{sampler}-{seed}", _SHARED["root"])
    paths.create()
    # As search.open_study, but in memory: Optuna's SQLite storage costs ~0.5 s per ask/tell here.
    directions = ["maximize" if d == "max" else "minimize" for d in space.objectives.values()]
    study = optuna.create_study(sampler=make_sampler(sampler, seed=seed, trials=trials), directions=directions)
    recorder = StudyRecorder(space, paths)  # the driver's tell: metrics, feasibility, set_constraint
    suggester = PolicySuggester(space.space, layers, seed=space.study.seed)  # policy seed fixed across runs
    started = time.perf_counter()
    timings: list[dict[str, float]] = []
    finished = failed = 0
    while finished < trials and failed < trials:
        t0 = time.perf_counter()
        trial = study.ask()
        policy = suggester.policy(trial)
        t1 = time.perf_counter()
        try:
            result = run_trial(policy, context, threads=1)
            outcome = {"metrics": result.metrics, "policy": policy.to_dict(), "steps": result.steps}
            finished += 1
        except (TrialFailed, AutopruneError, RuntimeError, ValueError, FloatingPointError) as exc:
            outcome = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0], "policy": policy.to_dict()}
            failed += 1
        t2 = time.perf_counter()
        recorder.record(study, trial, {OUTCOME_KEY: json.dumps(outcome)}, error=False)
        timings.append({"sample_s": t1 - t0, "trial_s": t2 - t1, "tell_s": time.perf_counter() - t2})
    rows = []
    for ot, timing in zip(sorted(study.get_trials(deepcopy=False), key=lambda t: t.number), timings):
        metrics = ot.user_attrs.get("metrics", {})
        rows.append({
            "number": ot.number, "state": ot.state.name.lower(), "feasible": bool(ot.user_attrs.get("feasible", False)),
            **{k: metrics.get(k) for k in (*space.objectives, "accuracy_drop")},
            **{k: round(v, 4) for k, v in timing.items()},
            "params": ot.params, "error": ot.user_attrs.get("error", ""),
        })
    log(f"{sampler} seed {seed}: {finished} finished, {failed} failed in {time.perf_counter() - started:.0f} s")
    return {"sampler": sampler, "seed": seed, "seconds": time.perf_counter() - started, "trials": rows}


def run_all(settings: Settings, space: SearchSpace, context: TrialContext, layers: list[LayerInfo],
            root: str) -> list[dict[str, Any]]:
    """Every (sampler, seed) run, ``settings.workers`` at a time in forked processes.

    The slowest sampler (``gp``) goes first so the two workers finish close together.
    """
    _SHARED.update(space=space, context=context, layers=layers, trials=settings.trials, root=root)
    jobs = sorted(((s, seed) for s in settings.samplers for seed in settings.seeds),
                  key=lambda job: (job[0] != "gp", job[1]))
    with multiprocessing.get_context("fork").Pool(settings.workers) as pool:
        runs = list(pool.imap_unordered(run_one, jobs, chunksize=1))
    order = {job: i for i, job in enumerate((s, seed) for s in settings.samplers for seed in settings.seeds)}
    return sorted(runs, key=lambda run: order[(run["sampler"], run["seed"])])


# --------------------------------------------------------------------------- hypervolume


def _points(run: Mapping[str, Any], objectives: Sequence[str]) -> tuple[list[list[float]], list[bool]]:
    """Objective values and feasibility of a run's finished trials, in finish order."""
    done = [t for t in run["trials"] if t["state"] == "complete"]
    return [[float(t[k]) for k in objectives] for t in done], [t["feasible"] for t in done]


def hv_curves(runs: list[dict[str, Any]], objectives: Mapping[str, str],
              references: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, Any]]:
    """Per reference: its point, the union-front normaliser, and each run's normalised curve.

    Entry ``k`` of a curve is the hypervolume of the first ``k + 1`` finished trials'
    feasible front divided by the hypervolume of all runs' feasible trials together.
    """
    names, directions = list(objectives), list(objectives.values())
    out = {}
    for ref_name, ref in references.items():
        ref_values = [ref[n] for n in names]
        every = [(p, ok) for run in runs for p, ok in zip(*_points(run, names))]
        best = hypervolume([p for p, ok in every if ok], directions, ref_values)
        curves = []
        for run in runs:
            points, feasible = _points(run, names)
            raw = [volume for volume, _ in front_progress(points, feasible, directions, ref_values)]
            curves.append([v / best if best > 0 else 0.0 for v in raw])
        out[ref_name] = {"reference": dict(ref), "normaliser": best, "curves": curves}
    return out


def first_reaching(curve: Sequence[float], level: float) -> int | None:
    """The 1-based trial count at which ``curve`` first reaches ``level`` (``None``: never)."""
    return next((k + 1 for k, v in enumerate(curve) if v >= level - 1e-12), None)


def summarize(runs: list[dict[str, Any]], curves: Sequence[Sequence[float]], settings: Settings) -> dict[str, Any]:
    """Per sampler: median/min/max curves, checkpoints, and trials to reach random's final median."""
    n = settings.trials
    by_sampler = {s: np.array([c[:n] for r, c in zip(runs, curves) if r["sampler"] == s]) for s in settings.samplers}
    level = float(np.median(by_sampler["random"][:, n - 1]))
    out: dict[str, Any] = {"random_final_median": level, "checkpoints": [n // 4, n // 2, n], "samplers": {}}
    for sampler, matrix in by_sampler.items():
        median = np.median(matrix, axis=0)
        out["samplers"][sampler] = {
            "median": median.tolist(), "min": matrix.min(axis=0).tolist(), "max": matrix.max(axis=0).tolist(),
            "at": {str(k): {"median": float(median[k - 1]), "min": float(matrix[:, k - 1].min()),
                            "max": float(matrix[:, k - 1].max())} for k in out["checkpoints"]},
            "reach_random": first_reaching(median, level),
            "reach_random_per_seed": [first_reaching(row, level) for row in matrix],
        }
    reached = {s: out["samplers"][s]["reach_random"] for s in settings.samplers if s in MODEL_BASED}
    best = min(reached, key=lambda s: (reached[s] is None, reached[s] or 0, -out["samplers"][s]["median"][-1]))
    out["target"] = {"best_sampler": best, "trials": reached[best], "budget": n // 2,
                     "met": reached[best] is not None and reached[best] <= n // 2}
    return out


# --------------------------------------------------------------------------- report


def _cell(at: Mapping[str, float]) -> str:
    return f"{at['median']:.3f} ({at['min']:.3f}–{at['max']:.3f})"


def _table(summary: Mapping[str, Any], report: Mapping[str, Any]) -> list[str]:
    """The headline table: HV at the checkpoints, trials to reach random, feasibility, cost."""
    ks = summary["checkpoints"]
    rows = [f"| sampler | {' | '.join(f'HV @{k} median (min–max)' for k in ks)} | trials to random's @{ks[-1]} "
            "median (median curve; per seed) | feasible trials | sampling s/trial | run wall s |",
            "|---|" + "---:|" * len(ks) + "---|---:|---:|---:|"]
    for sampler, s in summary["samplers"].items():
        runs = [r for r in report["runs"] if r["sampler"] == sampler]
        trials = [t for r in runs for t in r["trials"]]
        feasible = sum(t["feasible"] for t in trials) / len(trials)
        sample = float(np.mean([t["sample_s"] for t in trials]))
        wall = float(np.median([r["seconds"] for r in runs]))
        per_seed = ", ".join("never" if k is None else str(k) for k in s["reach_random_per_seed"])
        reach = "never" if s["reach_random"] is None else str(s["reach_random"])
        rows.append(f"| {sampler} | {' | '.join(_cell(s['at'][str(k)]) for k in ks)} | {reach} ({per_seed}) | "
                    f"{feasible:.0%} | {sample:.3f} | {wall:.0f} |")
    return rows


def verdict(summary: Mapping[str, Any]) -> str:
    """Target met or missed, with the numbers that say why."""
    target, samplers = summary["target"], summary["samplers"]
    best, n = target["best_sampler"], summary["checkpoints"][-1]
    level, at_half = summary["random_final_median"], samplers[best]["at"][str(n // 2)]["median"]
    head = (f"**Target {'met' if target['met'] else 'missed'}**: the best model-based sampler, `{best}`, "
            f"reaches random search's median {n}-trial HV ({level:.3f}) "
            + (f"after {target['trials']} trials (budget {target['budget']})" if target["trials"] else
               f"within no trial count up to {n}") + f"; at {n // 2} trials its median HV is {at_half:.3f}.")
    per_seed = samplers[best]["reach_random_per_seed"]
    within = sum(k is not None and k <= target["budget"] for k in per_seed)
    others = [f"`{s}` {'never' if v['reach_random'] is None else v['reach_random']}" for s, v in samplers.items()
              if s in MODEL_BASED and s != best]
    return (head + f" Per seed, {within} of {len(per_seed)} `{best}` runs reach it within {target['budget']} trials."
            + (f" Other model-based samplers (median curve): {', '.join(others)}." if others else ""))


def markdown(report: Mapping[str, Any]) -> str:
    """``samplers.md``: settings, the headline table and verdict per reference point."""
    st, m, hv = report["settings"], report["machine"], report["hypervolume"]
    lines = [
        "# Sampler benchmark (W1): normalised hypervolume vs trials on digits (MLP)", "",
        f"Command: `{report['command']}` (cwd `{report['cwd']}`), {report['date']}, commit `{report['git_commit']}`, "
        f"{report['seconds']:.0f} s wall.",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} CPUs, {m['platform']}, torch {m['torch']}, optuna {m['optuna']}; "
        f"{st['workers']} worker processes, 1 torch thread each. Load average start/end: "
        f"{report['loadavg_start']} / {report['loadavg_end']}.", "",
        f"Space `{report['space_file']}` (objectives {report['objectives']}, accuracy_drop ≤ "
        f"{report['constraint']}); dense validation accuracy {report['dense']['accuracy']:.4f}. "
        f"Samplers {', '.join(st['samplers'])} from `autoprune.samplers.make_sampler` (budget {st['trials']}), "
        f"seeds {list(st['seeds'])}, {st['trials']} finished trials per run; ask/tell in-process "
        "(study built as `open_study` does, in memory; `PolicySuggester`, `run_trial`, `StudyRecorder`); no Ray, "
        "which only places trials on workers and does not change what a sampler proposes.", "",
        "HV = hypervolume of the feasible front after k finished trials, divided by the HV of all runs' "
        "feasible trials together (1.0 = the best front any run found). Median and (min–max) over seeds.", "",
    ]
    titles = {"product": "Headline: the product's reference point", "constraint": "Check: reference at the constraint"}
    for name, entry in hv.items():
        ref = ", ".join(f"{k} {v:.4g}" for k, v in entry["reference"].items())
        lines += [f"## {titles.get(name, name)} ({ref}; normaliser {entry['normaliser']:.4f})", "",
                  *_table(entry["summary"], report), "", verdict(entry["summary"]), ""]
    best = "; ".join(f"{name}: `{e['summary']['target']['best_sampler']}` ({e['summary']['target']['trials']})"
                     for name, e in hv.items())
    lines += [f"Best model-based sampler (trials to random's median) per reference point — {best}. The best is "
              "picked after the fact among the model-based samplers, and the min–max bands overlap, so a "
              "'met' is only as strong as the per-seed counts say.", "",
              f"The first {startup_trials(st['trials'])} trials of `tpe` and `gp` and the first "
              f"{nsga2_population(st['trials'])} of `nsga2` (their random start-up) are the `random` run's with "
              "the same seed, so the curves coincide there. Samplers read feasibility through `Trial.set_constraint` "
              "(set by `StudyRecorder`); infeasible trials add nothing to HV. 'sampling s/trial' is ask + "
              "define-by-run suggest (the sampler's own cost), not the trial.", ""]
    return "\n".join(lines)


def plot(report: Mapping[str, Any], path: Path) -> None:
    """``samplers.png``: per reference point, median HV vs trials with min–max bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = report["hypervolume"]
    fig, axes = plt.subplots(1, len(entries), figsize=(6.5 * len(entries), 4.5), squeeze=False)
    for ax, (name, entry) in zip(axes[0], entries.items()):
        summary = entry["summary"]
        for sampler, s in summary["samplers"].items():
            x = np.arange(1, len(s["median"]) + 1)
            (line,) = ax.plot(x, s["median"], label=sampler)
            ax.fill_between(x, s["min"], s["max"], color=line.get_color(), alpha=0.15)
        ax.axhline(summary["random_final_median"], color="grey", ls=":", lw=1, label="random final median")
        ax.axvline(summary["checkpoints"][1], color="grey", ls="--", lw=1)
        low = min(s["min"][len(s["min"]) // 10] for s in summary["samplers"].values())
        ax.set(title=f"{name} reference: " + ", ".join(f"{k} {v:.3g}" for k, v in entry["reference"].items()),
               xlabel="finished trials", ylabel="normalised hypervolume", ylim=(max(0.0, low - 0.05), 1.01))
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(settings: Settings, out: Path, argv: Sequence[str]) -> dict[str, Any]:
    """Build the context once, run every (sampler, seed), write json/md/png into ``out``."""
    started = time.perf_counter()
    space = apply_overrides(load_benchmark_space(settings), SearchOptions(trials=settings.trials))
    report: dict[str, Any] = {
        "command": shlex.join(["python", *argv]), "cwd": os.getcwd(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "git_commit": git_commit(),
        "machine": machine(optuna=optuna.__version__), "loadavg_start": [round(v, 2) for v in os.getloadavg()],
        "settings": asdict(settings), "space_file": str(SPACE.relative_to(REPO)), "space": space.to_yaml_dict(),
        "objectives": dict(space.objectives), "constraint": space.constraints.accuracy_drop,
    }
    with tempfile.TemporaryDirectory(prefix="w1-samplers-") as root:
        setup = build_setup(space)
        dense = prepare_dense(setup, study_paths(space.study.name, root), log=log)
        report["dense"] = {"accuracy": dense.accuracy, "test_accuracy": dense.test_accuracy}
        log(f"running {len(settings.samplers) * len(settings.seeds)} runs of {settings.trials} trials")
        report["runs"] = run_all(settings, space, trial_context(setup, dense), setup.layers, root)
    references = {"product": reference_point(space.objectives, {"accuracy": dense.accuracy})}
    if space.constraints.accuracy_drop is not None and space.objectives.get("accuracy") == "max":
        boundary = dense.accuracy - space.constraints.accuracy_drop
        references["constraint"] = {**references["product"], "accuracy": boundary}
    report["hypervolume"] = hv_curves(report["runs"], space.objectives, references)
    for entry in report["hypervolume"].values():
        entry["summary"] = summarize(report["runs"], entry["curves"], settings)
    report["target_met"] = report["hypervolume"]["product"]["summary"]["target"]["met"]
    report["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    report["seconds"] = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    (out / "samplers.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "samplers.md").write_text(markdown(report))
    plot(report, out / "samplers.png")
    log(f"wrote samplers.json, samplers.md, samplers.png into {out} in {report['seconds']:.0f} s")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: ``python benchmarks/samplers.py [--smoke] [--out DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="seconds: 2 samplers × 1 seed × 6 trials, tiny finetune")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results",
                        help="folder for samplers.json/.md/.png (default: benchmarks/results)")
    args = parser.parse_args(argv)
    run(SMOKE if args.smoke else FULL, args.out, sys.argv if argv is None else ["samplers.py", *argv])
    print((args.out / "samplers.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
