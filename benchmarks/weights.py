"""W2 — weight pruning: does the searched front beat the standard recipes at equal compute?

LeNet-300-100 on Fashion-MNIST (``benchmarks/spaces/w2_lenet300.yaml``), unstructured
pruning. Both sides run through the product, in one study folder so they share the dense
model, data, seed and latency settings:

1. ``autoprune baselines`` (:func:`autoprune.baselines.run_baselines`): uniform, global,
   LAMP, ERK and random at 0.5, 0.8, 0.9, 0.95, 0.98 sparsity, one-shot, each finetuned for
   the most epochs a search trial may spend;
2. ``autoprune search`` (:func:`autoprune.search.run_search`), resumed until its trials
   have spent the same total finetune epochs as the baselines (within half a trial).

Then, per sparsity level (95% and 98%): the best searched and the best baseline policy
(validation accuracy, sparsity at least the level) are re-finetuned with 3 seeds and their
**test** accuracy reported (mean, min, max), so no lucky trial is quoted; and the
hypervolume of each side's feasible front with the study's reference point
(:func:`autoprune.pareto.reference_point`).

    python benchmarks/weights.py                          # full run, ~15 min on 2 cores
    python benchmarks/weights.py --smoke --out /tmp/w2    # digits, seconds

Results: ``benchmarks/results/weights.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml

from _common import REPO, git_commit, machine
from autoprune.baselines import baseline_policy, baseline_settings, run_baselines
from autoprune.context import build_setup, trial_context
from autoprune.dense import prepare_dense
from autoprune.pareto import hypervolume, reference_point
from autoprune.paths import study_paths
from autoprune.policy import Policy
from autoprune.search import SearchOptions, run_search
from autoprune.space import SearchSpace, load_space, parse_space
from autoprune.train import evaluate
from autoprune.trial import run_trial

SPACE = REPO / "benchmarks" / "spaces" / "w2_lenet300.yaml"
LEVELS = (0.95, 0.98)
TARGETS = {"drop_95": 0.01, "drop_98": 0.025, "gain_over_baseline": 0.005, "hypervolume_ratio": 1.05}
SEEDS = (0, 1, 2)


def smoke_space() -> SearchSpace:
    """A digits MLP version of the W2 space that runs in seconds."""
    raw = yaml.safe_load(SPACE.read_text())
    raw["study"].update(name="w2-smoke", trials=4)
    raw["model"] = {"name": "mlp", "args": {"hidden": [64, 32]}, "pretrain": {"epochs": 10, "lr": 0.05}}
    raw["data"] = {"name": "digits", "batch_size": 64}
    raw["latency"] = {"repeats": 5, "warmup": 1}
    raw["space"]["finetune"]["epochs"] = [0.25, 0.5]
    return parse_space(raw, source="w2-smoke")


def front_volume(frame: pd.DataFrame, objectives: dict[str, str], reference: dict[str, float]) -> float:
    """Hypervolume of ``frame``'s feasible front (its ``pareto`` column) at ``reference``."""
    front = frame[frame["pareto"].astype(bool)]
    points = front[list(objectives)].astype(float).to_numpy().tolist()
    return hypervolume(points, list(objectives.values()), [reference[n] for n in objectives])


def best_at(frame: pd.DataFrame, level: float) -> pd.Series | None:
    """The finished row of highest validation accuracy whose sparsity is at least ``level``."""
    rows = frame[(frame["state"] == "finished") & (frame["sparsity"] >= level - 1e-4)]
    return None if rows.empty else rows.sort_values("accuracy", ascending=False).iloc[0]


def test_accuracy(policy: Policy, context: Any) -> dict[str, Any]:
    """``policy`` re-finetuned with each of :data:`SEEDS`: test accuracy mean, min, max."""
    data = context.data
    values = []
    for seed in SEEDS:
        result = run_trial(policy.model_copy(update={"seed": seed}), context, threads=1)
        values.append(float(evaluate(result.model, data.test_x, data.test_y)))
    return {"seeds": list(SEEDS), "test_accuracy": values, "mean": statistics.fmean(values),
            "min": min(values), "max": max(values)}


def run(space: SearchSpace, work: Path, *, concurrency: int, trials: int | None) -> dict[str, Any]:
    quiet = lambda message: None  # noqa: E731 - the benchmark prints its own progress
    settings = baseline_settings(space)
    started = time.perf_counter()
    baselines = run_baselines(space, settings, studies=work, log=quiet).frame
    baseline_s = time.perf_counter() - started
    baseline_epochs = settings.epochs * len(baselines)
    print(f"W2: {len(baselines)} baselines, {baseline_epochs:g} finetune epochs, in {baseline_s:.0f} s", flush=True)
    wanted, search_s, rounds = _search_to_budget(space, work, baseline_epochs, concurrency=concurrency, trials=trials)
    paths = study_paths(space.study.name, work)
    trials_frame = pd.read_csv(paths.trials_csv)
    search_epochs = _epochs_spent(trials_frame)

    setup = build_setup(space)
    dense = prepare_dense(setup, paths, log=quiet)
    context = trial_context(setup, dense)
    objectives = dict(space.objectives)
    dense_metrics = {"accuracy": float(dense.accuracy), "sparsity": 0.0}
    reference = reference_point(objectives, dense_metrics)
    volumes = {"search": front_volume(trials_frame, objectives, reference),
               "baselines": front_volume(baselines, objectives, reference)}
    policies = _policies(space, paths)
    levels: dict[str, Any] = {}
    for level in LEVELS:
        entry: dict[str, Any] = {}
        for side, frame in (("search", trials_frame), ("baselines", baselines)):
            row = best_at(frame, level)
            if row is None:
                entry[side] = None
                continue
            if side == "search":
                policy = policies[int(row["number"])]
                label = policy.summary()
            else:
                policy = baseline_policy(settings, row["method"], float(row["target_sparsity"]))
                label = f"{row['method']} @ {row['target_sparsity']:g}"
            print(f"W2: re-finetuning {side} best at {level:g} ({label}) with {len(SEEDS)} seeds", flush=True)
            entry[side] = {"policy": label, "val_accuracy": float(row["accuracy"]), "sparsity": float(row["sparsity"]),
                           **test_accuracy(policy, context)}
        levels[f"{level:g}"] = entry
    return {
        "dense": {"val_accuracy": float(dense.accuracy), "test_accuracy": float(dense.test_accuracy)},
        "compute": {"baselines_points": len(baselines), "baselines_epochs": baseline_epochs,
                    "baselines_s": baseline_s, "search_trials": wanted, "search_epochs": search_epochs,
                    "search_s": search_s, "search_rounds": rounds},
        "budget": settings.budget(),
        "hypervolume": {**volumes, "ratio": volumes["search"] / volumes["baselines"] if volumes["baselines"] else math.nan,
                        "reference": reference},
        "levels": levels,
        "baselines": baselines.to_dict("records"),
        "trials": trials_frame[["number", "state", "feasible", "pareto", "accuracy", "accuracy_drop", "sparsity",
                                "policy.finetune.epochs"]].to_dict("records"),
    }


def _epochs_spent(frame: pd.DataFrame) -> float:
    return float(frame.loc[frame["state"] == "finished", "policy.finetune.epochs"].sum())


def _search_to_budget(space: SearchSpace, work: Path, budget: float, *, concurrency: int,
                      trials: int | None) -> tuple[int, float, int]:
    """Search until the finished trials have spent ``budget`` finetune epochs (within half a trial).

    The sampler chooses each trial's epochs, so the trial count that spends the budget is not
    known in advance: the study is run for 80% of the expected count, then resumed (the
    product's resume: nothing reruns) with as many more trials as the remaining epochs need
    at the mean spent so far. ``trials`` fixes the count instead. Returns the trial count,
    the wall seconds of all rounds and the number of rounds.
    """
    quiet = lambda message: None  # noqa: E731
    low, high = space.space.finetune.epochs.low, space.space.finetune.epochs.high
    wanted = trials or max(2, int(0.8 * budget / ((low + high) / 2)))
    seconds, rounds = 0.0, 0
    while True:
        print(f"W2: searching to {wanted} trials", flush=True)
        started = time.perf_counter()
        run_search(space, SearchOptions(studies=work, trials=wanted, concurrency=concurrency, quiet=True,
                                        retime=False), log=quiet)
        seconds += time.perf_counter() - started
        rounds += 1
        spent = _epochs_spent(pd.read_csv(study_paths(space.study.name, work).trials_csv))
        mean = spent / wanted
        if trials or spent >= budget - mean / 2 or rounds == 5:
            return wanted, seconds, rounds
        wanted += max(1, round((budget - spent) / mean))


def _policies(space: SearchSpace, paths: Any) -> dict[int, Policy]:
    import optuna

    study = optuna.load_study(study_name=space.study.name, storage=f"sqlite:///{paths.optuna_db}")
    return {t.number: Policy.from_dict(t.user_attrs["policy"]) for t in study.get_trials(deepcopy=False)
            if "policy" in t.user_attrs}


def verdict(result: dict[str, Any]) -> dict[str, Any]:
    """Each target: the measured value and whether it is met (``None`` when not measurable)."""
    dense_test = result["dense"]["test_accuracy"]
    out: dict[str, Any] = {}
    for level, key in zip(LEVELS, ("drop_95", "drop_98")):
        entry = result["levels"][f"{level:g}"]
        search, base = entry.get("search"), entry.get("baselines")
        drop = None if search is None else dense_test - search["mean"]
        out[key] = {"value": drop, "target": f"<= {TARGETS[key]}", "met": None if drop is None else drop <= TARGETS[key]}
        gain = None if search is None or base is None else search["mean"] - base["mean"]
        out[f"gain_{level:g}"] = {"value": gain, "target": f">= {TARGETS['gain_over_baseline']}",
                                  "met": None if gain is None else gain >= TARGETS["gain_over_baseline"]}
    ratio = result["hypervolume"]["ratio"]
    out["hypervolume_ratio"] = {"value": ratio, "target": f">= {TARGETS['hypervolume_ratio']}",
                                "met": bool(ratio >= TARGETS["hypervolume_ratio"]) if math.isfinite(ratio) else None}
    return out


def _fmt(value: Any, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    result, targets = report["result"], report["targets"]
    compute = result["compute"]
    lines = [
        "# W2 — weight pruning: searched front vs baselines (LeNet-300-100, Fashion-MNIST)", "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}; commit {report['git_commit']}; machine: {report['machine']['cpu_model']}, "
        f"{report['machine']['cpu_count']} cores, torch {report['machine']['torch']}", "",
        f"Dense model: validation accuracy {result['dense']['val_accuracy']:.4f}, test accuracy "
        f"{result['dense']['test_accuracy']:.4f}. Baselines: {result['budget']}.", "",
        f"Compute: baselines {compute['baselines_points']} points, {compute['baselines_epochs']:.1f} finetune epochs, "
        f"{compute['baselines_s']:.0f} s; search {compute['search_trials']} trials, {compute['search_epochs']:.1f} "
        f"finetune epochs, {compute['search_s']:.0f} s in {compute['search_rounds']} run(s) (concurrency "
        f"{report['settings']['concurrency']}; resumed until its finetune epochs matched the baselines'). "
        "Baselines run one at a time in one process, trials two at a time: compare epochs, not seconds.", "",
        "Test accuracy of the best policy at each sparsity (chosen on validation accuracy, re-finetuned with "
        f"seeds {', '.join(map(str, SEEDS))}; mean [min, max]):", "",
        "| sparsity ≥ | side | policy | sparsity | val accuracy | test accuracy | drop vs dense (test) |",
        "|---|---|---|---|---|---|---|",
    ]
    dense_test = result["dense"]["test_accuracy"]
    for level, entry in result["levels"].items():
        for side in ("search", "baselines"):
            e = entry.get(side)
            if e is None:
                lines.append(f"| {level} | {side} | none reached this sparsity | | | | |")
                continue
            lines.append(f"| {level} | {side} | {e['policy']} | {e['sparsity']:.4f} | {e['val_accuracy']:.4f} | "
                         f"{e['mean']:.4f} [{e['min']:.4f}, {e['max']:.4f}] | {dense_test - e['mean']:+.4f} |")
    volume = result["hypervolume"]
    lines += ["", f"Hypervolume of the feasible fronts (reference {volume['reference']}): search "
              f"{volume['search']:.4f}, baselines {volume['baselines']:.4f}, ratio {volume['ratio']:.3f}.", "",
              "| target | measured | wanted | met |", "|---|---|---|---|"]
    for name, t in targets.items():
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        lines.append(f"| {name} | {_fmt(t['value'])} | {t['target']} | {met} |")
    lines += ["", "How to read the misses: the best point \"at ≥ 95%\" is the most accurate one at least that "
              "sparse, so a searched point can be sparser than the baseline it is compared with (the sparsity "
              "column says). The hypervolume's reference point is the product's (accuracy 0, sparsity 0): "
              "both fronts share the large box below the dense accuracy, so a gain of a point or two in "
              "accuracy at high sparsity moves the ratio by about 1-3%; 1.05× would need the baselines to be "
              "far worse over the whole sparsity range.", "",
              "![accuracy vs sparsity](weights.png)", ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    trials = pd.DataFrame(result["trials"])
    base = pd.DataFrame(result["baselines"])
    figure = Figure(figsize=(7, 4.5), dpi=110, layout="constrained")
    ax = figure.subplots()
    done = trials[trials["state"] == "finished"]
    ax.scatter(done["sparsity"], done["accuracy"], s=14, c="#9ab", label="searched trials")
    front = done[done["pareto"].astype(bool)].sort_values("sparsity")
    ax.plot(front["sparsity"], front["accuracy"], "o-", c="#d62728", label="searched front")
    for method, rows in base[base["state"] == "finished"].groupby("method"):
        ax.plot(rows["sparsity"], rows["accuracy"], "x--", label=f"baseline {method}")
    ax.axhline(result["dense"]["val_accuracy"], c="k", lw=0.8, ls=":", label="dense")
    ax.set_xlabel("sparsity")
    ax.set_ylabel("validation accuracy")
    ax.set_ylim(max(0.0, result["dense"]["val_accuracy"] - 0.15), None)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    figure.savefig(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="digits, 4 trials: seconds (used by the tests)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--work", type=Path, default=None, help="study folder (default benchmarks/.work/w2, wiped)")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--trials", type=int, default=None, help="search trials (default: equal finetune epochs)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    space = smoke_space() if args.smoke else load_space(SPACE)
    work = args.work or (args.out / "w2-work" if args.smoke else REPO / "benchmarks" / ".work" / "w2")
    shutil.rmtree(work, ignore_errors=True)
    settings = {"space": str(SPACE.relative_to(REPO)), "smoke": args.smoke, "concurrency": args.concurrency,
                "levels": list(LEVELS), "seeds": list(SEEDS)}
    started = time.perf_counter()
    result = run(space, work, concurrency=args.concurrency, trials=args.trials or (4 if args.smoke else None))
    report = {"command": "python " + " ".join(["benchmarks/weights.py", *(argv if argv is not None else sys.argv[1:])]),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "git_commit": git_commit(),
              "machine": machine(), "settings": settings, "wall_s": time.perf_counter() - started, "result": result}
    report["targets"] = verdict(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "weights.json").write_text(json.dumps(report, indent=2, default=float))
    (args.out / "weights.md").write_text(markdown(report))
    plot(result, args.out / "weights.png")
    print(markdown(report))


if __name__ == "__main__":
    main()
