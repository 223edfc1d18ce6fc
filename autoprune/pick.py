"""Choosing the one trial of a study to export: ``--trial N``, ``--pick EXPR`` or the default.

**Candidates** are the study's feasible Pareto points: the ``pareto`` column of
:func:`autoprune.results.trials_frame`, where the front is computed with isolated latencies
when latency is an objective. ``--trial N`` may name any finished, feasible trial instead.

**Pick expressions** are parsed here, never evaluated as Python::

    expr    := clause (("and" | ",") clause)*
    clause  := METRIC OP NUMBER ["%"]
    OP      := "<=" | ">=" | "<" | ">" | "=="

e.g. ``accuracy_drop<=0.01``, ``accuracy_drop <= 1% and sparsity >= 0.8``,
``latency_ms_isolated<0.05, accuracy>=0.95``. ``NUMBER%`` is ``NUMBER / 100``. METRIC is
one of :data:`PICKABLE` (validation metrics: the test split is never used to choose).

**Ranking** (the tie-break among the candidates a pick keeps, and of the default rule):
lowest latency (``latency_ms_isolated`` when measured, else ``latency_ms``), then highest
``sparsity``, then highest ``accuracy``, then the lowest trial number. Candidates with the
same architecture share one isolated latency, so unstructured candidates (all of the dense
architecture) tie on latency and are ranked by sparsity.

**Default rule** (neither ``--trial`` nor ``--pick``): the pick ``accuracy_drop <= 0.01``
(within one point of the dense model's validation accuracy), ranked as above; when no
candidate is that close, the candidate with the highest ``accuracy``.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass

import pandas as pd

from autoprune.errors import AutopruneError
from autoprune.results import METRIC_COLUMNS

PICKABLE = (*METRIC_COLUMNS, "latency_ms_isolated", "speedup_isolated")
DEFAULT_PICK = "accuracy_drop <= 0.01"
OPERATORS = ("<=", ">=", "==", "<", ">")
_TOKEN = re.compile(
    r"\s*(?:(?P<op><=|>=|==|<|>)|(?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?%?)"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_]*)|(?P<comma>,)|(?P<other>\S))"
)
_SHOWN = ("accuracy", "accuracy_drop", "sparsity")


@dataclass(frozen=True)
class Clause:
    """One ``metric OP value`` condition of a pick expression."""

    metric: str
    op: str
    value: float

    def holds(self, row: pd.Series) -> bool:
        """Whether the candidate ``row`` satisfies the clause (a missing value never does)."""
        actual = float(row.get(self.metric, math.nan))
        if math.isnan(actual):
            return False
        if self.op == "==":
            return math.isclose(actual, self.value, rel_tol=1e-9, abs_tol=1e-12)
        return {"<=": actual <= self.value, ">=": actual >= self.value,
                "<": actual < self.value, ">": actual > self.value}[self.op]

    def shortfall(self, row: pd.Series) -> float:
        """How far ``row`` is from satisfying the clause, relative to the bound (0 if it does)."""
        if self.holds(row):
            return 0.0
        actual = float(row.get(self.metric, math.nan))
        if math.isnan(actual):
            return math.inf
        return abs(actual - self.value) / max(abs(self.value), 1e-12)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"


def parse_pick(text: str) -> list[Clause]:
    """Parse a pick expression (see the module docstring); one-line errors name ``--pick``."""
    where = f"--pick {text!r}"
    tokens = [(m.lastgroup, m.group(m.lastgroup), m.start(m.lastgroup) + 1) for m in _TOKEN.finditer(text)]
    tokens = [t for t in tokens if t[0] is not None]
    grammar = f"expected METRIC OP NUMBER clauses joined by 'and' or ','; OP is one of {', '.join(OPERATORS)}"
    if not tokens:
        raise AutopruneError(f"{where}: empty; {grammar}")
    clauses: list[Clause] = []
    index = 0
    while True:
        metric, op, number = (tokens[index:index + 3] + [(None, "", len(text) + 1)] * 3)[:3]
        if metric[0] != "word" or metric[1] == "and":
            raise AutopruneError(f"{where}: column {metric[2]}: expected a metric name, got {metric[1] or 'the end'!r}; "
                                 f"{grammar}")
        _check_metric(metric[1], where)
        if op[0] != "op":
            raise AutopruneError(f"{where}: column {op[2]}: expected one of {', '.join(OPERATORS)} after "
                                 f"{metric[1]!r}, got {op[1] or 'the end'!r}")
        if number[0] != "number":
            raise AutopruneError(f"{where}: column {number[2]}: expected a number after {op[1]!r}, "
                                 f"got {number[1] or 'the end'!r}")
        raw = number[1]
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
        clauses.append(Clause(metric[1], op[1], value))
        index += 3
        if index >= len(tokens):
            return clauses
        kind, word, column = tokens[index]
        if not (kind == "comma" or (kind == "word" and word.lower() == "and")):
            raise AutopruneError(f"{where}: column {column}: expected 'and' or ',' between clauses, got {word!r}")
        index += 1
        if index >= len(tokens):
            raise AutopruneError(f"{where}: ends after {word!r}; {grammar}")


def _check_metric(name: str, where: str) -> None:
    if name in PICKABLE:
        return
    if name == "test_accuracy":
        raise AutopruneError(f"{where}: test_accuracy is measured only for the exported model; "
                             "pick with validation metrics (accuracy, accuracy_drop)")
    close = difflib.get_close_matches(name, PICKABLE, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise AutopruneError(f"{where}: unknown metric {name!r}{hint}; metrics: {', '.join(PICKABLE)}")


def latency_key(frame: pd.DataFrame) -> pd.Series:
    """Each row's latency for ranking: ``latency_ms_isolated`` when measured, else ``latency_ms``."""
    latency = frame["latency_ms"].astype(float) if "latency_ms" in frame else pd.Series(math.nan, index=frame.index)
    if "latency_ms_isolated" in frame:
        isolated = frame["latency_ms_isolated"].astype(float)
        latency = isolated.where(isolated.notna(), latency)
    return latency


def rank(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` sorted best first: lowest latency, highest sparsity, highest accuracy, lowest number."""
    keyed = frame.assign(_latency=latency_key(frame), _sparsity=-frame["sparsity"].astype(float),
                         _accuracy=-frame["accuracy"].astype(float))
    ordered = keyed.sort_values(["_latency", "_sparsity", "_accuracy", "number"], na_position="last", kind="stable")
    return ordered.drop(columns=["_latency", "_sparsity", "_accuracy"])


def candidates(frame: pd.DataFrame) -> pd.DataFrame:
    """The feasible Pareto points of a trials frame (its ``pareto`` column)."""
    if frame.empty or "pareto" not in frame:
        return frame.iloc[0:0]
    return frame[frame["pareto"].astype(bool)]


@dataclass
class Choice:
    """The chosen trial and why (one line for the user)."""

    number: int
    reason: str


def choose_trial(frame: pd.DataFrame, *, trial: int | None = None, pick: str | None = None) -> Choice:
    """The trial to export from a study's trials frame (see the module docstring).

    Raises:
        AutopruneError: ``trial`` is unknown, failed or infeasible; ``pick`` does not parse or
            matches no candidate (the message names the closest candidates); the study has
            no feasible Pareto point.
    """
    if trial is not None and pick is not None:
        raise AutopruneError("--trial and --pick: give one of them, not both")
    if trial is not None:
        return Choice(_check_trial(frame, trial), f"trial {trial} (--trial)")
    clauses = parse_pick(pick) if pick is not None else None
    pool = candidates(frame)
    if pool.empty:
        finished = int((frame["state"] == "finished").sum()) if len(frame) else 0
        raise AutopruneError(f"the study has no feasible Pareto point to export ({finished} finished trials); "
                             "relax constraints.accuracy_drop or run more trials")
    if clauses is None:
        kept = pool[[all(c.holds(row) for c in parse_pick(DEFAULT_PICK)) for _, row in pool.iterrows()]]
        if kept.empty:
            best = pool.sort_values(["accuracy", "number"], ascending=[False, True]).iloc[0]
            return Choice(int(best["number"]), f"trial {int(best['number'])}: no Pareto point within 1 accuracy point "
                                               "of the dense model; the most accurate one (default rule)")
        best = rank(kept).iloc[0]
        return Choice(int(best["number"]), f"trial {int(best['number'])}: {DEFAULT_PICK}, then lowest latency, "
                                           "highest sparsity (default rule)")
    kept = pool[[all(c.holds(row) for c in clauses) for _, row in pool.iterrows()]]
    if kept.empty:
        raise AutopruneError(f"--pick {pick!r}: no feasible Pareto point matches; closest: {_closest(pool, clauses)}")
    best = rank(kept).iloc[0]
    return Choice(int(best["number"]), f"trial {int(best['number'])}: {len(kept)} of {len(pool)} Pareto points match "
                                       f"{pick!r}; lowest latency, then highest sparsity")


def _check_trial(frame: pd.DataFrame, number: int) -> int:
    rows = frame[frame["number"] == number] if len(frame) else frame
    if rows.empty:
        numbers = frame["number"].astype(int) if len(frame) else pd.Series(dtype=int)
        span = f"trials {numbers.min()}–{numbers.max()}" if len(numbers) else "no trials"
        raise AutopruneError(f"--trial {number}: no such trial; the study has {span}")
    row = rows.iloc[0]
    if row["state"] != "finished":
        error = str(row.get("error") or "").strip()
        raise AutopruneError(f"--trial {number}: the trial {row['state']}" + (f" ({error})" if error else "")
                             + "; export a finished trial")
    if not bool(row["feasible"]):
        raise AutopruneError(f"--trial {number}: the trial is infeasible (accuracy_drop {float(row['accuracy_drop']):.4f} "
                             "breaks constraints.accuracy_drop); export a feasible trial")
    return number


def _closest(pool: pd.DataFrame, clauses: list[Clause], limit: int = 3) -> str:
    """The candidates nearest to satisfying ``clauses``, as ``trial N (metric value, ...)``."""
    misses = [sum(c.shortfall(row) for c in clauses) for _, row in pool.iterrows()]
    ordered = rank(pool.assign(_miss=misses)).sort_values("_miss", kind="stable").head(limit)
    parts = []
    for _, row in ordered.iterrows():
        latency = "latency_ms_isolated" if pd.notna(row.get("latency_ms_isolated", math.nan)) else "latency_ms"
        shown = list(dict.fromkeys([c.metric for c in clauses] + list(_SHOWN) + [latency]))
        values = ", ".join(f"{name} {float(row[name]):.4g}" for name in shown if name in row and pd.notna(row[name]))
        parts.append(f"trial {int(row['number'])} ({values})")
    return "; ".join(parts)
