"""The Ray cluster of a search: started while the driver prepares, stopped while it finishes.

Starting a local Ray cluster takes seconds (GCS, raylet and dashboard processes: about 5 s
on 2 cores), and so does stopping it (about 1.3 s). The driver has other work that does not
need Ray: the MLflow parent run and seeding the study before, the MLflow catch-up and plots
after. :class:`RayCluster` therefore runs ``ray.init`` on a background thread while that work
goes on, and ``ray.shutdown`` on the same thread when asked to stop.

The same thread, because Ray ties its processes to the thread that started them (Linux's
parent-death signal follows the creating *thread*): if that thread ended, the GCS and the
raylet would be killed with it. The thread therefore lives as long as the cluster.

Nothing may touch Ray while ``ray.shutdown`` runs: Ray ends the whole process (exit code 1,
no traceback) when any thread calls into its core worker during the shutdown. Garbage
collection does so unseen, freeing an object reference or actor handle that Ray Tune left in
a reference cycle. :meth:`RayCluster.stop` therefore collects garbage first, on the calling
thread, while Ray is still up (tests/test_raycluster.py).

``ray.init`` called from a thread other than the main one does not install Ray's SIGTERM
handler (``sys.exit``); :class:`RayCluster` installs the same handler from the main thread,
so a terminated driver still runs its ``finally`` blocks (lock released, MLflow run ended).

Example::

    cluster = RayCluster(options, concurrency_hint=2, log_path=paths.log)  # returns at once
    ...                                   # other driver work
    cluster.wait()                        # Ray is up (or its start error is raised here)
    ...                                   # Tune trials
    cluster.stop()                        # ray.shutdown begins on the owning thread
    ...                                   # other driver work
    cluster.join()                        # Ray is down
"""

from __future__ import annotations

import gc
import logging
import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from autoprune.errors import AutopruneError

RAY_LOGGERS = ("ray", "ray.tune", "ray.train", "ray.data")


class _NoThreadWarning(logging.Filter):
    """Drops Ray's note that ``ray.init`` off the main thread sets no SIGTERM handler (:class:`RayCluster` does)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


def route_ray_logs(log_path: Path) -> None:
    """Send Ray's Python loggers to ``log_path`` (the study's ``search.log``) instead of the terminal.

    Called again after ``ray.init``, which clears the ``ray`` logger's handlers when it is
    told not to configure logging.
    """
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for name in RAY_LOGGERS:
        current = logging.getLogger(name)
        for old in current.handlers:
            old.close()
        current.handlers = [handler]
        current.propagate = False
    logging.getLogger("ray").setLevel(logging.INFO)
    worker = logging.getLogger("ray._private.worker")
    if not any(isinstance(f, _NoThreadWarning) for f in worker.filters):
        worker.addFilter(_NoThreadWarning())


def start_ray(options: Any, concurrency_hint: int, log_path: Path) -> bool:
    """Start a local Ray cluster (or attach to ``options.address``); returns whether this call connected.

    The caller disconnects (``ray.shutdown()``) when it did; a cluster it merely attached to
    keeps running. ``options`` is a :class:`~autoprune.search.SearchOptions`. Errors
    attaching to ``--address`` are one-line :class:`AutopruneError`.
    """
    import ray

    route_ray_logs(log_path)
    if ray.is_initialized():
        return False
    if options.address:
        try:
            ray.init(address=options.address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise AutopruneError(f"--address {options.address}: cannot attach to a Ray cluster: {exc}".splitlines()[0]) from None
        route_ray_logs(log_path)
        return True
    cpus = os.cpu_count() or 1
    if options.gpus > 0:
        cpus = max(cpus, math.ceil(concurrency_hint * options.cpus_per_trial))
    from ray._private import ray_constants

    # Ray swaps a loopback node address for the machine's reachable IP, and its servers then
    # listen on every interface, unless it runs as a single-machine cluster (the mode it uses
    # on macOS and Windows). As one, the GCS, raylet, workers and agents listen on 127.0.0.1
    # only (tests/test_security.py). Restored at once: attaching later must resolve normally.
    multi_node = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(
            address="local",  # always a fresh cluster, never one another user started with `ray start`
            num_cpus=cpus,
            num_gpus=options.gpus,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            _node_ip_address="127.0.0.1",
        )
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = multi_node
    route_ray_logs(log_path)
    return True


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    sys.exit(signum)  # what Ray's own handler does when ray.init runs on the main thread


class RayCluster:
    """:func:`start_ray` on a background thread that owns the cluster until :meth:`stop`."""

    def __init__(self, options: Any, concurrency_hint: int, log_path: Path) -> None:
        self._connected = False
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
        self._thread = threading.Thread(target=self._own, args=(options, concurrency_hint, log_path),
                                        name="autoprune-ray", daemon=True)
        self._thread.start()

    def _own(self, options: Any, concurrency_hint: int, log_path: Path) -> None:
        try:
            self._connected = start_ray(options, concurrency_hint, log_path)
        except BaseException as exc:  # handed to the main thread by wait()
            self._error = exc
        finally:
            self._ready.set()
        if self._connected:
            self._stop.wait()
            import ray

            ray.shutdown()

    def wait(self) -> bool:
        """Block until Ray is up (raising its start error, once); whether this driver connected."""
        self._ready.wait()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return self._connected

    def stop(self) -> None:
        """Let the start finish if it has not, then begin ``ray.shutdown`` (if this driver connected); never raises.

        Unreachable Ray objects are freed first, while Ray is up (see the module docstring);
        the caller must hold no Ray object it could drop before :meth:`join` returns.
        """
        self._ready.wait()
        gc.collect()
        self._stop.set()

    def join(self) -> None:
        """Wait until the cluster is shut down (the owning thread has ended)."""
        self._thread.join()


def trial_concurrency(options: Any) -> int:
    """Trials that run at once: ``--concurrency``, else GPUs / GPUs per trial, else CPUs / CPUs per trial.

    Asking for more GPUs than the cluster has is refused (such trials would wait forever).
    """
    import ray

    resources = ray.cluster_resources()
    if options.concurrency:
        return options.concurrency
    if options.gpus > 0:
        have = resources.get("GPU", 0)
        if options.gpus > have:
            raise AutopruneError(
                f"--gpus {options.gpus:g}: the Ray cluster has only {have:g} GPUs; trials asking for more "
                "would wait forever. Ask for at most that many, or --gpus 0 for CPU trials"
            )
        return max(1, int(options.gpus // options.gpus_per_trial))
    return max(1, int(resources.get("CPU", 1) // options.cpus_per_trial))
