"""One study, one writer: a lock file with the owner's PID.

Two drivers writing one study would interleave trials in the Optuna study and overwrite each
other's CSV files. ``autoprune search`` therefore holds ``studies/<study>/.lock`` while it
runs. The lock is a file created atomically (``O_CREAT | O_EXCL``) holding the owner's PID,
host name and start time:

* a second ``search`` on the same study is refused with a message naming the owner's PID;
* a lock left by a process that no longer exists on this host (the driver was killed) is
  *stale*: it is taken over, with a note;
* a lock from another host cannot be checked and is respected (remove it by hand when sure).

Example::

    with StudyLock(paths.folder / ".lock"):
        ...  # run the study
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable

from autoprune.errors import AutopruneError


def _process_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists on this host (zombies count as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


class StudyLock:
    """An exclusive, PID-stamped lock on one study folder (a context manager)."""

    def __init__(self, path: Path, *, log: Callable[[str], None] = print) -> None:
        self.path = Path(path)
        self.log = log
        self.held = False

    def owner(self) -> dict[str, Any] | None:
        """The current lock's contents, or ``None`` when there is no readable lock."""
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def acquire(self) -> None:
        """Take the lock, taking over a stale one; raise :class:`AutopruneError` if it is held."""
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        for _ in range(3):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._refuse_or_clear()
                continue
            with os.fdopen(descriptor, "w") as handle:
                json.dump(record, handle)
            self.held = True
            return
        raise AutopruneError(f"{self.path}: could not take the study lock (it keeps changing hands)")

    def _refuse_or_clear(self) -> None:
        owner = self.owner()
        if owner is None:
            # Unreadable: a writer is between create and write, or the file is corrupt.
            age = time.time() - self.path.stat().st_mtime if self.path.exists() else 0
            if age < 5:
                time.sleep(0.2)
                return
            self.log(f"removing an unreadable study lock {self.path}")
            self.path.unlink(missing_ok=True)
            return
        pid, host = int(owner.get("pid", -1)), owner.get("host", "")
        if host == socket.gethostname() and not _process_alive(pid):
            self.log(f"taking over a stale study lock of process {pid}, which no longer runs")
            self.path.unlink(missing_ok=True)
            return
        where = "" if host == socket.gethostname() else f" on host {host}"
        raise AutopruneError(
            f"{self.path.parent.name}: the study is being run by process {pid}{where} (lock {self.path}); "
            "wait for it to finish or stop it, or use --name for another study"
        )

    def release(self) -> None:
        """Remove the lock if this process holds it."""
        if self.held:
            owner = self.owner()
            if owner is not None and owner.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> StudyLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
