"""The report of ``engine.py``: verdicts, the reach of each target, causes of misses, markdown.

Split from ``engine.py`` (which builds, prunes, times and profiles the models). The
constants here are what the report judges against and are shared with ``engine.py``.

**Reach.** Channel removal cannot take a model below its *floor*, the latency of the same
architecture cut to one channel per layer (measured in the same rounds): the per-op cost
that stays when the arithmetic is nearly gone. So a case whose target speedup
(``TARGET_RATIO`` × MAC reduction) exceeds the floor's speedup cannot reach the target in
that runtime with any channel counts (assuming no layer runs slower with fewer channels).
The *proportional estimate* is what a uniform cut can expect: if every millisecond above
the floor fell in proportion to MACs, the speedup would be ``1 / (φ + (1 − φ) / R)`` for
floor share φ and MAC reduction R. It is not a limit: an allocation that removes the
channels whose time per MAC is highest (a latency-aware per-layer choice, which the search
makes when latency is an objective) can beat it. A case whose estimate is below the target
needs latency to fall faster than MACs.
"""

from __future__ import annotations

from collections.abc import Mapping

TARGET_RATIO = 0.7
ALIGN = 8  # AVX2: 8 float32 lanes; channels_last kernels vectorise over channels
BATCH_SIZES = (1, 256)


def reach(floor_speedup: float, mac_reduction: float, target: float = TARGET_RATIO) -> dict:
    """What the 1-channel floor allows a case with ``mac_reduction``: see the module docstring.

    Returns ``needed_speedup`` (target × reduction), ``floor_speedup``, ``floor_allows``
    (the floor is faster than needed) and ``proportional_estimate`` (the ratio if latency above
    the floor fell in proportion to MACs).
    """
    share = 1.0 / floor_speedup
    estimate = 1.0 / (share + (1.0 - share) / mac_reduction) / mac_reduction
    needed = target * mac_reduction
    return {"needed_speedup": needed, "floor_speedup": floor_speedup, "floor_allows": floor_speedup >= needed,
            "proportional_estimate": estimate}


def add_reach(results: Mapping[str, dict]) -> None:
    """Store :func:`reach` under ``latency[batch]["reach"]`` (and ``["onnxruntime"]["reach"]``, from
    the floor in onnxruntime) of every channel variant but the floor."""
    for result in results.values():
        floor = result["variants"]["floor"]["latency"]
        for key, variant in result["variants"].items():
            if variant["pruning"] != "channel" or key == "floor":
                continue
            for batch in BATCH_SIZES:
                stats = variant["latency"][str(batch)]
                stats["reach"] = reach(floor[str(batch)]["speedup"], variant["mac_reduction"])
                stats["onnxruntime"]["reach"] = reach(floor[str(batch)]["onnxruntime"]["speedup"],
                                                      variant["mac_reduction"])


def _outcome(stats: Mapping) -> str:
    """``met``, ``floor`` (the floor forbids it), ``estimate`` (below the proportional estimate) or ``missed``."""
    if stats["ratio"] >= TARGET_RATIO:
        return "met"
    if not stats["reach"]["floor_allows"]:
        return "floor"
    if stats["reach"]["proportional_estimate"] < TARGET_RATIO:
        return "estimate"
    return "missed"


def _speedup_cell(stats: Mapping[str, float]) -> str:
    return f"{stats['speedup']:.2f}× ({stats['speedup_min']:.2f}–{stats['speedup_max']:.2f})"


def _stats(variant: Mapping, batch: int, runtime: str) -> Mapping:
    """A variant's latency statistics at ``batch`` in ``runtime`` (``torch`` or ``onnxruntime``)."""
    stats = variant["latency"][str(batch)]
    return stats if runtime == "torch" else stats[runtime]


def _verdict(variant: Mapping, runtime: str = "torch") -> str:
    if variant["pruning"] != "channel":
        return "n/a (≈1.0× expected)"
    words = {"met": "yes", "floor": "no, floor", "estimate": "no, estimate", "missed": "**no**"}
    return "; ".join(f"b{b} {words[_outcome(_stats(variant, b, runtime))]}" for b in BATCH_SIZES)


def _reach_cell(variant: Mapping, runtime: str = "torch") -> str:
    """``needed × (floor ×) / estimate`` at both batch sizes, e.g. ``1.41× (2.26×) / 0.69``."""
    cells = []
    for b in BATCH_SIZES:
        r = _stats(variant, b, runtime)["reach"]
        cells.append(f"{r['needed_speedup']:.2f}× ({r['floor_speedup']:.2f}×) / {r['proportional_estimate']:.2f}")
    return " · ".join(cells)


def _label(variant: Mapping) -> str:
    if variant["pruning"] == "unstructured":
        return f"unstructured {variant['sparsity']:.0%} ({variant['scorer']})"
    if variant.get("aligned"):
        return f"channel ~{variant['channel_fraction']:.0%}, round_to {variant['aligned']} (l2)"
    return f"channel {variant['channel_fraction']:.1%} per layer (l2)"


def _widths(variant: Mapping) -> str:
    """The kept channels of the non-output layers, e.g. ``22/45/90``."""
    return "/".join(str(c) for c in list(variant["channels"].values())[:-1])


def _short_layout(layout: str) -> str:
    return {"channels_last": "NHWC", "contiguous": "NCHW"}.get(layout, layout)


def _op_short(key: str) -> str:
    return key.removeprefix("aten::")


def _reasons(variant: Mapping, dense: Mapping, pruned: Mapping, floor_share: float,
             aligned: Mapping | None) -> list[str]:
    """Which of four causes a below-target ratio shows, each with its numbers.

    ``dense``/``pruned`` are :func:`op_profile` results, ``floor_share`` the share of the
    dense latency that the 1-channel floor keeps, ``aligned`` the ``×ALIGN`` sibling's
    latency stats at the same batch (``None`` for an aligned variant).
    """
    reduction = variant["mac_reduction"]
    ratio = variant["latency"][str(pruned["batch"])]["ratio"]
    mac_speedup = dense["mac_ops_ms"] / pruned["mac_ops_ms"]
    other_speedup = dense["other_ops_ms"] / pruned["other_ops_ms"]
    other_share = dense["other_ops_ms"] / (dense["mac_ops_ms"] + dense["other_ops_ms"])
    reasons = []
    if floor_share >= 0.5:
        reasons.append(f"fixed per-op overhead: the 1-channel floor keeps {floor_share:.0%} of dense latency")
    if mac_speedup < TARGET_RATIO * reduction:
        reasons.append(f"the conv/matmul kernels themselves gain only {mac_speedup:.2f}× (narrow layers run "
                       "below the kernels' efficiency)")
    if other_share >= 0.2 and other_speedup < TARGET_RATIO * reduction:
        reasons.append(f"non-MAC ops ({_op_short(dense['top_other'][0][0])} first) take {other_share:.0%} of "
                       f"dense time and shrink with the channel count, not with MACs ({other_speedup:.2f}×)")
    odd = [c for c in list(variant["channels"].values())[:-1] if c % ALIGN and c > ALIGN]
    if aligned is not None and odd and pruned["layout"] == "channels_last" and aligned["ratio"] >= ratio + 0.05:
        reasons.append(f"kept channel counts {', '.join(map(str, odd))} are not multiples of {ALIGN}: channels_last "
                       f"kernels vectorise {ALIGN} channels at a time and run the remainder scalar (the round_to "
                       f"{ALIGN} row of this target reaches ratio {aligned['ratio']:.2f})")
    return reasons or ["no single cause stands out in the profile"]


def misses(results: Mapping[str, dict]) -> list[str]:
    """One line per channel result below the target ratio, with the evident causes.

    Causes looked for (see :func:`_reasons`): fixed per-op overhead (the 1-channel floor),
    conv/matmul kernels gaining less than their MACs fall, pooling/activation ops, whose
    work falls with the channel count while MACs fall about with its square, and channel
    counts that are not multiples of the vector width.
    """
    lines = []
    for model, result in results.items():
        for key, variant in result["variants"].items():
            if variant["pruning"] != "channel" or key == "floor":
                continue
            for batch in BATCH_SIZES:
                stats = variant["latency"][str(batch)]
                if stats["ratio"] >= TARGET_RATIO:
                    continue
                dense, pruned = result["profile"]["dense"][str(batch)], result["profile"][key][str(batch)]
                floor_share = 1.0 / result["variants"]["floor"]["latency"][str(batch)]["speedup"]
                sibling = result["variants"].get(f"{key}_x{ALIGN}") if not variant.get("aligned") else None
                aligned = sibling["latency"][str(batch)] if sibling else None
                why = "; ".join(_reasons(variant, dense, pruned, floor_share, aligned))
                lines.append(
                    f"{model} {key} batch {batch}: ratio {stats['ratio']:.2f} (speedup {stats['speedup']:.2f}× "
                    f"for {variant['mac_reduction']:.2f}× fewer MACs). {_reach_sentence(stats)} Why: {why}."
                )
    return lines


def _reach_sentence(stats: Mapping) -> str:
    r, outcome = stats["reach"], _outcome(stats)
    if outcome == "floor":
        return (f"Out of reach: {TARGET_RATIO} needs {r['needed_speedup']:.2f}×, and even one channel per layer "
                f"is only {r['floor_speedup']:.2f}× faster than dense.")
    if outcome == "estimate":
        return (f"Below the proportional estimate: with every ms above the 1-channel floor falling in proportion "
                f"to MACs the ratio would be {r['proportional_estimate']:.2f}, so {TARGET_RATIO} needs latency to "
                "fall faster than MACs (a uniform cut does not; a latency-aware per-layer allocation may).")
    return f"Within reach: the proportional estimate is {r['proportional_estimate']:.2f}."


def _cases(report: Mapping, runtime: str) -> dict[str, list[str]]:
    """The channel cases (model, variant, batch) of ``runtime`` by :func:`_outcome`, as labels."""
    cases: dict[str, list[str]] = {"met": [], "floor": [], "estimate": [], "missed": []}
    for model, result in report["models"].items():
        for key, v in result["variants"].items():
            if v["pruning"] != "channel" or key == "floor":
                continue
            for b in BATCH_SIZES:
                stats = _stats(v, b, runtime)
                cases[_outcome(stats)].append(f"{model} {key} b{b} ({stats['ratio']:.2f})")
    return cases


def _verdict_sentence(cases: Mapping[str, list[str]], runtime: str) -> str:
    met, total = cases["met"], sum(len(c) for c in cases.values())
    return (
        f"**{runtime}:** ratio ≥ {TARGET_RATIO} in {len(met)} of {total} channel cases"
        + (f": {', '.join(met)}." if met else ".")
        + f" Of the {total - len(met)} misses, {len(cases['floor'])} cannot reach it in this runtime with any "
        "channel counts (even one channel per layer is not fast enough), "
        f"{len(cases['estimate'])} would need latency above that floor to fall faster than MACs (below the "
        f"proportional estimate: not with a uniform cut, perhaps with a latency-aware allocation), and "
        f"{len(cases['missed'])} are within the estimate"
        + (f": {', '.join(cases['missed'])}." if cases["missed"] else ".")
    )


def summary(report: Mapping) -> list[str]:
    """The verdict per runtime, the cases met in either, and what deploying did to dense latency."""
    by_runtime = {runtime: _cases(report, runtime) for runtime in ("torch", "onnxruntime")}
    either = sorted({label.rsplit(" (", 1)[0] for cases in by_runtime.values() for label in cases["met"]})
    total = sum(len(c) for c in by_runtime["torch"].values())
    dense = [
        f"{model} {_ms(first['1']['trained_form_dense_latency_ms'])} → {_ms(first['1']['dense_latency_ms'])} at b1, "
        f"{_ms(first['256']['trained_form_dense_latency_ms'])} → {_ms(first['256']['dense_latency_ms'])} at b256"
        f" (onnxruntime {_ms(first['1']['onnxruntime']['dense_latency_ms'])} / "
        f"{_ms(first['256']['onnxruntime']['dense_latency_ms'])})"
        for model, result in report["models"].items()
        for first in [next(iter(result["variants"].values()))["latency"]]
    ]
    return [
        f"**Verdict:** the target is met in {len(either)} of {total} channel cases in at least one runtime"
        + (f" ({', '.join(either)})." if either else "."),
        "",
        _verdict_sentence(by_runtime["torch"], "torch (deployed form)") + " Each is listed under *Below target* "
        "with its causes.",
        "",
        _verdict_sentence(by_runtime["onnxruntime"], "onnxruntime (exported model.onnx)"),
        "",
        f"Deploying made the dense models themselves faster ({'; '.join(dense)}), mostly by running pooling in "
        "channels_last; the pruned models gain less from it, so ratios against the deployed dense model are lower "
        "than against the training form (last column).",
    ]


def _ms(value: float) -> str:
    return f"{value:.3f} ms" if value < 10 else f"{value:.1f} ms"


def markdown(report: Mapping) -> str:
    """The summary tables of ``report`` as markdown."""
    settings = report["settings"]
    rows = [
        "| model | pruning | kept channels | MACs removed | MAC reduction | speedup b1 | ratio b1 | speedup b256 "
        "| ratio b256 | target met (ratio ≥ 0.7)? | reach b1 · b256: needed (floor) / estimate "
        "| training-form ratio b1 / b256 (before) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    latency_rows = [
        "| model | pruning | dense b1 ms | pruned b1 ms | dense b256 ms | pruned b256 ms | layouts b1 / b256 "
        "(dense, pruned) | training form: dense b1 / b256 ms | onnxruntime: dense / pruned b1 ms "
        "| onnxruntime: dense / pruned b256 ms |",
        "|---|---|---:|---:|---:|---:|---|---|---|---|",
    ]
    onnx_rows = [
        "| model | pruning | kept channels | MAC reduction | speedup b1 | ratio b1 | speedup b256 | ratio b256 "
        "| target met (ratio ≥ 0.7)? | reach b1 · b256: needed (floor) / estimate |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for model, result in report["models"].items():
        for key, v in result["variants"].items():
            b1, b256 = v["latency"]["1"], v["latency"]["256"]
            o1, o256 = b1["onnxruntime"], b256["onnxruntime"]
            label = "floor: 1 channel per layer" if key == "floor" else _label(v)
            verdict = "(reference)" if key == "floor" else _verdict(v)
            reach_cell = _reach_cell(v) if "reach" in b1 else ""
            rows.append(
                f"| {model} | {label} | {_widths(v)} | {v['macs_removed']:.1%} | {v['mac_reduction']:.2f}× | "
                f"{_speedup_cell(b1)} | {b1['ratio']:.2f} | {_speedup_cell(b256)} | {b256['ratio']:.2f} | {verdict} | "
                f"{reach_cell} | "
                f"{b1['trained_form_ratio']:.2f} / {b256['trained_form_ratio']:.2f} |"
            )
            latency_rows.append(
                f"| {model} | {label} | {b1['dense_latency_ms']:.3f} | {b1['latency_ms']:.3f} | "
                f"{b256['dense_latency_ms']:.2f} | {b256['latency_ms']:.2f} | "
                f"{_short_layout(b1['dense_layout'])}, {_short_layout(b1['layout'])} / "
                f"{_short_layout(b256['dense_layout'])}, {_short_layout(b256['layout'])} | "
                f"{b1['trained_form_dense_latency_ms']:.3f} / {b256['trained_form_dense_latency_ms']:.2f} | "
                f"{o1['dense_latency_ms']:.3f} / {o1['latency_ms']:.3f} | "
                f"{o256['dense_latency_ms']:.2f} / {o256['latency_ms']:.2f} |"
            )
            onnx_verdict = "(reference)" if key == "floor" else _verdict(v, "onnxruntime")
            onnx_reach = _reach_cell(v, "onnxruntime") if "reach" in o1 else ""
            onnx_rows.append(
                f"| {model} | {label} | {_widths(v)} | {v['mac_reduction']:.2f}× | {_speedup_cell(o1)} | "
                f"{o1['ratio']:.2f} | {_speedup_cell(o256)} | {o256['ratio']:.2f} | {onnx_verdict} | {onnx_reach} |"
            )
    profile_rows = [
        "| model | pruning | batch | layouts | conv/matmul ms dense → pruned | other ops ms dense → pruned "
        "| other share of dense | costliest other ops (dense, ms) |",
        "|---|---|---:|---|---|---|---:|---|",
    ]
    for model, result in report["models"].items():
        for key, by_batch in result["profile"].items():
            if key == "dense":
                continue
            for batch, pruned in by_batch.items():
                dense = result["profile"]["dense"][batch]
                share = dense["other_ops_ms"] / (dense["mac_ops_ms"] + dense["other_ops_ms"])
                top = ", ".join(f"{_op_short(op)} {ms:.3g}" for op, ms in dense["top_other"])
                profile_rows.append(
                    f"| {model} | {key} | {batch} | {_short_layout(dense['layout'])}, "
                    f"{_short_layout(pruned['layout'])} | {dense['mac_ops_ms']:.3g} → {pruned['mac_ops_ms']:.3g} "
                    f"({dense['mac_ops_ms'] / pruned['mac_ops_ms']:.2f}×) | {dense['other_ops_ms']:.3g} → "
                    f"{pruned['other_ops_ms']:.3g} ({dense['other_ops_ms'] / pruned['other_ops_ms']:.2f}×) | "
                    f"{share:.0%} | {top} |"
                )
    scorer_rows = [
        "| scorer | needs data | channel_scores ms | weight_scores ms |",
        "|---|---|---:|---:|",
    ]
    for name, s in report["scorers"].items():
        scorer_rows.append(
            f"| {name} | {'yes' if s['needs_data'] else 'no'} | {s['channel_scores']['median_ms']:.2f} | "
            f"{s['weight_scores']['median_ms']:.2f} |"
        )
    m = report["machine"]
    n_batches, batch_size = settings["calibration"]
    miss_lines = [f"- {line}" for line in report["misses"]] or ["- none"]
    return "\n".join([
        "# Engine benchmark: speedup vs MAC reduction, scorer cost",
        "",
        f"Command: `{report['command']}` (cwd `{report['cwd']}`), {report['date']}, "
        f"commit `{report['git_commit']}`.",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} CPUs, {m['platform']}, torch {m['torch']}, "
        f"1 torch thread. Load average at start/end: {report['loadavg_start']} / {report['loadavg_end']}.",
        "",
        *summary(report),
        "",
        "Models built by `build_model` for input (1, 28, 28), 10 classes, seeded random weights, "
        "**not trained** (latency does not depend on weight values). Channel rows: one uniform fraction "
        "of output channels removed from every layer but the output layer (kept by `l2`, removed with "
        "`remove_channels`), fraction found by bisection on `measure.macs` for ~50% / ~75% of MACs. "
        f"'round_to {ALIGN}' rows: the same targets with every kept count rounded to a multiple of {ALIGN} "
        f"by `allocation.kept_channels`, as a policy with `round_to: {ALIGN}` does (the AVX2 vector width; "
        "layers narrower than that keep their unrounded count), fraction scanned for the closest MACs. "
        "Unstructured row: 90% of each layer's weights masked by magnitude and baked by "
        "`remove_masks`; its MAC columns count non-zero MACs (counted dense MACs are unchanged). Floor row: "
        "every layer cut to one channel, the latency left when the arithmetic is nearly gone.",
        "",
        "**Timing is of the deployed form** (`autoprune.measure.time_deployed`, what trials, retime and export "
        "report): a copy in eval mode with batch norm folded into the conv before it, under "
        "`torch.inference_mode`, in whichever memory format (NCHW or channels_last = NHWC) a short "
        "interleaved probe finds faster for that model. Speedup = dense / pruned latency, both deployed, runs "
        f"interleaved, median of {settings['repeats']['1']} runs at batch 1 and {settings['repeats']['256']} at "
        f"batch 256 ({settings['warmup']} warmup per form), median over {settings['rounds']} rounds, "
        "(min–max over rounds). ratio = speedup / MAC reduction. The last column is the same ratio with both "
        "models timed in the training-time form (eval, batch norm unfolded, NCHW), measured in the same rounds: "
        "how the previous version of this benchmark timed them.",
        "",
        "**Reach** (from the floor row at the same batch size, measured in the same rounds): *needed* is the "
        f"speedup a ratio of {TARGET_RATIO} needs; *floor* is what one channel per layer gives, so a case "
        "needing more cannot reach the target with any channel counts ('no, floor'); *estimate* is the ratio if "
        "every ms above the floor fell in proportion to MACs. It is not a limit (a latency-aware per-layer "
        "allocation can beat it), but a case below it needs latency to fall faster than MACs ('no, estimate'). "
        "A bold **no** is a miss within the estimate.",
        "",
        *rows,
        "",
        "**The same cases in onnxruntime**: each model exported as `autoprune export` writes `model.onnx` "
        "(batch norm folded; `torch.onnx.export(dynamo=True)`) and run by onnxruntime on the CPU with one "
        "intra-op thread, all graph optimisations, dense and pruned interleaved in the same rounds "
        "(`latency.runtime: onnxruntime`); reach from the floor's onnxruntime timing.",
        "",
        *onnx_rows,
        "",
        "Latency (median over rounds):",
        "",
        *latency_rows,
        "",
        f"Where the time goes (torch.profiler self CPU time per forward of the deployed form in the layout "
        f"its timing chose, {settings['profile_runs']['1']} forwards at batch 1, {settings['profile_runs']['256']} "
        "at batch 256; includes profiler overhead, so for explanation only):",
        "",
        *profile_rows,
        "",
        "Below target:",
        "",
        *miss_lines,
        "",
        f"## Time per scorer call (small_cnn, {n_batches} calibration batches of {batch_size}, "
        f"median of {settings['scorer_calls']} calls after one untimed)",
        "",
        *scorer_rows,
        "",
    ])
