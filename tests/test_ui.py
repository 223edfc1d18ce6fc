"""``autoprune ui`` after a small real study: a real MLflow server on 127.0.0.1, stopped cleanly."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from autoprune.errors import AutopruneError
from autoprune.search import SearchOptions, run_search
from autoprune.ui import group_alive, run_ui
from test_search import small_space

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("studies")
    outcome = run_search(small_space("viewed", 2), SearchOptions(studies=root, concurrency=2, quiet=True),
                         log=lambda _: None)
    assert outcome.finished == 2
    return root


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on ``port`` (Linux /proc/net/tcp)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def read_until(process: subprocess.Popen, marker: str, timeout: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if marker in line:
            return lines
    raise AssertionError(f"no {marker!r} within {timeout} s; output: {lines}")


def test_ui_serves_the_study_on_localhost_and_stops_with_its_children(studies: Path) -> None:
    port = free_port()
    ui = subprocess.Popen(
        [sys.executable, "-m", "autoprune.cli", "ui", "--studies", str(studies), "--study", "viewed", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    server_pid = None
    try:
        lines = read_until(ui, "Ctrl-C", timeout=240)
        server_pid = int(re.search(r"server pid (\d+)", "\n".join(lines)).group(1))
        link = re.search(rf"study viewed: (http://127\.0\.0\.1:{port}/#/experiments/(\w+)/runs/(\w+))"
                         r"\?workflowType=machine_learning", "\n".join(lines))
        assert link, lines
        experiment_id, parent_id = link.group(2), link.group(3)
        assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1 only
        base = f"http://127.0.0.1:{port}"
        runs = post(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id]})["runs"]
        tags = [{t["key"]: t["value"] for t in run["data"]["tags"]} for run in runs]
        assert sorted(t["autoprune.role"] for t in tags) == ["parent", "trial", "trial"]
        assert {t.get("mlflow.parentRunId") for t in tags if t["autoprune.role"] == "trial"} == {parent_id}
        files = get(f"{base}/api/2.0/mlflow/artifacts/list?run_id={parent_id}")["files"]
        assert {"pareto.html", "pareto.png", "pareto.csv", "trials.csv"} <= {f["path"] for f in files}
        with urllib.request.urlopen(f"{base}/", timeout=30) as page:
            assert page.status == 200
    finally:
        ui.send_signal(signal.SIGINT)
        code = ui.wait(timeout=60)
        rest = ui.stdout.read()
    assert code == 0 and "stopping the MLflow UI" in rest
    assert server_pid is not None and not group_alive(server_pid)
    assert not listening_addresses(port)


def test_unknown_study_is_one_line_naming_the_known_ones(studies: Path) -> None:
    with pytest.raises(AutopruneError, match="--study nope: no such study in the MLflow store .*; studies there: viewed"):
        run_ui(studies=studies, study="nope", port=free_port(), log=lambda _: None)


def test_a_busy_port_is_refused_before_the_server_starts(studies: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(AutopruneError, match=f"--port {port}: cannot listen on 127.0.0.1:{port}"):
            run_ui(studies=studies, study="viewed", port=port, log=lambda _: None)


def test_no_store_yet_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(AutopruneError, match="no MLflow store at .*mlflow.db; run autoprune search first"):
        run_ui(studies=tmp_path, log=lambda _: None)
