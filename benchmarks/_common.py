"""What every benchmark records about the run: machine, versions, commit.

Imported by the benchmark scripts (``python benchmarks/<name>.py`` puts this folder on
``sys.path``), so that each results file names the machine and commit the same way.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The ``model name`` line of /proc/cpuinfo, or ``unknown``."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")


def git_commit() -> str | None:
    """HEAD of the repository (with ``-dirty`` if the tree has changes), or ``None``."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return git("rev-parse", "HEAD") + ("-dirty" if git("status", "--porcelain") else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def machine(**versions: str) -> dict[str, Any]:
    """Platform, CPU, core count, Python, torch and its thread setting, plus ``versions``."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        **versions,
    }
