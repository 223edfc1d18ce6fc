"""Latency-aware channel counts against a uniform cut at the same MACs.

``engine.py`` removes one uniform fraction of channels from every layer and finds that a
ratio speedup / MAC reduction of 0.7 is often below its *proportional estimate* (every ms
above the 1-channel floor falling with MACs). The estimate is not a limit: layers differ in
time per MAC, so cutting where time per MAC is highest should do better. This benchmark
measures how much better, the way a search with a latency objective would find it:

1. **Candidates**: every combination of per-layer kept channels on a grid (layers of at
   least 8 channels keep a multiple of 8, as ``round_to: 8``; narrower layers any count;
   the output layer all its units) whose MACs removed are within ±5 points of the target
   (50% and 75%), for ``small_cnn`` and ``lenet5`` on (1, 28, 28) input.
2. **Selection**, per runtime (torch deployed form, onnxruntime on the exported ONNX) and
   batch size (1, 256): each candidate timed briefly against the dense model
   (:func:`autoprune.measure.time_deployed`); the best ratio is kept.
3. **Re-timing**: the selected counts and the uniform ``round_to: 8`` cut of ``engine.py``
   timed again against the dense model in ``ROUNDS`` interleaved rounds (independent of the
   selection's timings, so the winner's luck in step 2 does not carry over); medians reported.

Usage::

    python benchmarks/allocations.py [--smoke] [--out benchmarks/results]

writes ``allocations.json`` and ``allocations.md``. ``--smoke``: lenet5 at 50% only, a few
candidates, tiny repeats.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

torch.set_num_threads(1)

from autoprune.measure import macs, time_deployed  # noqa: E402
from autoprune.models import output_layer_name, prunable_layers  # noqa: E402

from _common import git_commit, machine  # noqa: E402  (benchmarks/_common.py)
from _engine_report import ALIGN, BATCH_SIZES, TARGET_RATIO  # noqa: E402
from engine import INPUT_SHAPE, aligned_pruned, dense_model, log, pruned_to  # noqa: E402

RUNTIMES = ("torch", "onnxruntime")
WINDOW = 0.05
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Settings:
    """How much to measure: the full run or the ``--smoke`` version."""

    models: tuple[str, ...]
    targets: tuple[float, ...]
    max_candidates: int
    exhaustive: bool
    select_repeats: Mapping[int, int]
    rounds: int
    repeats: Mapping[int, int]


FULL = Settings(models=("small_cnn", "lenet5"), targets=(0.5, 0.75), max_candidates=40, exhaustive=True,
                select_repeats={1: 40, 256: 3}, rounds=3, repeats={1: 200, 256: 15})
SMOKE = Settings(models=("lenet5",), targets=(0.5,), max_candidates=3, exhaustive=False, select_repeats={1: 3, 256: 1}, rounds=1,
                 repeats={1: 3, 256: 1})


def count_grid(channels: int) -> list[int]:
    """Kept-channel options of a layer: multiples of ``ALIGN`` (8, 16, ..) or, below ``ALIGN``, 1..C.

    A layer whose size is not a multiple of ``ALIGN`` may also keep all its channels.
    """
    if channels < ALIGN:
        return list(range(1, channels + 1))
    return sorted(set(range(ALIGN, channels + 1, ALIGN)) | {channels})


def candidates(dense: nn.Module, target: float, limit: int,
               exhaustive: bool = True) -> list[tuple[dict[str, int], float, nn.Module]]:
    """Per-layer counts with MACs removed within ``WINDOW`` of ``target``: ``(counts, removed, model)``.

    More than ``limit`` are thinned to ``limit`` spread evenly over the MACs removed (the
    grid is deterministic, so is the choice). ``exhaustive=False`` stops at the first
    ``limit`` found (``--smoke``).
    """
    full = macs(dense, INPUT_SHAPE)
    output = output_layer_name(dense)
    layers = {name: int(layer.weight.shape[0]) for name, layer in prunable_layers(dense).items() if name != output}
    found = []
    for combo in itertools.product(*(count_grid(c) for c in layers.values())):
        counts = dict(zip(layers, combo))
        model = pruned_to(dense, counts)
        removed = 1.0 - macs(model, INPUT_SHAPE) / full
        if abs(removed - target) <= WINDOW:
            found.append((counts, removed, model))
            if not exhaustive and len(found) >= limit:
                break
    found.sort(key=lambda item: item[1])
    if len(found) > limit:
        step = len(found) / limit
        found = [found[int(i * step)] for i in range(limit)]
    return found


def ratio(dense: nn.Module, pruned: nn.Module, reduction: float, batch: int, repeats: int, runtime: str) -> dict:
    """One interleaved dense/pruned timing: speedup, ratio and both latencies."""
    d, p = time_deployed([dense, pruned], INPUT_SHAPE, batch_size=batch, warmup=3, repeats=repeats, threads=1,
                         runtime=runtime)
    speedup = d.latency_ms / p.latency_ms
    return {"speedup": speedup, "ratio": speedup / reduction, "dense_ms": d.latency_ms, "pruned_ms": p.latency_ms}


def select(dense: nn.Module, found: Sequence[tuple[dict[str, int], float, nn.Module]], batch: int, runtime: str,
           repeats: int) -> tuple[dict, nn.Module]:
    """The candidate with the best ratio in one short timing each (the selection step), and its model."""
    best: tuple[dict, nn.Module] | None = None
    for counts, removed, model in found:
        timing = ratio(dense, model, 1.0 / (1.0 - removed), batch, repeats, runtime)
        if best is None or timing["ratio"] > best[0]["selection_ratio"]:
            best = ({"counts": counts, "macs_removed": removed, "selection_ratio": timing["ratio"]}, model)
    assert best is not None
    return best


def retime(dense: nn.Module, rows: Mapping[str, tuple[nn.Module, float]], batch: int, runtime: str,
           settings: Settings) -> dict[str, dict]:
    """Median over ``settings.rounds`` interleaved rounds of each row's ratio against ``dense``."""
    per_row: dict[str, list[dict]] = {key: [] for key in rows}
    for _ in range(settings.rounds):
        for key, (model, removed) in rows.items():
            per_row[key].append(ratio(dense, model, 1.0 / (1.0 - removed), batch, settings.repeats[batch], runtime))
    return {key: {"ratio": statistics.median(t["ratio"] for t in timings),
                  "speedup": statistics.median(t["speedup"] for t in timings),
                  "ratios": [t["ratio"] for t in timings]} for key, timings in per_row.items()}


def benchmark(settings: Settings) -> list[dict]:
    """Every (model, target, runtime, batch) case: the uniform round_to cut and the selected counts."""
    cases = []
    for name in settings.models:
        dense = dense_model(name)
        full = macs(dense, INPUT_SHAPE)
        for target in settings.targets:
            found = candidates(dense, target, settings.max_candidates, settings.exhaustive)
            uniform, _ = aligned_pruned(dense, target)
            uniform_removed = 1.0 - macs(uniform, INPUT_SHAPE) / full
            output = output_layer_name(dense)
            uniform_counts = {n: int(m.weight.shape[0]) for n, m in prunable_layers(uniform).items() if n != output}
            for runtime, batch in itertools.product(RUNTIMES, BATCH_SIZES):
                log(f"{name} {target:.0%} {runtime} b{batch}: selecting among {len(found)} candidates")
                chosen, chosen_model = select(dense, found, batch, runtime, settings.select_repeats[batch])
                rows = {"uniform": (uniform, uniform_removed), "selected": (chosen_model, chosen["macs_removed"])}
                timed = retime(dense, rows, batch, runtime, settings)
                cases.append({
                    "model": name, "target": target, "runtime": runtime, "batch": batch, "candidates": len(found),
                    "uniform": {"counts": uniform_counts, "macs_removed": uniform_removed, **timed["uniform"]},
                    "selected": {**chosen, **timed["selected"]},
                })
    return cases


def markdown(report: Mapping) -> str:
    """The results table of ``report`` as markdown."""
    m, s = report["machine"], report["settings"]
    rows = ["| model | MACs target | runtime | batch | candidates | uniform round_to 8: counts, MACs removed, ratio "
            "| selected counts | MACs removed | ratio (selection → re-timed) | met (≥ 0.7)? |",
            "|---|---:|---|---:|---:|---|---|---:|---|---|"]
    met = 0
    for case in report["cases"]:
        u, c = case["uniform"], case["selected"]
        ok = c["ratio"] >= TARGET_RATIO or u["ratio"] >= TARGET_RATIO
        met += ok
        rows.append(
            f"| {case['model']} | {case['target']:.0%} | {case['runtime']} | {case['batch']} | {case['candidates']} | "
            f"{'/'.join(map(str, u['counts'].values()))}, {u['macs_removed']:.1%}, {u['ratio']:.3f} | "
            f"{'/'.join(map(str, c['counts'].values()))} | {c['macs_removed']:.1%} | "
            f"{c['selection_ratio']:.3f} → {c['ratio']:.3f} | {'yes' if ok else 'no'} |")
    return "\n".join([
        "# Latency-aware channel counts vs a uniform cut",
        "",
        f"Command: `{report['command']}` (cwd `{report['cwd']}`), {report['date']}, commit `{report['git_commit']}`.",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} CPUs, {m['platform']}, torch {m['torch']}, 1 thread. "
        f"Took {report['seconds']:.0f} s.",
        "",
        f"**Verdict:** ratio ≥ {TARGET_RATIO} in {met} of {len(report['cases'])} (model, target, runtime, batch) "
        "cases with the uniform `round_to: 8` cut or the selected counts.",
        "",
        f"Candidates: per-layer kept channels on the `round_to: {ALIGN}` grid (narrower layers any count, output "
        f"layer whole) with MACs removed within ±{WINDOW:.0%} of the target, thinned to at most "
        f"{s['max_candidates']} spread over the MACs removed. Selection: one timing per candidate "
        f"({s['select_repeats']['1']} runs at batch 1, {s['select_repeats']['256']} at batch 256) in that runtime "
        f"and batch. Re-timed: {s['rounds']} interleaved rounds of {s['repeats']['1']} / {s['repeats']['256']} "
        "runs against the dense model, median of the rounds' ratios; the selection's own timing is shown before "
        "the arrow (it favours the winner). ratio = speedup / MAC reduction. Models with seeded random weights "
        "(latency does not depend on them).",
        "",
        *rows,
        "",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: ``python benchmarks/allocations.py [--smoke] [--out DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a short run (lenet5 at 50%%, 3 candidates)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results",
                        help="folder for allocations.json and allocations.md (default: benchmarks/results)")
    args = parser.parse_args(argv)
    settings = SMOKE if args.smoke else FULL
    started = time.perf_counter()
    report = {
        "command": shlex.join(["python", *(sys.argv if argv is None else ["allocations.py", *argv])]),
        "cwd": os.getcwd(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(), "machine": machine(),
        "settings": {**asdict(settings), "select_repeats": {str(k): v for k, v in settings.select_repeats.items()},
                     "repeats": {str(k): v for k, v in settings.repeats.items()}, "window": WINDOW},
    }
    report["cases"] = benchmark(settings)
    report["seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "allocations.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "allocations.md").write_text(markdown(report))
    print((args.out / "allocations.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
