"""Every benchmark script runs in `--smoke` mode in seconds and writes sane results."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_smoke(script: str, out: Path, *, timeout: int) -> dict:
    """``python benchmarks/<script>.py --smoke --out OUT`` succeeds; returns the JSON it wrote."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / f"{script}.py"), "--smoke", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((out / f"{script}.json").read_text())


def test_engine_smoke_writes_finite_speedups(tmp_path: Path) -> None:
    report = run_smoke("engine", tmp_path, timeout=120)
    assert {"command", "date", "machine", "settings", "models", "scorers", "misses"} <= set(report)
    assert {"platform", "processor", "cpu_model", "cpu_count", "torch"} <= set(report["machine"])
    variants = report["models"]["lenet5"]["variants"]
    assert {"channel_50", "channel_75", "unstructured_90", "floor"} <= set(variants)
    for variant in variants.values():
        assert variant["mac_reduction"] >= 1.0
        for batch in ("1", "256"):
            speedup = variant["latency"][batch]["speedup"]
            assert math.isfinite(speedup) and speedup > 0
    assert variants["channel_75"]["macs"] < variants["channel_50"]["macs"] < report["models"]["lenet5"]["dense_macs"]
    for timing in report["scorers"].values():
        assert timing["channel_scores"]["median_ms"] > 0 and timing["weight_scores"]["median_ms"] > 0
    assert "| lenet5 |" in (tmp_path / "engine.md").read_text()
    aligned = variants["channel_50_x8"]["channels"]
    assert all(count % 8 == 0 for name, count in aligned.items() if name in ("classifier.0", "classifier.2"))
    assert set(variants["channel_50"]["latency"]["1"]["reach"]) >= {"floor_allows", "proportional_estimate"}
    onnx = variants["channel_50"]["latency"]["256"]["onnxruntime"]
    assert math.isfinite(onnx["speedup"]) and onnx["speedup"] > 0 and "reach" in onnx


def test_allocations_smoke_selects_counts_within_the_mac_window(tmp_path: Path) -> None:
    report = run_smoke("allocations", tmp_path, timeout=240)
    assert {(c["runtime"], c["batch"]) for c in report["cases"]} == {(r, b) for r in ("torch", "onnxruntime")
                                                                   for b in (1, 256)}
    for case in report["cases"]:
        assert abs(case["selected"]["macs_removed"] - case["target"]) <= report["settings"]["window"] + 1e-9
        assert math.isfinite(case["selected"]["ratio"]) and case["selected"]["ratio"] > 0
        assert math.isfinite(case["uniform"]["ratio"]) and case["uniform"]["ratio"] > 0
    assert "| lenet5 | 50% |" in (tmp_path / "allocations.md").read_text()


def test_engine_reach_from_the_floor() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from _engine_report import reach
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    # The floor keeps half the dense latency: at 2x fewer MACs the proportional ratio is 2/3.
    half = reach(floor_speedup=2.0, mac_reduction=2.0)
    assert half["floor_allows"] and half["needed_speedup"] == 1.4
    assert math.isclose(half["proportional_estimate"], 2 / 3)
    assert not reach(floor_speedup=2.0, mac_reduction=4.0)["floor_allows"]  # needs 2.8x, the floor gives 2x


def test_overhead_smoke_runs_enqueued_policies_and_reports_finite_ratios(tmp_path: Path) -> None:
    report = run_smoke("overhead", tmp_path, timeout=300)
    assert {"command", "date", "git_commit", "machine", "settings", "result", "headline", "targets_met"} <= set(report)
    assert {"search_vs_loop", "search_vs_loop_steady", "search_scaling", "loop_scaling", "fixed_s_c1",
            "overhead_per_trial_s_c1"} <= set(report["headline"])
    assert all(math.isfinite(v) for v in report["headline"].values())
    (rnd,) = report["result"]["rounds"]
    assert set(rnd["runs"]) == {"loop_c1", "loop_c2", "search_c1", "search_c2"}
    for run in rnd["runs"].values():
        assert [t["index"] for t in run["trials"]] == [0, 1] and run["wall_s"] > 0
    search = rnd["runs"]["search_c1"]
    assert all(math.isfinite(v) and v >= 0 for v in search["phases"].values())
    assert search["stages"]["ray_init"] > 0 and search["fixed_s"] > 0
    assert report["result"]["same_work"]["max_sparsity_diff"] < 1e-6
    assert "| search phase / plain loop wall" in (tmp_path / "overhead.md").read_text()
    head = report["headline"]  # W4: peak memory and MLflow's per-trial cost
    for key in ("driver_peak_rss_mb_c1", "driver_peak_rss_mb_c2", "worker_peak_rss_mb_c1", "tree_peak_rss_mb_c2",
                "mlflow_per_trial_ms_c1", "mlflow_vs_gap_c1", "mlflow_on_path_ms_c1", "record_per_trial_ms_c1"):
        assert math.isfinite(head[key]) and head[key] > 0, key
    assert head["driver_peak_rss_mb_c1"] >= search["driver_start_rss_mb"] > 0
    assert search["tracking_calls"] == 2  # one MLflow update per trial, on the tracking thread
    assert "| round | run | concurrency | driver RSS at start MB" in (tmp_path / "overhead.md").read_text()


def test_samplers_smoke_writes_monotone_normalised_hypervolume_curves(tmp_path: Path) -> None:
    report = run_smoke("samplers", tmp_path, timeout=120)
    assert {"command", "date", "git_commit", "machine", "settings", "dense", "runs", "hypervolume",
            "target_met"} <= set(report)
    trials = report["settings"]["trials"]
    assert {(run["sampler"], run["seed"]) for run in report["runs"]} == {("tpe", 0), ("random", 0)}
    for run in report["runs"]:
        assert sum(t["state"] == "complete" for t in run["trials"]) == trials
    for entry in report["hypervolume"].values():
        for curve in entry["curves"]:
            assert len(curve) == trials
            assert all(0.0 <= v <= 1.0 + 1e-9 for v in curve)
            assert all(b >= a for a, b in zip(curve, curve[1:]))
        assert max(curve[-1] for curve in entry["curves"]) > 0
        assert {"median", "min", "max", "at", "reach_random"} <= set(entry["summary"]["samplers"]["tpe"])
        assert isinstance(entry["summary"]["target"]["met"], bool)
    assert "| tpe |" in (tmp_path / "samplers.md").read_text()
    assert (tmp_path / "samplers.png").stat().st_size > 0


def test_weights_smoke_compares_search_and_baselines_at_equal_budget(tmp_path: Path) -> None:
    report = run_smoke("weights", tmp_path, timeout=300)
    assert {"command", "date", "git_commit", "machine", "settings", "result", "targets"} <= set(report)
    result = report["result"]
    assert result["compute"]["baselines_points"] == 25 and result["compute"]["search_trials"] == 4
    assert set(result["levels"]) == {"0.95", "0.98"}
    assert {"drop_95", "drop_98", "gain_0.95", "gain_0.98", "hypervolume_ratio"} == set(report["targets"])
    assert result["hypervolume"]["baselines"] > 0
    assert "| sparsity ≥ | side |" in (tmp_path / "weights.md").read_text()
    assert (tmp_path / "weights.png").stat().st_size > 0


def test_channels_smoke_times_the_front_and_the_narrow_nets(tmp_path: Path) -> None:
    report = run_smoke("channels", tmp_path, timeout=300)
    assert {"command", "date", "git_commit", "machine", "settings", "result", "headline", "misses"} <= set(report)
    result = report["result"]
    assert result["front"] and [n["width"] for n in result["narrow"]] == [0.5, 0.75]
    for item in result["front"] + result["narrow"]:
        assert all(math.isfinite(item["speedup"][b]) and item["speedup"][b] > 0 for b in ("1", "256"))
    assert all(result["dense"]["latency_ms"][b] > 0 for b in ("1", "256"))
    head = report["headline"]
    assert set(head["targets_met"]) == {"speedup_b1", "speedup_b256", "beats_narrow_b1", "beats_narrow_b256"}
    if head["chosen"] is not None:
        assert len(result["seeds"]) == 2 and all(0 <= s["test_accuracy"] <= 1 for s in result["seeds"])
        assert result["chosen"]["accuracy_drop"] <= result["max_drop"] + 1e-9
    assert "| trial | val accuracy |" in (tmp_path / "channels.md").read_text()
    assert (tmp_path / "channels.png").stat().st_size > 0


def test_load_smoke_finishes_every_trial_with_consistent_records(tmp_path: Path) -> None:
    report = run_smoke("load", tmp_path, timeout=180)
    assert {"command", "date", "git_commit", "machine", "settings", "result", "passed"} <= set(report)
    result = report["result"]
    assert report["passed"] and all(result["checks"].values()), result["checks"]
    assert result["finished"] == result["child_runs"] == 8 and result["failed"] == 0
    assert {d.split("=")[-1] for d in result["devices"]} == {"0", "1"}  # 2 declared GPUs, CPU fallback
    assert [row["finished"] for row in result["milestones"]] == [4, 8]
    assert all(row["driver_peak_rss_mb"] >= row["driver_rss_mb"] > 0 for row in result["milestones"])
    assert result["driver_peak_rss_mb"] > 0 and result["worker_peak_rss_mb"] > 0
    assert math.isfinite(result["overhead_per_trial_s"]) and result["mlflow_update"]["calls"] == 8
    assert "| consistency check | passed |" in (tmp_path / "load.md").read_text()
