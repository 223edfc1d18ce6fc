"""Fail-fast access to an MLflow tracking server, for a driver that must not wait on it.

MLflow's HTTP client retries a failed request with exponential back-off: by default 7
retries and a 120 s timeout per attempt (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``,
``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR``, ``MLFLOW_HTTP_REQUEST_TIMEOUT``), so one call to a
server that went away blocks for about four minutes. The search driver logs to MLflow
between trials, and Ray Tune starts no trial while it does; the tracker catches up with
anything it could not log (:mod:`autoprune.tracking`), so it gains nothing by waiting.

* :class:`FailFastClient` wraps an ``MlflowClient`` and runs each of its calls under
  :data:`FAIL_FAST` (one immediate retry, 10 s per attempt): a refused connection fails in
  milliseconds, a silent host in at most about 20 s. Variables the user set keep their
  values. MLflow reads them at every request, and the driver makes its MLflow calls from one
  thread, so they are set for the duration of each call only.
* :func:`server_answers` asks ``/health`` (2 s, no retry): while the server is known to be
  down, the tracker checks this instead of making the calls that would fail.
* :func:`failure_reason` turns MLflow's long exception text into a few words for a warning.
"""

from __future__ import annotations

import functools
import os
import urllib.error
import urllib.request
from contextlib import contextmanager
from typing import Any, Iterator

FAIL_FAST = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
HEALTH_TIMEOUT = 2.0  # seconds


@contextmanager
def http_limits() -> Iterator[None]:
    """Apply :data:`FAIL_FAST` to MLflow's HTTP requests inside the block (user settings win)."""
    added = {name: value for name, value in FAIL_FAST.items() if name not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


class FailFastClient:
    """An ``MlflowClient`` whose every method runs under :func:`http_limits`."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def call(*args: Any, **kwargs: Any) -> Any:
            with http_limits():
                return attribute(*args, **kwargs)

        return call


def server_answers(uri: str, timeout: float = HEALTH_TIMEOUT) -> bool:
    """Whether the MLflow server at ``uri`` answers ``/health`` within ``timeout`` seconds."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def failure_reason(exc: BaseException) -> str:
    """Why a store call failed, in a few words (the exception's first line when not recognised)."""
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused: the server is not running"
    if "timed out" in text or "Timeout" in type(exc).__name__:
        return f"no answer within {os.environ.get('MLFLOW_HTTP_REQUEST_TIMEOUT', FAIL_FAST['MLFLOW_HTTP_REQUEST_TIMEOUT'])} s"
    if "Name or service not known" in text or "Temporary failure in name resolution" in text:
        return "the server's host name does not resolve"
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__
