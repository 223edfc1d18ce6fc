"""The live view of a running study, instead of Ray's raw log stream.

On a terminal :class:`SearchProgress` keeps one compact panel up to date (rich ``Live``):
trials finished / running / failed, elapsed and estimated remaining time, the size of the
Pareto front, and the best feasible accuracy among trials at or above a reference sparsity
(the middle of the space's ``target_sparsity`` range). Elsewhere (CI, a pipe) it prints one
line per finished trial. Ray's own log goes to ``studies/<study>/search.log``.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import pandas as pd
from rich.console import Console
from rich.live import Live
from rich.table import Table

from autoprune.space import SearchSpace


def reference_sparsity(space: SearchSpace) -> float:
    """The sparsity the progress view reports the best accuracy at: mid target range."""
    target = space.space.target_sparsity
    if target.kind == "range":
        return round((target.low + target.high) / 2, 2)
    return float(min(target.options()))


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class SearchProgress:
    """Progress of one study: use as a context manager; call :meth:`trial_done` per trial."""

    def __init__(
        self,
        space: SearchSpace,
        *,
        dense_accuracy: float,
        total: int,
        already: int = 0,
        quiet: bool = False,
        log: Callable[[str], None] = print,
        console: Console | None = None,
    ) -> None:
        self.name = space.study.name
        self.total = total
        self.already = already
        self.dense_accuracy = dense_accuracy
        self.at_sparsity = reference_sparsity(space)
        self.quiet = quiet
        self.log = log
        self.console = console or Console()
        self.started = time.monotonic()
        self.finished = already
        self.failed = 0
        self.running = 0
        self.front = 0
        self.best: float | None = None
        self.live: Live | None = None

    def __enter__(self) -> SearchProgress:
        self.started = time.monotonic()
        if not self.quiet and self.console.is_terminal:
            self.live = Live(self.render(), console=self.console, refresh_per_second=2, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.update(self.render())
            self.live.__exit__(*exc)
            self.live = None

    def trial_done(self, frame: pd.DataFrame, number: int) -> None:
        """Update from the current trials table after trial ``number`` ended."""
        states = frame["state"].value_counts() if len(frame) else {}
        self.finished = int(states.get("finished", 0))
        self.failed = int(states.get("failed", 0))
        self.running = int(states.get("running", 0))
        self.front = int(frame["pareto"].sum()) if len(frame) else 0
        eligible = frame[(frame["state"] == "finished") & frame["feasible"].astype(bool)
                         & (frame["sparsity"] >= self.at_sparsity)] if len(frame) else frame
        self.best = float(eligible["accuracy"].max()) if len(eligible) else None
        if self.live is not None:
            self.live.update(self.render())
        elif not self.quiet:
            rows = frame[frame["number"] == number]
            self.log(self.line(rows.iloc[0] if len(rows) else None))

    def eta(self) -> float | None:
        done_now = self.finished - self.already
        if done_now <= 0:
            return None
        elapsed = time.monotonic() - self.started
        return elapsed / done_now * max(0, self.total - self.finished)

    def line(self, last: Any = None) -> str:
        """One plain-text progress line (used where there is no terminal)."""
        eta = self.eta()
        best = f"{self.best:.4f}" if self.best is not None else "-"
        text = (
            f"[{self.finished}/{self.total} finished, {self.running} running, {self.failed} failed] "
            f"elapsed {_duration(time.monotonic() - self.started)}"
            f"{', eta ' + _duration(eta) if eta is not None else ''}; front {self.front}; "
            f"best accuracy at sparsity>={self.at_sparsity:g}: {best}"
        )
        if last is not None:
            outcome = (
                f"accuracy {last['accuracy']:.4f} sparsity {last['sparsity']:.4f}"
                if last["state"] == "finished"
                else f"failed: {last['error']}"
            )
            text += f" | trial {int(last['number'])} {outcome}"
        return text

    def render(self) -> Table:
        """The live panel."""
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        eta = self.eta()
        elapsed = time.monotonic() - self.started
        table.add_row("study", f"{self.name} (dense accuracy {self.dense_accuracy:.4f})")
        table.add_row("trials", f"{self.finished}/{self.total} finished, {self.running} running, {self.failed} failed")
        table.add_row("time", f"{_duration(elapsed)} elapsed" + (f", about {_duration(eta)} left" if eta else ""))
        table.add_row("pareto front", str(self.front))
        best = f"{self.best:.4f}" if self.best is not None else "none yet"
        table.add_row(f"best acc. @ sparsity>={self.at_sparsity:g}", best)
        return table
