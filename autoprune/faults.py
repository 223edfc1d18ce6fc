"""Deliberate faults, for proving that a study survives them.

Reliability tests and benchmarks need trials that fail in controlled ways: one that raises,
one whose loss turns NaN, one whose worker process is killed, one that runs out of memory.
A :class:`FaultPlan` names the Optuna trial numbers that misbehave and how; the search
driver hands it to every trial (``SearchOptions.faults``), and :meth:`FaultPlan.apply` runs
at the start of the trial. It is reachable from the Python API only, never from a space file
or a command-line flag.

Example::

    plan = FaultPlan(raise_on=(1,), nan_on=(2,), kill_once_on=(3,), marker_dir="/tmp/faults")
    run_search(space, SearchOptions(faults=plan))
"""

from __future__ import annotations

import dataclasses
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from autoprune.context import TrialContext


class InjectedFault(RuntimeError):
    """The exception a :class:`FaultPlan` raises on purpose."""


@dataclass(frozen=True)
class FaultPlan:
    """Which trials fail, and how.

    Attributes:
        raise_on: trial numbers that raise :class:`InjectedFault`.
        nan_on: trial numbers whose training data is replaced by NaN (the loss diverges).
        memory_error_on: trial numbers that raise ``MemoryError``.
        kill_once_on: trial numbers whose worker process SIGKILLs itself on the first attempt
            only (a marker file in ``marker_dir`` remembers the attempt), so a retry succeeds.
        kill_always_on: trial numbers whose worker SIGKILLs itself on every attempt.
        marker_dir: where ``kill_once_on`` leaves its markers.
    """

    raise_on: tuple[int, ...] = ()
    nan_on: tuple[int, ...] = ()
    memory_error_on: tuple[int, ...] = ()
    kill_once_on: tuple[int, ...] = ()
    kill_always_on: tuple[int, ...] = ()
    marker_dir: str | None = None

    def apply(self, trial_number: int, context: TrialContext) -> TrialContext:
        """Misbehave as planned for ``trial_number``; returns the context the trial should use."""
        if trial_number in self.kill_always_on:
            os.kill(os.getpid(), signal.SIGKILL)
        if trial_number in self.kill_once_on:
            if self.marker_dir is None:
                raise ValueError("kill_once_on needs marker_dir")
            marker = Path(self.marker_dir) / f"killed-{trial_number}"
            if not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
                os.kill(os.getpid(), signal.SIGKILL)
        if trial_number in self.raise_on:
            raise InjectedFault(f"injected failure in trial {trial_number}")
        if trial_number in self.memory_error_on:
            raise MemoryError(f"injected out-of-memory in trial {trial_number}")
        if trial_number in self.nan_on:
            data = context.data
            poisoned = dataclasses.replace(data, train_x=data.train_x.clone().fill_(float("nan")))
            return dataclasses.replace(context, data=poisoned)
        return context
