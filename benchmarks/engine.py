"""What the pruning engine buys, measured: speedup next to MAC reduction, and scorer cost.

Channel removal shrinks every kernel, so a model with R× fewer MACs should run close to R×
faster; unstructured masks leave the dense kernels multiplying zeros, so they should not
run faster at all. This benchmark checks both on the built-in ``small_cnn`` and ``lenet5``
for Fashion-MNIST-shaped input ``(1, 28, 28)``, 10 classes:

* **channel**: one uniform fraction of output channels is removed from every prunable
  layer except the output layer (kept channels ranked by the ``l2`` scorer, removed with
  :func:`autoprune.prune.remove_channels`). The fraction is found by bisection on
  :func:`autoprune.measure.macs` so that about 50% and about 75% of the MACs go.
* **unstructured**: 90% of every layer's weights masked by ``magnitude`` and baked in with
  :func:`autoprune.prune.remove_masks`. Counted MACs do not change (dense kernels); the
  table compares the speedup with the reduction of *non-zero* MACs, what a sparse kernel
  could at best skip.
* **channel, round_to 8**: the same targets with every kept count a multiple of 8, as a
  policy with ``round_to: 8`` gives (:func:`autoprune.allocation.kept_channels`).
* **floor**: every layer cut to one channel. Its latency is what is left when the
  arithmetic is nearly gone (per-layer framework overhead), the part channel removal cannot
  shrink; it says which targets are within reach at all (``_engine_report.py``).

Each dense/pruned pair is timed by :func:`autoprune.measure.measure_latency_pair` (runs
interleaved, median of ``repeats``, one thread) at batch 1 and batch 256, in both runtimes a
space can ask for (``latency.runtime``): the deployed torch form and the exported ONNX file
in onnxruntime (what ``autoprune export`` writes as ``model.onnx``); the whole set of
pairs is repeated for several rounds and the median of the rounds' speedups is reported
with its min–max spread. ratio = speedup / MAC reduction; the target is ratio ≥ 0.7.
Where the target is missed, a :mod:`torch.profiler` split of each forward into
conv/matmul ops and other ops (pooling, batch norm, activations) says why.

Weights are random (seeded) and never trained: latency does not depend on weight values,
and the ``l2``/``magnitude`` rankings only decide *which* channels go, not how many.

Scorer cost: median wall time of ``channel_scores`` and ``weight_scores`` of every scorer
in :data:`autoprune.scorers.SCORERS` on ``small_cnn`` with 4 calibration batches of 128
Fashion-MNIST training images (one untimed call first).

Usage::

    python benchmarks/engine.py [--smoke] [--out benchmarks/results]

writes ``engine.json`` (every number, command, date, machine) and ``engine.md`` (tables).
``--smoke`` runs a few-second version (one model, one round, tiny repeats, two scorers).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import Tensor, nn

torch.set_num_threads(1)

from autoprune.allocation import channels_to_keep, kept_channels, masks_from_scores  # noqa: E402
from autoprune.data import load_data  # noqa: E402
from autoprune.measure import PRUNABLE_TYPES, deployed_forms, macs, time_deployed  # noqa: E402
from autoprune.models import build_model, example_input, output_layer_name, prunable_layers  # noqa: E402
from autoprune.prune import apply_masks, remove_channels, remove_masks  # noqa: E402
from autoprune.scorers import SCORERS, make_scorer  # noqa: E402
from _common import git_commit, machine  # noqa: E402  (benchmarks/_common.py)
from _engine_report import ALIGN, BATCH_SIZES, TARGET_RATIO, add_reach, markdown, misses  # noqa: E402

INPUT_SHAPE = (1, 28, 28)
NUM_CLASSES = 10
CHANNEL_TARGETS = (0.5, 0.75)
UNSTRUCTURED_SPARSITY = 0.9
SEED = 0
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Settings:
    """How much to measure: the full run, or the few-second ``--smoke`` version."""

    models: tuple[str, ...]
    rounds: int
    repeats: Mapping[int, int]
    warmup: int
    scorers: tuple[str, ...]
    scorer_calls: int
    calibration: tuple[int, int]
    profile_runs: Mapping[int, int]


FULL = Settings(
    models=("small_cnn", "lenet5"), rounds=3, repeats={1: 300, 256: 30}, warmup=10,
    scorers=tuple(SCORERS), scorer_calls=5, calibration=(4, 128), profile_runs={1: 100, 256: 5},
)
SMOKE = Settings(
    models=("lenet5",), rounds=1, repeats={1: 5, 256: 2}, warmup=1,
    scorers=("l2", "taylor"), scorer_calls=1, calibration=(2, 32), profile_runs={1: 2, 256: 1},
)


def log(message: str) -> None:
    """Progress on stderr, so a background run's log shows where it is."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- models


def dense_model(name: str) -> nn.Module:
    """The built-in ``name`` for Fashion-MNIST shapes, seeded random weights, eval mode."""
    torch.manual_seed(SEED)
    return build_model(name, None, INPUT_SHAPE, NUM_CLASSES).eval()


def nonzero_macs(model: nn.Module) -> int:
    """MACs of one sample counting only non-zero weights (what a sparse kernel would do).

    Per conv/linear layer: non-zero weights × output positions per channel. Equals
    :func:`autoprune.measure.macs` for a model without zero weights.
    """
    total = 0

    def count(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        positions = output[0].numel() // output.shape[1] if output.dim() > 2 else 1
        total += int(torch.count_nonzero(module.weight)) * positions

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, PRUNABLE_TYPES)]
    try:
        with torch.no_grad():
            model(example_input(INPUT_SHAPE))
    finally:
        for handle in handles:
            handle.remove()
    return total


def channel_pruned(dense: nn.Module, fraction: float) -> nn.Module:
    """A copy of ``dense`` with ``fraction`` of each non-output layer's channels removed (``l2``)."""
    model = copy.deepcopy(dense)
    layers = prunable_layers(model)
    output = output_layer_name(model)
    inner = {name: layer for name, layer in layers.items() if name != output}
    scores = make_scorer("l2").channel_scores(model, inner)
    keep = channels_to_keep(scores, dict.fromkeys(inner, fraction))
    remove_channels(model, example_input(INPUT_SHAPE), keep, protected={output})
    return model.eval()


def fraction_for(dense: nn.Module, target: float, steps: int = 20) -> float:
    """The uniform channel fraction whose MACs removed is closest to ``target`` (bisection).

    MACs fall monotonically (in steps, channels are whole) as the fraction grows; the
    bisection brackets the step that crosses ``target`` and the closer side wins.
    """
    full = macs(dense, INPUT_SHAPE)

    def removed(fraction: float) -> float:
        return 1.0 - macs(channel_pruned(dense, fraction), INPUT_SHAPE) / full

    low, high = 0.0, 1.0
    for _ in range(steps):
        middle = (low + high) / 2
        if removed(middle) < target:
            low = middle
        else:
            high = middle
    return min((low, high), key=lambda f: abs(removed(f) - target))


def aligned_counts(dense: nn.Module, fraction: float) -> dict[str, int]:
    """Kept channels per non-output layer for ``fraction`` removed under a policy's ``round_to: ALIGN``.

    :func:`autoprune.allocation.kept_channels`, what a trial uses: a layer with at least
    ``ALIGN`` channels keeps a positive multiple of ``ALIGN``; a narrower one (LeNet-5's
    6-channel conv) keeps its unrounded count, at least one.
    """
    output = output_layer_name(dense)
    return {name: kept_channels(int(layer.weight.shape[0]), fraction, round_to=ALIGN)
            for name, layer in prunable_layers(dense).items() if name != output}


def aligned_pruned(dense: nn.Module, target: float) -> tuple[nn.Module, float]:
    """The channel-pruned copy whose kept channels are multiples of ``ALIGN``, MACs closest to ``target``.

    Scans uniform fractions in steps of 0.005 (counts move in steps of ``ALIGN``, so
    bisection does not apply); returns the model and its fraction.
    """
    full = macs(dense, INPUT_SHAPE)
    best: tuple[float, float, dict[str, int]] | None = None
    seen = set()
    for step in range(0, 200):
        counts = aligned_counts(dense, step * 0.005)
        key = tuple(sorted(counts.items()))
        if key in seen:
            continue
        seen.add(key)
        removed = 1.0 - macs(pruned_to(dense, counts), INPUT_SHAPE) / full
        if best is None or abs(removed - target) < abs(best[0] - target):
            best = (removed, step * 0.005, counts)
    assert best is not None
    return pruned_to(dense, best[2]), best[1]


def pruned_to(dense: nn.Module, counts: dict[str, int]) -> nn.Module:
    """A copy of ``dense`` with each layer of ``counts`` cut to that many channels (kept by ``l2``)."""
    model = copy.deepcopy(dense)
    layers = prunable_layers(model)
    scores = make_scorer("l2").channel_scores(model, {n: layers[n] for n in counts})
    sparsity = {n: 1.0 - counts[n] / int(layers[n].weight.shape[0]) for n in counts}
    keep = channels_to_keep(scores, sparsity)
    remove_channels(model, example_input(INPUT_SHAPE), keep, protected={output_layer_name(model)})
    return model.eval()


def unstructured_pruned(dense: nn.Module, sparsity: float) -> nn.Module:
    """A copy of ``dense`` with ``sparsity`` of every layer's weights masked by magnitude, baked."""
    model = copy.deepcopy(dense)
    layers = prunable_layers(model)
    scores = make_scorer("magnitude").weight_scores(model, layers)
    apply_masks(layers, masks_from_scores(scores, dict.fromkeys(layers, sparsity)))
    remove_masks(layers)
    return model.eval()


def variants(dense: nn.Module) -> dict[str, tuple[nn.Module, dict]]:
    """The pruned models of one dense model, by key, each with its description."""
    out: dict[str, tuple[nn.Module, dict]] = {}
    for target in CHANNEL_TARGETS:
        fraction = fraction_for(dense, target)
        info = {"pruning": "channel", "target_macs_removed": target, "channel_fraction": fraction}
        out[f"channel_{round(target * 100)}"] = (channel_pruned(dense, fraction), info)
    for target in CHANNEL_TARGETS:
        model, fraction = aligned_pruned(dense, target)
        info = {"pruning": "channel", "target_macs_removed": target, "channel_fraction": fraction, "aligned": ALIGN}
        out[f"channel_{round(target * 100)}_x{ALIGN}"] = (model, info)
    info = {"pruning": "unstructured", "sparsity": UNSTRUCTURED_SPARSITY, "scorer": "magnitude"}
    out[f"unstructured_{round(UNSTRUCTURED_SPARSITY * 100)}"] = (
        unstructured_pruned(dense, UNSTRUCTURED_SPARSITY), info)
    out["floor"] = (channel_pruned(dense, 1.0), {"pruning": "channel", "channel_fraction": 1.0})
    return out


def describe(dense: nn.Module, pruned: nn.Module, info: dict) -> dict:
    """MAC counts and reduction of ``pruned`` against ``dense``, plus its layer widths.

    ``mac_reduction`` divides non-zero MACs (= counted MACs for channel pruning), so for
    masks it is the reduction a sparse kernel could exploit, not what dense kernels do.
    """
    dense_nz, pruned_nz = nonzero_macs(dense), nonzero_macs(pruned)
    return {
        **info,
        "channels": {name: int(layer.weight.shape[0]) for name, layer in prunable_layers(pruned).items()},
        "macs": macs(pruned, INPUT_SHAPE),
        "nonzero_macs": pruned_nz,
        "macs_removed": 1.0 - pruned_nz / dense_nz,
        "mac_reduction": dense_nz / pruned_nz,
    }


# --------------------------------------------------------------------------- timing


def deployed_pair(dense: nn.Module, pruned: nn.Module, batch: int, settings: Settings,
                  runtime: str = "torch") -> dict:
    """Dense and pruned latency as the product times them (:func:`autoprune.measure.time_deployed`).

    With ``runtime="torch"`` both models run in their deployed torch form (eval, batch norm
    folded, the faster memory format); with ``"onnxruntime"`` as the exported ONNX file in
    onnxruntime (``latency.runtime: onnxruntime``). Interleaved, one thread; the chosen
    layouts are recorded.
    """
    d, p = time_deployed([dense, pruned], INPUT_SHAPE, batch_size=batch, warmup=settings.warmup,
                         repeats=settings.repeats[batch], threads=1, runtime=runtime)
    return {"dense_latency_ms": d.latency_ms, "latency_ms": p.latency_ms, "speedup": d.latency_ms / p.latency_ms,
            "dense_layout": d.layout, "layout": p.layout}


def trained_form_pair(dense: nn.Module, pruned: nn.Module, batch: int, settings: Settings) -> dict:
    """Dense and pruned latency in the training-time form (the previous way of timing).

    The modules as they are (eval mode, batch norm unfolded, contiguous NCHW input) under
    :func:`torch.inference_mode`, runs interleaved, one thread: the "before" of this
    benchmark's deployed timing, measured in the same run.
    """
    x = torch.randn(batch, *INPUT_SHAPE)
    times: list[list[float]] = [[], []]
    with torch.inference_mode():
        for model in (dense, pruned):
            for _ in range(settings.warmup):
                model(x)
        for repeat in range(settings.repeats[batch]):
            for index in ((0, 1) if repeat % 2 == 0 else (1, 0)):
                start = time.perf_counter()
                (dense, pruned)[index](x)
                times[index].append((time.perf_counter() - start) * 1000.0)
    dense_ms, pruned_ms = (statistics.median(t) for t in times)
    return {"dense_latency_ms": dense_ms, "latency_ms": pruned_ms, "speedup": dense_ms / pruned_ms}


def time_pairs(
    models: Mapping[str, tuple[nn.Module, Mapping[str, nn.Module]]], settings: Settings
) -> dict[str, dict[str, dict[int, list[dict]]]]:
    """Per model, variant and batch size: one timing per round, deployed and training form.

    A round times every (dense, variant) pair once at every batch size, deployed
    (:func:`deployed_pair`) then in the training form (:func:`trained_form_pair`), so slow
    phases of the machine are spread over all variants instead of hitting one.
    """
    rounds: dict[str, dict[str, dict[int, list[dict]]]] = {
        model: {key: {b: [] for b in BATCH_SIZES} for key in pruned} for model, (_, pruned) in models.items()
    }
    for index in range(settings.rounds):
        log(f"timing round {index + 1}/{settings.rounds}")
        for batch in BATCH_SIZES:
            for model, (dense, pruned) in models.items():
                for key, model_pruned in pruned.items():
                    timing = deployed_pair(dense, model_pruned, batch, settings)
                    timing["trained_form"] = trained_form_pair(dense, model_pruned, batch, settings)
                    timing["onnxruntime"] = deployed_pair(dense, model_pruned, batch, settings, "onnxruntime")
                    rounds[model][key][batch].append(timing)
    return rounds


def summarize(per_round: Sequence[Mapping], mac_reduction: float) -> dict:
    """Median over rounds of the speedup and latencies, the speedup's spread, the ratio.

    Also the training-form speedup and ratio (median over rounds), the layouts the deployed
    timing chose (most frequent over rounds) and the same statistics in onnxruntime.
    """
    speedups = [r["speedup"] for r in per_round]
    speedup = statistics.median(speedups)
    trained = statistics.median(r["trained_form"]["speedup"] for r in per_round)
    onnx = [r["onnxruntime"] for r in per_round]
    onnx_speedups = [r["speedup"] for r in onnx]
    return {
        "speedup": speedup,
        "speedup_min": min(speedups),
        "speedup_max": max(speedups),
        "ratio": speedup / mac_reduction,
        "dense_latency_ms": statistics.median(r["dense_latency_ms"] for r in per_round),
        "latency_ms": statistics.median(r["latency_ms"] for r in per_round),
        "dense_layout": statistics.mode(r["dense_layout"] for r in per_round),
        "layout": statistics.mode(r["layout"] for r in per_round),
        "trained_form_speedup": trained,
        "trained_form_ratio": trained / mac_reduction,
        "trained_form_dense_latency_ms": statistics.median(r["trained_form"]["dense_latency_ms"] for r in per_round),
        "trained_form_latency_ms": statistics.median(r["trained_form"]["latency_ms"] for r in per_round),
        "onnxruntime": {
            "speedup": statistics.median(onnx_speedups),
            "speedup_min": min(onnx_speedups),
            "speedup_max": max(onnx_speedups),
            "ratio": statistics.median(onnx_speedups) / mac_reduction,
            "dense_latency_ms": statistics.median(r["dense_latency_ms"] for r in onnx),
            "latency_ms": statistics.median(r["latency_ms"] for r in onnx),
        },
        "rounds": list(per_round),
    }


def _is_mac_op(key: str) -> bool:
    """Whether profiler op ``key`` is a conv or matmul kernel (the work MACs count)."""
    return "conv" in key or key in {"aten::addmm", "aten::mm", "aten::matmul", "aten::bmm", "aten::linear"}


def op_profile(model: nn.Module, batch: int, runs: int, layout: str) -> dict:
    """Self CPU ms per forward of ``model``'s deployed form in ``layout``, by op kind.

    The form is :func:`autoprune.measure.deployed_forms`' candidate with that memory format
    (the one the timing chose), profiled with :mod:`torch.profiler` (one thread, inference
    mode, two untimed forwards first) and split into conv/matmul ops and all other ops. The
    profiler adds its own per-op cost, so these explain where time goes; the speedups come
    from :func:`time_pairs`. ``top_other`` names the three costliest non-MAC ops (pooling,
    activations, layout copies, ...).
    """
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        forms = {name: (form, x) for name, form, x in deployed_forms(model, torch.randn(batch, *INPUT_SHAPE))}
    form, x = forms[layout]
    with torch.inference_mode():
        for _ in range(2):
            form(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                form(x)
    per_op = {event.key: event.self_cpu_time_total / 1000.0 / runs for event in prof.key_averages()}
    other = sorted(((k, v) for k, v in per_op.items() if not _is_mac_op(k)), key=lambda kv: -kv[1])
    return {
        "layout": layout,
        "batch": batch,
        "mac_ops_ms": sum(v for k, v in per_op.items() if _is_mac_op(k)),
        "other_ops_ms": sum(v for _, v in other),
        "top_other": [[k, v] for k, v in other[:3]],
    }


def profile_models(
    models: Mapping[str, tuple[nn.Module, Mapping[str, nn.Module]]], results: Mapping[str, dict], settings: Settings
) -> dict[str, dict[str, dict[str, dict]]]:
    """Per model: ``op_profile`` of the dense model and each channel variant at each batch size.

    Each is profiled in the layout its deployed timing chose (``results[...]["latency"]``).
    """
    log("profiling where the time goes")
    out: dict[str, dict[str, dict[str, dict]]] = {}
    for name, (dense, pruned) in models.items():
        variants_ = results[name]["variants"]
        first = next(iter(variants_.values()))["latency"]
        out[name] = {"dense": {str(b): op_profile(dense, b, settings.profile_runs[b], first[str(b)]["dense_layout"])
                               for b in BATCH_SIZES}}
        for key, model in pruned.items():
            if key.startswith("channel_"):
                out[name][key] = {str(b): op_profile(model, b, settings.profile_runs[b],
                                                     variants_[key]["latency"][str(b)]["layout"]) for b in BATCH_SIZES}
    return out


def benchmark_models(settings: Settings) -> dict[str, dict]:
    """Build, prune, describe and time every model of ``settings``."""
    built: dict[str, tuple[nn.Module, dict[str, nn.Module]]] = {}
    results: dict[str, dict] = {}
    for name in settings.models:
        log(f"{name}: searching channel fractions")
        dense = dense_model(name)
        pruned = variants(dense)
        built[name] = (dense, {key: model for key, (model, _) in pruned.items()})
        results[name] = {
            "dense_macs": macs(dense, INPUT_SHAPE),
            "dense_channels": {n: int(m.weight.shape[0]) for n, m in prunable_layers(dense).items()},
            "variants": {key: describe(dense, model, info) for key, (model, info) in pruned.items()},
        }
    timings = time_pairs(built, settings)
    for name, result in results.items():
        for key, variant in result["variants"].items():
            variant["latency"] = {
                str(batch): summarize(timings[name][key][batch], variant["mac_reduction"])
                for batch in BATCH_SIZES
            }
    add_reach(results)
    profiles = profile_models(built, results, settings)
    for name, result in results.items():
        result["profile"] = profiles[name]
    return results


def time_calls(call: Callable[[], object], calls: int) -> dict[str, float]:
    """Median and min/max wall ms of ``calls`` runs of ``call`` after one untimed run."""
    call()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "calls": calls}


def benchmark_scorers(settings: Settings) -> dict[str, dict]:
    """Wall time of ``channel_scores`` and ``weight_scores`` of each scorer on ``small_cnn``."""
    log("scorers: loading Fashion-MNIST")
    n_batches, batch_size = settings.calibration
    calibration = load_data("fashion_mnist", seed=SEED).calibration_batches(n_batches, batch_size, seed=SEED)
    model = dense_model("small_cnn")
    layers = prunable_layers(model)
    results = {}
    for name in settings.scorers:
        log(f"scorers: {name}")
        scorer = make_scorer(name)
        results[name] = {
            "needs_data": scorer.needs_data,
            "channel_scores": time_calls(lambda: scorer.channel_scores(model, layers, calibration),
                                         settings.scorer_calls),
            "weight_scores": time_calls(lambda: scorer.weight_scores(model, layers, calibration),
                                        settings.scorer_calls),
        }
    return results


def run(settings: Settings, out: Path, argv: Sequence[str]) -> dict:
    """Run the benchmark, write ``engine.json`` and ``engine.md`` into ``out``, return the report."""
    started = time.perf_counter()
    report: dict = {
        "command": shlex.join(["python", *argv]),
        "cwd": os.getcwd(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "machine": machine(),
        "loadavg_start": [round(v, 2) for v in os.getloadavg()],
        "settings": {**asdict(settings), "repeats": {str(b): r for b, r in settings.repeats.items()},
                     "profile_runs": {str(b): r for b, r in settings.profile_runs.items()},
                     "batch_sizes": list(BATCH_SIZES), "target_ratio": TARGET_RATIO, "round_to": ALIGN,
                     "seed": SEED},
        "weights": "random init (torch.manual_seed(0)), not trained: latency does not depend on weight values",
    }
    report["models"] = benchmark_models(settings)
    report["scorers"] = benchmark_scorers(settings)
    report["misses"] = misses(report["models"])
    report["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    report["seconds"] = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    (out / "engine.json").write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    (out / "engine.md").write_text(markdown(report))
    log(f"wrote {out / 'engine.json'} and {out / 'engine.md'} in {report['seconds']:.0f} s")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: ``python benchmarks/engine.py [--smoke] [--out DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few-second run (one model, tiny repeats)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results",
                        help="folder for engine.json and engine.md (default: benchmarks/results)")
    args = parser.parse_args(argv)
    report = run(SMOKE if args.smoke else FULL, args.out, sys.argv if argv is None else ["engine.py", *argv])
    print((args.out / "engine.md").read_text())
    return 0 if all(math.isfinite(v["latency"][str(b)]["speedup"])
                    for r in report["models"].values() for v in r["variants"].values() for b in BATCH_SIZES) else 1


if __name__ == "__main__":
    sys.exit(main())
