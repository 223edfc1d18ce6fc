from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from autoprune.errors import AutopruneError
from autoprune.lock import StudyLock


def test_lock_is_exclusive_and_names_the_owner(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".lock").write_text(json.dumps({"pid": holder.pid, "host": __import__("socket").gethostname()}))
        with pytest.raises(AutopruneError, match=f"being run by process {holder.pid}"):
            StudyLock(tmp_path / ".lock").acquire()
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(json.dumps({"pid": dead.pid, "host": __import__("socket").gethostname()}))
    notes: list[str] = []
    with StudyLock(tmp_path / ".lock", log=notes.append) as lock:
        assert lock.owner()["pid"] != dead.pid
    assert "stale" in notes[0] and not (tmp_path / ".lock").exists()


def test_release_removes_only_our_lock(tmp_path: Path) -> None:
    lock = StudyLock(tmp_path / ".lock")
    lock.acquire()
    assert (tmp_path / ".lock").exists()
    lock.release()
    assert not (tmp_path / ".lock").exists()


def test_a_second_lock_in_the_same_process_is_refused(tmp_path: Path) -> None:
    with StudyLock(tmp_path / ".lock"):
        with pytest.raises(AutopruneError, match="being run by process"):
            StudyLock(tmp_path / ".lock").acquire()
