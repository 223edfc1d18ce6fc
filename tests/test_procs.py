from __future__ import annotations

import os
import subprocess
import sys
import time

from autoprune.procs import command_line, descendants, process_stats


def test_the_table_holds_this_process_with_its_parent() -> None:
    stats = dict(process_stats())
    assert stats[os.getpid()][0] in "RS" and int(stats[os.getpid()][1]) == os.getppid()


def test_descendants_include_a_grandchild_and_command_lines_read() -> None:
    code = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'import time; time.sleep(30)', 'grandchild'])"
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        for _ in range(200):
            tree = descendants([os.getpid()]) - {os.getpid(), child.pid}
            if tree:
                break
            time.sleep(0.05)
        assert child.pid in descendants([os.getpid()])
        assert any(command_line(pid).endswith("grandchild") for pid in tree)
    finally:
        for pid in descendants([child.pid]):
            os.kill(pid, 9)
        child.wait()
