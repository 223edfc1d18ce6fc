"""``autoprune ui``: the MLflow UI on a study's tracking store, local and cleanly stopped.

The search logs to a tracking store (``studies/mlflow.db`` by default, see
:mod:`autoprune.tracking`); reviewing it needs an MLflow server on that store. :func:`run_ui`

1. resolves the store as the search does (``--tracking-uri``, ``$MLFLOW_TRACKING_URI``, or
   ``<studies>/mlflow.db``) and, with ``--study``, finds the study's parent run first, so an
   unknown study is a one-line error before anything starts;
2. starts ``mlflow server --workers 1`` on it, bound to ``127.0.0.1`` unless ``--host`` says
   otherwise, in **its own process group** (MLflow runs uvicorn as a child process), with
   its output in ``<studies>/mlflow-ui.log``; MLflow's background job runner (GenAI jobs,
   unused here) is switched off so that the server starts faster and spawns fewer processes;
3. waits until ``/health`` answers, prints the server's address and the study's parent run
   (``http://127.0.0.1:5000/#/experiments/<id>/runs/<run id>``);
4. on Ctrl-C or SIGTERM stops the whole process group: SIGTERM, then SIGKILL for whatever
   is left after a grace period, so no server process outlives the command.

A store that is already a server (``http(s)://``) needs no local UI: its parent-run address
is printed and nothing is started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from autoprune.errors import AutopruneError
from autoprune.procs import process_stats
from autoprune.paths import studies_root
from autoprune.tracking import artifact_root, client_for, find_parent_run, is_server, resolve_tracking_uri, run_url

START_TIMEOUT = 180.0  # seconds; `mlflow server --workers 1` needs ~8 s on an idle machine
STOP_GRACE = 10.0


@dataclass
class StudyRun:
    """Where a study's parent run lives in the store."""

    study: str
    experiment_id: str
    run_id: str


def study_runs(uri: str, study: str | None) -> list[StudyRun]:
    """The parent run of ``study`` (or of every study in the store when ``study`` is None).

    Raises:
        AutopruneError: ``study`` has no parent run in the store (the message lists those that do).
    """
    client = client_for(uri)
    found = []
    for experiment in client.search_experiments():
        parent = find_parent_run(client, experiment.experiment_id, experiment.name)
        if parent is not None:
            found.append(StudyRun(experiment.name, experiment.experiment_id, parent.info.run_id))
    if study is None:
        return found
    chosen = [run for run in found if run.study == study]
    if not chosen:
        known = ", ".join(run.study for run in found) or "none"
        raise AutopruneError(f"--study {study}: no such study in the MLflow store {uri}; studies there: {known}")
    return chosen


def check_port(host: str, port: int) -> None:
    """Refuse a port something already listens on (one line, before the server starts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise AutopruneError(f"--port {port}: cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from None


class MlflowServer:
    """``mlflow server`` on one store, in its own process group; a context manager.

    Args:
        uri: the backend store URI.
        host, port: where to listen.
        artifacts: the default artifact root for experiments created in the UI.
        log_path: the server's stdout and stderr.
    """

    def __init__(self, uri: str, *, host: str, port: int, artifacts: Path | None, log_path: Path) -> None:
        self.uri = uri
        self.host = host
        self.port = port
        self.artifacts = artifacts
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The address to open (``0.0.0.0`` is shown as ``127.0.0.1``)."""
        shown = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{shown}:{self.port}"

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.uri, "--host", self.host,
                   "--port", str(self.port), "--workers", "1"]
        if self.artifacts is not None:
            command += ["--default-artifact-root", self.artifacts.as_uri()]
        return command

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the server and wait until ``/health`` answers (the log's tail on failure)."""
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("w") as out:
            self.process = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AutopruneError(f"mlflow server exited with code {self.process.returncode}: {self._tail()}")
            if self.healthy():
                return
            time.sleep(0.5)
        self.stop()
        raise AutopruneError(f"mlflow server did not answer within {timeout:.0f} s; see {self.log_path}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _tail(self) -> str:
        lines = [line for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        return lines[-1].strip() if lines else f"(no output; see {self.log_path})"

    def stop(self) -> None:
        """Stop the server and every process of its group (SIGTERM, then SIGKILL)."""
        process = self.process
        if process is None:
            return
        group = process.pid  # start_new_session: the server leads its own group
        _signal_group(group, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + STOP_GRACE
        while group_alive(group) and time.monotonic() < deadline:
            time.sleep(0.2)
        _signal_group(group, signal.SIGKILL)
        if process.poll() is None:
            process.wait(timeout=STOP_GRACE)
        self.process = None

    def __enter__(self) -> MlflowServer:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _signal_group(group: int, sig: signal.Signals) -> None:
    try:
        os.killpg(group, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(group: int) -> bool:
    """Whether any live (not zombie) process belongs to process group ``group`` (Linux /proc)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(group, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False
    return any(int(fields[2]) == group and fields[0] != "Z" for _, fields in process_stats())


def run_ui(*, studies: str | Path | None = None, study: str | None = None, host: str = "127.0.0.1", port: int = 5000,
           tracking_uri: str | None = None, log: Callable[[str], None] = print) -> None:
    """Serve the MLflow UI for the store until Ctrl-C or SIGTERM (see the module docstring)."""
    root = studies_root(studies)
    uri, source = resolve_tracking_uri(tracking_uri, root)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise AutopruneError(f"{source}: no MLflow store at {uri.removeprefix('sqlite:///')}; run autoprune search first "
                             "(or point --studies / --tracking-uri at the store)")
    runs = study_runs(uri, study)
    if is_server(uri):
        for run in runs:
            log(f"study {run.study}: {run_url(uri, run.experiment_id, run.run_id)}")
        log(f"{uri} is an MLflow server already; open it in a browser")
        return
    check_port(host, port)
    server = MlflowServer(uri, host=host, port=port, artifacts=artifact_root(uri, root), log_path=root / "mlflow-ui.log")
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        assert server.process is not None
        log(f"MLflow UI: {server.url} (store {uri}; server pid {server.process.pid}, log {server.log_path})")
        for run in runs:
            log(f"study {run.study}: {run_url(server.url, run.experiment_id, run.run_id)}")
        if not runs:
            log("no studies in the store yet")
        log("press Ctrl-C to stop")
        while server.process.poll() is None:
            time.sleep(0.5)
        raise AutopruneError(f"mlflow server stopped unexpectedly (code {server.process.returncode}): {server._tail()}")
    except KeyboardInterrupt:
        log("stopping the MLflow UI")
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
