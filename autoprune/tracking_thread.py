"""MLflow logging off the search's critical path: one background thread per study.

After each trial the driver tells Optuna and rewrites the CSV tables (tens of ms), then the
:class:`~autoprune.tracking.StudyTracker` mirrors the trial in MLflow (a child run, tags,
the front metrics, CSV artifacts, every few trials the plots: hundreds of ms, seconds for a
drawing). Ray Tune starts the next trial only when the driver returns from the result, so
that MLflow time used to sit between trials. :class:`TrackingThread` hands each update to
one background thread instead, which calls ``trial_done`` in the same order with the same
arguments: the tracker still sees every ended trial once, and since it reconciles with the
study on every call, a slow store only delays the mirror. :meth:`TrackingThread.finish`
waits for the updates still queued, then ends the parent run as before.

On Linux the thread runs at a lower priority (nice +10), so that on a machine whose cores
all run trials, MLflow logging waits for a free moment rather than slowing a trial down.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Callable

NICE = 10  # priority drop of the logging thread (Linux only: nice applies per thread there)


class TrackingThread:
    """A :class:`~autoprune.tracking.StudyTracker` whose per-trial updates run on a background thread.

    Use :meth:`start` and :meth:`finish` as the tracker's own; :meth:`trial_done` only queues.
    ``busy_seconds`` is the time the thread spent in ``trial_done`` calls, ``calls`` their number.
    """

    def __init__(self, tracker: Any, *, log: Callable[[str], None] = print) -> None:
        self.tracker = tracker
        self.log = log
        self.busy_seconds = 0.0
        self.calls = 0
        self._queue: queue.Queue[tuple[Sequence[Any], Any] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.started = False

    def start(self, study: Any, dense: Mapping[str, float]) -> None:
        """Start the tracker (in this thread: a store error stops the study before it starts), then the thread."""
        self.tracker.start(study, dense)
        self.started = True
        self._thread = threading.Thread(target=self._work, name="autoprune-mlflow", daemon=True)
        self._thread.start()

    def trial_done(self, trials: Sequence[Any], frame: Any = None) -> None:
        """Queue the tracker's update for the trials as they are now (a list the caller does not change)."""
        if self._thread is None:
            self.tracker.trial_done(trials, frame)
        else:
            self._queue.put((trials, frame))

    def drain(self) -> None:
        """Wait until every queued update is done, and stop the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def finish(self, study: Any, *, status: str = "FINISHED") -> None:
        """Let the queued updates finish, then end the tracker's parent run with ``status``."""
        self.drain()
        self.tracker.finish(study, status=status)

    def _work(self) -> None:
        if sys.platform.startswith("linux"):
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
            except OSError:
                pass
        failed = False
        while (item := self._queue.get()) is not None:
            began = time.perf_counter()
            try:
                self.tracker.trial_done(*item)
            except Exception as exc:  # the tracker guards its own store errors; anything else must not kill the thread
                if not failed:
                    self.log(f"MLflow: update failed ({type(exc).__name__}: {exc}); the end of the study catches up")
                failed = True
            finally:
                self.busy_seconds += time.perf_counter() - began
                self.calls += 1
