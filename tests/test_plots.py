"""pareto.html and pareto.png from a real Optuna study's trials; pareto.html in headless Chromium.

The trials are real Optuna trials carrying the user attributes the driver records (metrics,
feasibility, policy); the browser test drives Debian's ``chromium`` through
``chromedriver``'s W3C WebDriver HTTP API (no extra Python package) and reads the plot back
from the page.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
from matplotlib.image import imread

from autoprune.plots import pareto_figures, plot_axes, point_groups, projections, write_plots
from autoprune.policy import Policy
from autoprune.results import trials_frame

OBJECTIVES = {"accuracy": "max", "sparsity": "max", "latency_ms": "min"}
pytestmark = pytest.mark.timeout(300)


def study_trials(count: int = 12, failed: tuple[int, ...] = (5,)) -> list[optuna.trial.FrozenTrial]:
    """A study's trials as the driver records them: metrics, feasibility, policy; some failed."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "maximize", "minimize"])
    rng = random.Random(0)
    for number in range(count):
        policy = Policy(target_sparsity=round(rng.uniform(0.3, 0.95), 2), scorer=rng.choice(["magnitude", "taylor"]))
        if number in failed:
            study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL,
                                                      user_attrs={"error": "diverged", "policy": policy.to_dict()}))
            continue
        accuracy, latency = rng.uniform(0.7, 0.97), rng.uniform(0.1, 0.3)
        metrics = {"accuracy": accuracy, "accuracy_drop": 0.97 - accuracy, "sparsity": policy.target_sparsity,
                   "latency_ms": latency, "params": 100.0, "macs": 1000.0}
        study.add_trial(optuna.trial.create_trial(
            values=[accuracy, policy.target_sparsity, latency],
            user_attrs={"metrics": metrics, "feasible": accuracy > 0.8, "policy": policy.to_dict()},
        ))
    return study.trials


@pytest.fixture(scope="module")
def plotted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, dict[int, str]]:
    trials = study_trials()
    frame = trials_frame(trials, OBJECTIVES)
    summaries = {t.number: Policy.from_dict(t.user_attrs["policy"]).summary() for t in trials}
    folder = tmp_path_factory.mktemp("plots")
    write_plots(frame, OBJECTIVES, folder, title="Pareto front of demo", summaries=summaries)
    return folder, frame, summaries


def test_axes_are_padded_to_three_with_every_pair_projected() -> None:
    assert plot_axes({"accuracy": "max", "sparsity": "max"}) == ["accuracy", "sparsity", "latency_ms"]
    assert plot_axes({"latency_ms": "min"}) == ["latency_ms", "accuracy", "sparsity"]
    assert projections(plot_axes(OBJECTIVES)) == [("accuracy", "sparsity"), ("accuracy", "latency_ms"),
                                                  ("sparsity", "latency_ms")]


def test_groups_split_finished_trials_and_leave_failed_ones_out(plotted) -> None:
    _, frame, _ = plotted
    groups = point_groups(frame)
    numbers = [set(groups[name]["number"]) for name in ("pareto front", "feasible", "infeasible")]
    assert set.union(*numbers) == set(frame.loc[frame["state"] == "finished", "number"]) and 5 not in set.union(*numbers)
    assert numbers[0] == set(frame.loc[frame["pareto"], "number"]) and numbers[0]
    assert numbers[2] == set(frame.loc[(frame["state"] == "finished") & ~frame["feasible"], "number"])


def test_points_are_placed_by_the_isolated_latency_where_one_exists() -> None:
    frame = trials_frame(study_trials(), OBJECTIVES)
    timed = int(frame.loc[frame["pareto"].astype(bool), "number"].iloc[0])
    other = int(frame.loc[(frame["state"] == "finished") & (frame["number"] != timed), "number"].iloc[0])
    frame["latency_ms_isolated"] = [0.05 if n == timed else float("nan") for n in frame["number"]]
    figure = next(f for f in pareto_figures(frame, OBJECTIVES)[1:] if "latency" in f.layout.yaxis.title.text)
    latency = {int(point[0]): y for trace in figure.data for point, y in zip(trace.customdata or [], trace.y)}
    assert latency[timed] == 0.05
    assert latency[other] == float(frame.set_index("number").loc[other, "latency_ms"])


def test_html_is_self_contained_and_the_png_is_an_image(plotted) -> None:
    folder, _, _ = plotted
    page = (folder / "pareto.html").read_text()
    assert not re.search(r"<script[^>]*\ssrc=", page)  # nothing fetched: plotly.js is inside
    assert "Plotly.newPlot" in page and len(page) > 1_000_000
    image = imread(folder / "pareto.png")
    assert image.shape[0] > 300 and image.shape[1] > 900


def test_an_empty_study_still_plots(tmp_path: Path) -> None:
    frame = trials_frame([], OBJECTIVES)
    page, image = write_plots(frame, OBJECTIVES, tmp_path, title="empty")
    assert page.stat().st_size > 0 and image.stat().st_size > 0


# -- the browser test --------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
READ_PLOTS = """
return Array.from(document.querySelectorAll('.plotly-graph-div')).map(gd => ({
  id: gd.id,
  rendered: !!gd._fullLayout,
  webgl: gd.querySelectorAll('canvas').length,
  svgPoints: gd.querySelectorAll('.scatterlayer path.point').length,
  traces: gd.data.map(t => ({name: t.name, trials: t.customdata.map(c => c[0])})),
}));
"""
HOVER_FIRST_FRONT_POINT = """
const gd = document.getElementById('view-1');
Plotly.Fx.hover(gd, [{curveNumber: 0, pointNumber: 0}]);
return gd.querySelector('.hoverlayer').textContent;
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class WebDriver:
    """Just enough of the W3C WebDriver protocol: a session, navigation, scripts, screenshots."""

    def __init__(self, user_data: Path) -> None:
        port = _free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.driver = subprocess.Popen([CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.call("GET", "/status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={user_data}", "--window-size=1400,1700"]
        capabilities = {"browserName": "chrome", "goog:chromeOptions": {"binary": CHROMIUM, "args": flags}}
        self.session = self.call("POST", "/session", {"capabilities": {"alwaysMatch": capabilities}})["sessionId"]

    def call(self, method: str, path: str, body: dict | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())["value"]

    def open(self, url: str) -> None:
        self.call("POST", f"/session/{self.session}/url", {"url": url})

    def script(self, source: str) -> Any:
        return self.call("POST", f"/session/{self.session}/execute/sync", {"script": source, "args": []})

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.call("GET", f"/session/{self.session}/screenshot")))
        return path

    def close(self) -> None:
        try:
            self.call("DELETE", f"/session/{self.session}")
        finally:
            self.driver.terminate()
            self.driver.wait(timeout=30)


def save_artifact(path: Path) -> None:
    """Copy a test artifact to ``$AUTOPRUNE_TEST_ARTIFACTS`` when that is set."""
    target = os.environ.get("AUTOPRUNE_TEST_ARTIFACTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                    reason="headless Chromium needs the Debian packages chromium and chromium-driver")
def test_pareto_html_renders_one_point_per_feasible_trial_in_chromium(plotted, tmp_path: Path) -> None:
    folder, frame, summaries = plotted
    browser = WebDriver(tmp_path / "chromium-profile")
    try:
        browser.open((folder / "pareto.html").as_uri())
        views = browser.script(READ_PLOTS)
        hover = browser.script(HOVER_FIRST_FRONT_POINT)
        shot = browser.screenshot(tmp_path / "pareto-html.png")
    finally:
        browser.close()
    save_artifact(shot)
    finished = frame[frame["state"] == "finished"]
    feasible = sorted(finished.loc[finished["feasible"], "number"])
    front = sorted(frame.loc[frame["pareto"], "number"])
    assert [v["id"] for v in views] == ["view-0", "view-1", "view-2", "view-3"] and all(v["rendered"] for v in views)
    assert views[0]["webgl"] >= 1  # the 3-D view is drawn with WebGL
    for view in views:
        traces = {t["name"]: sorted(t["trials"]) for t in view["traces"]}
        assert sorted(traces["pareto front"] + traces["feasible"]) == feasible
        assert traces["pareto front"] == front
        assert traces["infeasible"] == sorted(finished.loc[~finished["feasible"], "number"])
    assert all(v["svgPoints"] == len(finished) for v in views[1:])  # every point drawn in each projection
    first = int(views[1]["traces"][0]["trials"][0])
    assert f"trial {first}" in hover and summaries[first] in hover
    assert imread(shot).shape[1] >= 1000
