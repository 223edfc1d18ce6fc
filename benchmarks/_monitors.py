"""What a benchmark run used: busy cores and memory of this process tree, polled from ``/proc``.

Shared by ``overhead.py`` and ``load.py``. :class:`TreeMonitor` runs a block and reports

* **cores**: the whole machine's busy cores (``/proc/stat``), this process with all its
  descendants (pool workers, Ray, trial workers), and the difference, other jobs;
* **memory**: the driver's RSS high-water mark (``VmHWM`` of this process, reset at the start
  of the block through ``/proc/self/clear_refs`` so that it covers the block only), the
  largest RSS any Ray trial worker reached, and the largest sum of RSS over the whole tree
  (shared pages, e.g. the object store's mapped tensors, count once per process there).

Descendants are polled every ``interval`` s: a process that ends between polls loses at most
that much CPU time, and a worker's memory peak between polls is missed (sampled, not exact).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from autoprune.procs import process_stats

PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")
MB = 1024 * 1024
TRIAL_WORKER = "ray::ImplicitFunc"  # Ray's process title of a function trainable's actor


def busy_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine since boot, from ``/proc/stat``."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4], sum(fields)


def _table() -> tuple[dict[int, tuple[tuple[int, int], int, int]], dict[int, list[int]]]:
    """Every process: pid → ((pid, start time), user + system jiffies, RSS bytes); and children by parent."""
    table, children = {}, {}
    for pid, fields in process_stats():
        table[pid] = ((pid, int(fields[19])), int(fields[11]) + int(fields[12]), int(fields[21]) * PAGE)
        children.setdefault(int(fields[1]), []).append(pid)
    return table, children


def tree() -> dict[tuple[int, int], tuple[int, int]]:
    """This process and every descendant: (pid, start time) → (CPU jiffies, RSS bytes)."""
    table, children = _table()
    found, todo = {}, [os.getpid()]
    while todo:
        pid = todo.pop()
        if pid in table:
            found[table[pid][0]] = table[pid][1:]
            todo.extend(children.get(pid, []))
    return found


def own_jiffies() -> dict[tuple[int, int], int]:
    """User + system jiffies of this process and every descendant, by (pid, start time)."""
    return {key: cpu for key, (cpu, _) in tree().items()}


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return ""


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (``VmHWM``); whether the kernel allowed it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """This process's RSS high-water mark in bytes (``VmHWM``), 0 where unknown."""
    return _status_kb("VmHWM") * 1024


def current_rss() -> int:
    """This process's RSS in bytes now (``VmRSS``)."""
    return _status_kb("VmRSS") * 1024


def _status_kb(key: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreeMonitor:
    """Busy cores and memory of the machine / this process tree over a ``with`` block (see the module)."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval, self.stop = interval, threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.titles: dict[tuple[int, int], str] = {}
        self.worker_peak = 0
        self.tree_peak = 0
        self.driver_sampled_peak = 0

    def _sample(self) -> None:
        now = tree()
        self.last.update({key: cpu for key, (cpu, _) in now.items()})
        self.tree_peak = max(self.tree_peak, sum(rss for _, rss in now.values()))
        for key, (_, rss) in now.items():
            if key[0] == os.getpid():
                self.driver_sampled_peak = max(self.driver_sampled_peak, rss)
                continue
            if not self.titles.get(key, "").startswith(TRIAL_WORKER):  # an idle worker becomes a trial's later
                self.titles[key] = _title(key[0])
            if self.titles[key].startswith(TRIAL_WORKER):
                self.worker_peak = max(self.worker_peak, rss)

    def _poll(self) -> None:
        while not self.stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> TreeMonitor:
        self.reset = reset_peak_rss()
        self.driver_start = current_rss()
        self.first = own_jiffies()
        self.last = dict(self.first)
        self.machine, self.started = busy_jiffies(), time.time()
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()
        self._sample()
        seconds, (busy, total) = time.time() - self.started, busy_jiffies()
        machine = (busy - self.machine[0]) / max(1, total - self.machine[1]) * (os.cpu_count() or 1)
        own = sum(v - self.first.get(k, 0) for k, v in self.last.items()) / TICK / seconds
        driver = peak_rss() if self.reset else self.driver_sampled_peak
        self.values = {
            "busy_cores": machine, "own_cores": own, "other_cores": max(0.0, machine - own),
            "driver_peak_rss_mb": driver / MB, "driver_peak_exact": self.reset,
            "driver_start_rss_mb": self.driver_start / MB,
            "worker_peak_rss_mb": self.worker_peak / MB, "tree_peak_rss_mb": self.tree_peak / MB,
        }

    def result(self) -> dict[str, Any]:
        """Cores (``busy_cores``, ``own_cores``, ``other_cores``) and memory (``*_rss_mb``) over the block."""
        return self.values
