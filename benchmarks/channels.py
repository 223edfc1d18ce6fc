"""W3 — channel pruning on Fashion-MNIST: measured speedup at ≤ 1 point, and vs narrower nets.

``small_cnn`` (channels 32/64, hidden 128) on Fashion-MNIST, channel granularity
(``benchmarks/spaces/w3_channels.yaml``: validation accuracy max, latency at batch 1 min):

1. the dense model is trained once and cached in the study folder (kept between runs; the
   rest of the folder is wiped so every run is a fresh search);
2. **narrow dense baselines**: ``small_cnn`` with every width (conv channels, hidden units)
   scaled by each of :attr:`Settings.widths`, trained from scratch for pretrain + finetune
   epochs (what a pruned model gets in all), two at a time in forked processes, 1 thread each;
3. a real search: :func:`autoprune.search.run_search`, concurrency 2, 1 thread per trial,
   with its isolated re-timing of the front at batch 1;
4. every front member's architecture is rebuilt from its ``layer_channels`` (as
   :mod:`autoprune.retime` does) and timed with the dense model and the narrow nets, all
   interleaved by :func:`autoprune.measure.time_deployed` (deployed form, 1 thread), at
   batch 1 and batch 256; speedup = dense / model latency;
5. the **chosen policy**: the front member with the highest batch-1 speedup whose validation
   accuracy is at most 1 point below the dense model's, re-finetuned with 3 new seeds
   (``run_trial`` with ``seed`` changed): validation and test accuracy mean, min, max. The
   test split is used for this policy only.

Targets: chosen speedup ≥ 1.5× at batch 1 and ≥ 2.5× at batch 256; and, at each batch size,
its seed-mean validation accuracy above the narrow nets' at the same speedup (linear
interpolation in log speedup between the two narrow nets around it).

    python benchmarks/channels.py                          # full run, ~12 min on 2 cores
    python benchmarks/channels.py --smoke --out /tmp/w3    # digits, about 30 s

Results: ``channels.json`` (everything), ``channels.md`` (headline, misses), ``channels.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml

torch.set_num_threads(1)

from _common import REPO, git_commit, machine  # noqa: E402  (benchmarks/_common.py)
from autoprune.artifacts import rebuild_architecture  # noqa: E402
from autoprune.context import TrialContext, build_setup, trial_context  # noqa: E402
from autoprune.dense import prepare_dense  # noqa: E402
from autoprune.measure import macs, time_deployed  # noqa: E402
from autoprune.models import build_model, prunable_layers  # noqa: E402
from autoprune.paths import StudyPaths, study_paths  # noqa: E402
from autoprune.policy import Policy  # noqa: E402
from autoprune.results import trials_frame  # noqa: E402
from autoprune.search import SearchOptions, run_search  # noqa: E402
from autoprune.space import SearchSpace, load_space, parse_space  # noqa: E402
from autoprune.train import bundle_batches, evaluate, train  # noqa: E402
from autoprune.trial import run_trial  # noqa: E402

SPACE = REPO / "benchmarks" / "spaces" / "w3_channels.yaml"
BATCHES = (1, 256)
TARGETS = {"speedup_b1": 1.5, "speedup_b256": 2.5}
KEEP = ("dense.pt", "dense.json")


@dataclass(frozen=True)
class Settings:
    """How much to run: the full benchmark, or the digits ``--smoke`` version."""

    widths: tuple[float, ...]
    repeats: dict[int, int]
    warmup: int
    seeds: int
    concurrency: int
    max_drop: float = 0.01  # the accuracy drop (validation, fraction) a chosen policy may have


FULL = Settings(widths=(0.25, 0.375, 0.5, 0.625, 0.75), repeats={1: 200, 256: 20}, warmup=3, seeds=3, concurrency=2)
SMOKE = Settings(widths=(0.5, 0.75), repeats={1: 10, 256: 2}, warmup=1, seeds=2, concurrency=2, max_drop=0.05)


def log(message: str) -> None:
    """Progress on stderr with a timestamp."""
    print(f"[{time.strftime('%H:%M:%S')}] W3: {message}", file=sys.stderr, flush=True)


def smoke_space() -> SearchSpace:
    """The W3 space shrunk to digits (8×8), small_cnn 8/16, 4 trials: seconds per trial."""
    raw = yaml.safe_load(SPACE.read_text())
    raw["study"].update(name="w3-smoke", trials=4)
    raw["model"] = {"name": "small_cnn", "args": {"channels": [8, 16], "hidden": 16},
                    "pretrain": {"epochs": 8, "lr": 0.05}}
    raw["data"] = {"name": "digits", "batch_size": 64}
    raw["latency"] = {"batch_size": 1, "threads": 1, "repeats": 5, "warmup": 1}
    raw["space"]["finetune"]["epochs"] = 3.0
    raw["constraints"] = {"accuracy_drop": 0.5}  # a front even when 3 epochs on 1,617 images recover little
    return parse_space(raw, source="w3-smoke")


def fresh_study(space: SearchSpace, work: Path) -> StudyPaths:
    """The study folder under ``work`` with everything but the cached dense model removed."""
    paths = study_paths(space.study.name, work)
    if paths.folder.is_dir():
        for entry in paths.folder.iterdir():
            if entry.name not in KEEP:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    return paths


def finetune_epochs(space: SearchSpace) -> float:
    """The space's fixed ``finetune.epochs`` (W3 needs one value to give the narrow nets)."""
    param = space.space.finetune.epochs
    if param.searched:
        raise SystemExit(f"{space.source}: space.finetune.epochs must be fixed for W3")
    return float(param.value)


# --------------------------------------------------------------------------- forked jobs

_SHARED: dict[str, Any] = {}  # set before the pool forks; the workers inherit it


def scaled_args(args: dict[str, Any], width: float) -> dict[str, Any]:
    """``small_cnn`` arguments with every channel count and the hidden width scaled by ``width``."""
    return {**args, "channels": [max(1, round(c * width)) for c in args["channels"]],
            "hidden": max(1, round(args["hidden"] * width))}


def narrow_job(width: float) -> dict[str, Any]:
    """Train the ``width``-scaled model from scratch for pretrain + finetune epochs (a worker)."""
    space: SearchSpace = _SHARED["space"]
    data = _SHARED["context"].data
    started = time.perf_counter()
    args = scaled_args(dict(space.model.args), width)
    torch.manual_seed(space.study.seed)
    model = build_model(space.model.name, args, tuple(data.input_shape), data.num_classes)
    epochs = space.model.pretrain.epochs + finetune_epochs(space)
    train(model, bundle_batches(data, space.data.batch_size, seed=space.study.seed), epochs=epochs,
          lr=space.model.pretrain.lr, optimizer=space.model.pretrain.optimizer, seed=space.study.seed)
    return {"width": width, "args": args, "epochs": epochs, "accuracy": evaluate(model, *data.split("val")),
            "seconds": time.perf_counter() - started, "state": model.state_dict()}


def seed_job(policy: dict[str, Any], seed: int) -> dict[str, Any]:
    """Re-run ``policy`` with ``seed``: validation and test accuracy (a worker)."""
    context: TrialContext = _SHARED["context"]
    result = run_trial(Policy.from_dict({**policy, "seed": seed}), context, threads=1)
    return {"seed": seed, "accuracy": result.metrics["accuracy"], "layer_channels": result.layer_channels,
            "test_accuracy": evaluate(result.model, *context.data.split("test"))}


# --------------------------------------------------------------------------- measurement


def front_members(space: SearchSpace, paths: StudyPaths) -> list[dict[str, Any]]:
    """The study's Pareto front (with its isolated batch-1 re-timing): metrics, channels, policy."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{paths.optuna_db}")
    study = optuna.load_study(study_name=space.study.name, storage=storage)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    frame = trials_frame(list(trials.values()), dict(space.objectives))
    members = []
    for number in frame.loc[frame["pareto"].astype(bool), "number"].astype(int):
        trial = trials[number]
        metrics = trial.user_attrs["metrics"]
        members.append({"number": number, "accuracy": metrics["accuracy"], "accuracy_drop": metrics["accuracy_drop"],
                        "macs": metrics["macs"], "latency_ms_trial": metrics["latency_ms"],
                        "latency_ms_isolated": metrics.get("latency_ms_isolated"),
                        "layer_channels": trial.user_attrs["layer_channels"], "policy": trial.user_attrs["policy"]})
    storage.remove_session()
    return sorted(members, key=lambda m: m["accuracy"])


def time_all(dense: torch.nn.Module, models: list[torch.nn.Module], shape: tuple[int, ...],
             settings: Settings) -> dict[int, list[float]]:
    """Per batch size: each model's speedup over ``dense``, all timed interleaved (deployed form)."""
    out = {}
    for batch in BATCHES:
        log(f"timing {len(models)} models against the dense one at batch {batch}")
        timings = time_deployed([dense, *models], shape, batch_size=batch, warmup=settings.warmup,
                                repeats=settings.repeats[batch], threads=1)
        out[batch] = [timings[0].latency_ms / t.latency_ms for t in timings[1:]]
        out[batch].insert(0, timings[0].latency_ms)  # first entry: the dense latency in ms
    return out


def narrow_at(narrow: list[dict[str, Any]], batch: int, speedup: float) -> float | None:
    """Narrow-net validation accuracy at ``speedup``, interpolated in log speedup; ``None`` outside."""
    points = sorted((n["speedup"][str(batch)], n["accuracy"]) for n in narrow)
    for (s0, a0), (s1, a1) in zip(points, points[1:]):
        if s0 <= speedup <= s1:
            t = 0.0 if s1 == s0 else (math.log(speedup) - math.log(s0)) / (math.log(s1) - math.log(s0))
            return a0 + t * (a1 - a0)
    return None


def run(space: SearchSpace, settings: Settings, work: Path) -> dict[str, Any]:
    """Steps 1–5 of the module docstring; returns everything measured."""
    quiet = lambda message: None  # noqa: E731 - the benchmark prints its own progress
    paths = fresh_study(space, work)
    setup = build_setup(space)
    log("dense model (cached in the study folder)")
    dense_ref = prepare_dense(setup, paths, log=log)
    context = trial_context(setup, dense_ref)
    _SHARED.update(space=space, context=context)
    shape = tuple(setup.data.input_shape)
    with multiprocessing.get_context("fork").Pool(settings.concurrency, torch.set_num_threads, (1,)) as pool:
        log(f"training {len(settings.widths)} narrow dense nets from scratch")
        started = time.perf_counter()
        narrow = pool.map(narrow_job, settings.widths, chunksize=1)
        narrow_s = time.perf_counter() - started
        log(f"search: {space.study.trials} trials, concurrency {settings.concurrency}")
        started = time.perf_counter()
        run_search(space, SearchOptions(studies=work, concurrency=settings.concurrency, quiet=True, tracking=False),
                   log=quiet)
        search_s = time.perf_counter() - started
        members = front_members(space, paths)
        dense = context.dense_model().eval()
        rebuilt = [rebuild_architecture(dense, m["layer_channels"], shape, output_layer=setup.output_layer)
                   for m in members]
        narrow_models = []
        for n in narrow:
            model = build_model(space.model.name, n.pop("args"), shape, setup.data.num_classes)
            model.load_state_dict(n.pop("state"))
            n.update(channels={k: int(v.weight.shape[0]) for k, v in prunable_layers(model).items()}, macs=macs(model, shape))
            narrow_models.append(model.eval())
        speedups = time_all(dense, rebuilt + narrow_models, shape, settings)
        for i, item in enumerate(members + narrow):
            item["speedup"] = {str(b): speedups[b][1 + i] for b in BATCHES}
        eligible = [m for m in members if m["accuracy_drop"] <= settings.max_drop + 1e-12]
        chosen = max(eligible, key=lambda m: (m["speedup"]["1"], m["speedup"]["256"]), default=None)
        seeds: list[dict[str, Any]] = []
        if chosen is not None:
            base = int(chosen["policy"].get("seed", 0))
            log(f"re-finetuning trial {chosen['number']} with {settings.seeds} new seeds")
            seeds = pool.starmap(seed_job, [(chosen["policy"], base + 1 + i) for i in range(settings.seeds)])
    return {"dense": {"accuracy": dense_ref.accuracy, "test_accuracy": dense_ref.test_accuracy,
                      "macs": macs(dense, shape), "latency_ms": {str(b): speedups[b][0] for b in BATCHES}},
            "finetune_epochs": finetune_epochs(space), "pretrain_epochs": space.model.pretrain.epochs,
            "front": members, "narrow": narrow, "chosen": chosen, "seeds": seeds,
            "phase_s": {"narrow": narrow_s, "search": search_s}, "max_drop": settings.max_drop}


# --------------------------------------------------------------------------- report


def spread(values: list[float]) -> dict[str, float]:
    """Mean, standard deviation, min and max of ``values``."""
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values), "min": min(values), "max": max(values)}


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The chosen policy's speedups, seed-averaged accuracies, narrow comparison and targets."""
    chosen, dense = result["chosen"], result["dense"]
    if chosen is None:
        return {"chosen": None, "targets_met": {k: False for k in [*TARGETS, "beats_narrow_b1", "beats_narrow_b256"]},
                "why": f"no front member within {result['max_drop'] * 100:g} pt of the dense validation accuracy"}
    val = spread([s["accuracy"] for s in result["seeds"]])
    test = spread([s["test_accuracy"] for s in result["seeds"]])
    out: dict[str, Any] = {"chosen": chosen["number"], "speedup": chosen["speedup"], "val_accuracy_trial": chosen["accuracy"],
                           "val_accuracy": val, "test_accuracy": test,
                           "val_drop_mean": dense["accuracy"] - val["mean"],
                           "test_drop_mean": dense["test_accuracy"] - test["mean"], "narrow_at_speedup": {}}
    met = {f"speedup_b{b}": chosen["speedup"][str(b)] >= TARGETS[f"speedup_b{b}"] for b in BATCHES}
    for b in BATCHES:
        ref = narrow_at(result["narrow"], b, chosen["speedup"][str(b)])
        out["narrow_at_speedup"][str(b)] = ref
        met[f"beats_narrow_b{b}"] = ref is not None and val["mean"] > ref
    out["targets_met"] = met
    return out


def markdown(report: dict[str, Any]) -> str:
    """The headline table, the front and the narrow nets, and notes on misses."""
    r, h, m = report["result"], report["headline"], report["machine"]
    space = report["settings"]["space_used"]
    lines = [f"# W3 — channel pruning of {space['model']['name']} {space['model']['args']} on {space['data']['name']}", "",
             f"Command: `{report['command']}`, {report['date']}, commit `{report['git_commit']}`, "
             f"{report['wall_s'] / 60:.1f} min. Machine: {m['cpu_model']}, {m['cpu_count']} CPUs, torch {m['torch']}.",
             f"Space: `{report['settings']['space']}`; dense validation accuracy {r['dense']['accuracy']:.4f}, "
             f"test {r['dense']['test_accuracy']:.4f}; dense latency (deployed, 1 thread) "
             f"{r['dense']['latency_ms']['1']:.3f} ms at batch 1, {r['dense']['latency_ms']['256']:.1f} ms at batch 256.", ""]
    if h["chosen"] is None:
        lines += [f"**No result**: {h['why']}.", ""]
    else:
        v, t = h["val_accuracy"], h["test_accuracy"]
        yes = {True: "met", False: "**missed**"}
        lines += ["| headline | value | target | |", "|---|---|---|---|",
                  *[f"| speedup at batch {b} (chosen, isolated) | {h['speedup'][str(b)]:.2f}× | ≥ {TARGETS[f'speedup_b{b}']}× "
                    f"| {yes[h['targets_met'][f'speedup_b{b}']]} |" for b in BATCHES],
                  f"| validation accuracy, {len(r['seeds'])} seeds | {v['mean']:.4f} ± {v['std']:.4f} "
                  f"({v['min']:.4f}–{v['max']:.4f}); drop {h['val_drop_mean'] * 100:.2f} pt | drop ≤ {r['max_drop'] * 100:g} pt "
                  f"| {yes[h['val_drop_mean'] <= r['max_drop']]} |",
                  f"| test accuracy, {len(r['seeds'])} seeds | {t['mean']:.4f} ± {t['std']:.4f} ({t['min']:.4f}–{t['max']:.4f}); "
                  f"drop {h['test_drop_mean'] * 100:.2f} pt | (reported) | |",
                  *[f"| narrow dense net at the same speedup, batch {b} | "
                    f"{'outside the narrow range' if h['narrow_at_speedup'][str(b)] is None else format(h['narrow_at_speedup'][str(b)], '.4f')} "
                    f"| below {v['mean']:.4f} | {yes[h['targets_met'][f'beats_narrow_b{b}']]} |" for b in BATCHES], "",
                  f"Chosen: trial {h['chosen']} (validation accuracy in the search {h['val_accuracy_trial']:.4f}), "
                  f"`{Policy.from_dict(r['chosen']['policy']).summary()}`, channels {r['chosen']['layer_channels']}.", ""]
    lines += ["Front (Pareto of validation accuracy vs batch-1 latency; speedups re-timed here, deployed form):", "",
              "| trial | val accuracy | drop (pt) | MACs | speedup b1 | speedup b256 | channels |", "|---:|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {f['number']} | {f['accuracy']:.4f} | {f['accuracy_drop'] * 100:.2f} | {f['macs']:,.0f} | {f['speedup']['1']:.2f}× "
              f"| {f['speedup']['256']:.2f}× | {'/'.join(str(c) for c in f['layer_channels'].values())} |" for f in r["front"]]
    lines += ["", f"Narrow dense nets (trained from scratch, {r['pretrain_epochs'] + r['finetune_epochs']:g} epochs):", "",
              "| width | val accuracy | MACs | speedup b1 | speedup b256 | channels |", "|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {n['width']:g} | {n['accuracy']:.4f} | {n['macs']:,.0f} | {n['speedup']['1']:.2f}× | {n['speedup']['256']:.2f}× "
              f"| {'/'.join(str(c) for c in n['channels'].values())} |" for n in r["narrow"]]
    lines += ["", "Misses:", "", *([f"- {line}" for line in report["misses"]] or ["- none"]), ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], headline_: dict[str, Any], path: Path) -> None:
    """Validation accuracy vs speedup at batch 1 and 256: the front, the narrow nets, the chosen policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, b in zip(axes, BATCHES):
        key = str(b)
        front = sorted(result["front"], key=lambda f: f["speedup"][key])
        ax.plot([f["speedup"][key] for f in front], [f["accuracy"] for f in front], "o", label="search front (val)")
        narrow = result["narrow"]  # in width order
        ax.plot([n["speedup"][key] for n in narrow], [n["accuracy"] for n in narrow], "s--", label="narrow dense (val)")
        ax.plot([1.0], [result["dense"]["accuracy"]], "k^", label="dense")
        ax.axhline(result["dense"]["accuracy"] - result["max_drop"], color="grey", lw=0.8, ls=":",
                   label=f"dense − {result['max_drop'] * 100:g} pt")
        if headline_.get("chosen") is not None:
            v = headline_["val_accuracy"]
            ax.errorbar([headline_["speedup"][key]], [v["mean"]], yerr=[[v["mean"] - v["min"]], [v["max"] - v["mean"]]],
                        fmt="*", ms=12, color="C3", label="chosen, seed mean (min–max)")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}×"))
        ax.xaxis.set_minor_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}×" if round(value * 10) % 2 == 0 else ""))
        ax.set_xlabel(f"speedup over dense at batch {b} (1 thread)")
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def misses(result: dict[str, Any], head: dict[str, Any]) -> list[str]:
    """One line per missed target with the measured numbers that explain it."""
    if head["chosen"] is None:
        return [head["why"]]
    lines = []
    for name, ok in head["targets_met"].items():
        if ok:
            continue
        if name.startswith("speedup_b"):
            b = name.removeprefix("speedup_b")
            best = max((f["speedup"][b] for f in result["front"]), default=math.nan)
            reduction = result["dense"]["macs"] / result["chosen"]["macs"]
            thin = min(result["narrow"], key=lambda n: n["macs"])
            near = min(result["narrow"], key=lambda n: abs(math.log(n["macs"] / result["chosen"]["macs"])))
            lines.append(f"speedup at batch {b}: {head['speedup'][b]:.2f}× < {TARGETS[name]}× for the fastest member within "
                         f"{result['max_drop'] * 100:g} pt, which has {reduction:.2f}× fewer MACs (speedup / MAC reduction "
                         f"{head['speedup'][b] / reduction:.2f}); the fastest front member at any accuracy reaches {best:.2f}×, "
                         f"the narrowest dense net (width {thin['width']:g}, {result['dense']['macs'] / thin['macs']:.1f}× "
                         f"fewer MACs) {thin['speedup'][b]:.2f}×; the narrow net closest in MACs (width {near['width']:g}, "
                         f"{near['macs']:,.0f} vs {result['chosen']['macs']:,.0f} MACs, channels "
                         f"{'/'.join(str(c) for c in near['channels'].values())} vs "
                         f"{'/'.join(str(c) for c in result['chosen']['layer_channels'].values())}) {near['speedup'][b]:.2f}×")
        else:
            b = name.removeprefix("beats_narrow_b")
            ref = head["narrow_at_speedup"][b]
            lines.append(f"vs narrow dense at batch {b}: " + ("the chosen speedup lies outside the narrow nets' range"
                         if ref is None else f"narrow net {ref:.4f} ≥ chosen seed mean {head['val_accuracy']['mean']:.4f}")
                         + f"; the narrow nets spend all {result['pretrain_epochs'] + result['finetune_epochs']:g} epochs in "
                         f"their final shape, a pruned model {result['finetune_epochs']:g}")
    good = [n for n in result["narrow"] if result["dense"]["accuracy"] - n["accuracy"] <= result["max_drop"]]
    if good and not all(head["targets_met"].values()):
        fast = max(good, key=lambda n: n["speedup"]["1"])
        lines.append(f"a narrow net trained from scratch is within {result['max_drop'] * 100:g} pt: width {fast['width']:g} "
                     f"({fast['accuracy']:.4f}) at {fast['speedup']['1']:.2f}× (batch 1) and {fast['speedup']['256']:.2f}× "
                     "(batch 256)")
    if head["val_drop_mean"] > result["max_drop"]:
        lines.append(f"the chosen policy's seed-mean validation drop is {head['val_drop_mean'] * 100:.2f} pt "
                     f"(> {result['max_drop'] * 100:g} pt): "
                     f"its search trial ({head['val_accuracy_trial']:.4f}) was luckier than the seeds")
    return lines


def main(argv: list[str] | None = None) -> int:
    """CLI entry: ``python benchmarks/channels.py [--smoke] [--out DIR] [--work DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="digits, small_cnn 8/16, 4 trials (used by the tests)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--work", type=Path, default=None,
                        help="studies folder (default benchmarks/.work/w3; the cached dense model is kept)")
    args = parser.parse_args(argv)
    space, settings = (smoke_space(), SMOKE) if args.smoke else (load_space(SPACE), FULL)
    work = args.work or (args.out / "w3-work" if args.smoke else REPO / "benchmarks" / ".work" / "w3")
    started = time.perf_counter()
    result = run(space, settings, work)
    head = headline(result)
    report = {"command": "python " + " ".join(["benchmarks/channels.py", *(sys.argv[1:] if argv is None else argv)]),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "git_commit": git_commit(),
              "machine": machine(), "wall_s": time.perf_counter() - started,
              "settings": {"space": str(SPACE.relative_to(REPO)), "smoke": args.smoke,
                           "targets": TARGETS, "batches": list(BATCHES), **asdict(settings),
                           "space_used": space.to_yaml_dict()},
              "result": result, "headline": head, "misses": misses(result, head)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "channels.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / "channels.md").write_text(markdown(report))
    plot(result, head, args.out / "channels.png")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
