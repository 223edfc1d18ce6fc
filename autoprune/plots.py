"""Pictures of a study's trials and its Pareto front: ``pareto.html`` and ``pareto.png``.

Every finished trial is one point, placed by its objectives — a latency objective by its
isolated re-timing where one exists (``latency_ms_isolated``, :mod:`autoprune.retime`), the
value the front is computed from, so a front point never looks dominated. Three groups are
drawn apart so the front stands out:

* **pareto front** — feasible trials no feasible trial dominates (the ``pareto`` column of
  ``trials.csv``);
* **feasible** — the other feasible trials;
* **infeasible** — trials that broke a constraint, greyed out (never on the front).

Failed trials have no metrics and are not drawn. When the study has baselines
(``autoprune baselines``, :mod:`autoprune.baselines`), their finished points are drawn too,
as black crosses named by method and sparsity, so the front can be read against them. The axes are the study's objectives; a
study with fewer than three objectives is shown against the first of ``accuracy``,
``sparsity``, ``latency_ms``, ``macs`` it does not optimise, so that there is always a
3-D view and three 2-D projections (one per pair of axes).

``pareto.html`` (:func:`write_pareto_html`) is interactive and self-contained (plotly.js is
embedded, so it opens offline): the 3-D view on top, the projections below, each a
``.plotly-graph-div`` whose traces are named after the groups above; hovering a point shows
its trial number, policy summary and metrics. ``pareto.png`` (:func:`write_pareto_png`) is
the static projections, drawn with matplotlib's object API (no GUI backend involved).
"""

from __future__ import annotations

import html
import itertools
import os
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import pandas as pd

FILLERS = ("accuracy", "sparsity", "latency_ms", "macs", "params")
GROUPS = (  # name, colour, marker size, opacity
    ("pareto front", "#d62728", 9, 1.0),
    ("feasible", "#1f77b4", 7, 0.8),
    ("infeasible", "#b0b0b0", 6, 0.6),
)
BASELINES = ("baselines", "#111111")  # name, colour (drawn as crosses)
PLOT_FILES = ("pareto.html", "pareto.png")  # what write_plots writes into a study folder
MAX_PROJECTIONS = 6
PROJECTION_SIZE = (460, 420)  # pixels (width, height) of each 2-D view
LABELS = {
    "accuracy": "accuracy (validation)",
    "accuracy_drop": "accuracy drop",
    "sparsity": "sparsity",
    "latency_ms": "latency (ms)",
    "params": "parameters",
    "params_nonzero": "non-zero parameters",
    "macs": "MACs",
    "size_bytes": "size (bytes)",
    "speedup": "speedup (×)",
}


def placed(frame: pd.DataFrame, objectives: Mapping[str, str]) -> pd.DataFrame:
    """``frame`` with each latency objective replaced by its isolated value where one exists.

    The same substitution :func:`autoprune.results.trials_frame` makes to compute the
    ``pareto`` column, so points sit where the front was decided.
    """
    from autoprune.results import isolated_values

    return isolated_values(frame, objectives)


def plot_axes(objectives: Mapping[str, str]) -> list[str]:
    """The metrics on the axes: the objectives, padded from :data:`FILLERS` to three."""
    axes = list(objectives)
    for name in FILLERS:
        if len(axes) >= 3:
            break
        if name not in axes:
            axes.append(name)
    return axes


def projections(axes: Sequence[str]) -> list[tuple[str, str]]:
    """The 2-D views: each pair of axes, at most :data:`MAX_PROJECTIONS`."""
    return list(itertools.combinations(axes, 2))[:MAX_PROJECTIONS]


def _label(name: str, objectives: Mapping[str, str]) -> str:
    arrow = {"max": " ↑", "min": " ↓"}.get(objectives.get(name, ""), "")
    return LABELS.get(name, name) + arrow


def point_groups(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Finished trials split into the three groups of the module docstring."""
    if frame.empty:
        return {name: frame for name, *_ in GROUPS}
    finished = frame[frame["state"] == "finished"]
    feasible = finished["feasible"].astype(bool)
    pareto = finished["pareto"].astype(bool) if "pareto" in finished else feasible & False
    return {
        "pareto front": finished[feasible & pareto],
        "feasible": finished[feasible & ~pareto],
        "infeasible": finished[~feasible],
    }


def _hover(axes: Sequence[str], objectives: Mapping[str, str]) -> str:
    lines = ["<b>trial %{customdata[0]}</b> (%{customdata[2]})", "%{customdata[1]}"]
    lines += [f"{_label(name, objectives)}: %{{customdata[{3 + i}]:.4~g}}" for i, name in enumerate(axes)]
    return "<br>".join(lines) + "<extra></extra>"


def _customdata(rows: pd.DataFrame, group: str, axes: Sequence[str], summaries: Mapping[int, str]) -> list[list]:
    return [
        [int(row["number"]), summaries.get(int(row["number"]), ""), group, *(float(row[name]) for name in axes)]
        for _, row in rows.iterrows()
    ]


def _traces(frame: pd.DataFrame, axes: Sequence[str], objectives: Mapping[str, str],
            summaries: Mapping[int, str], three_d: bool) -> Iterator[object]:
    import plotly.graph_objects as go

    shown = list(dict.fromkeys(plot_axes(objectives) + list(axes)))
    hover = _hover(shown, objectives)
    for name, colour, size, opacity in GROUPS:
        rows = point_groups(frame)[name].dropna(subset=list(axes))
        common = dict(
            name=name, mode="markers", customdata=_customdata(rows, name, shown, summaries), hovertemplate=hover,
            opacity=opacity, legendgroup=name,
        )
        coords = {key: rows[axis].astype(float).tolist() for key, axis in zip("xyz", axes)}
        if three_d:
            yield go.Scatter3d(**coords, marker=dict(color=colour, size=size * 0.6), **common)
        else:
            yield go.Scatter(**coords, marker=dict(color=colour, size=size, line=dict(width=0.5, color="#333")),
                             **common)


def baseline_points(baselines: pd.DataFrame | None, axes: Sequence[str]) -> pd.DataFrame:
    """The finished baselines with every axis measured (empty when there are none)."""
    if baselines is None or baselines.empty or not set(axes) <= set(baselines.columns):
        return pd.DataFrame(columns=["method", "target_sparsity", *axes])
    return baselines[baselines["state"] == "finished"].dropna(subset=list(axes))


def _baseline_trace(baselines: pd.DataFrame | None, axes: Sequence[str], objectives: Mapping[str, str],
                    three_d: bool) -> list[object]:
    import plotly.graph_objects as go

    rows = baseline_points(baselines, axes)
    if rows.empty:
        return []
    labels = [f"{method} @ {float(s):g}" for method, s in zip(rows["method"], rows["target_sparsity"])]
    lines = ["<b>baseline %{text}</b>"] + [f"{_label(n, objectives)}: %{{{k}:.4~g}}" for k, n in zip("xyz", axes)]
    common = dict(name=BASELINES[0], mode="markers", text=labels, hovertemplate="<br>".join(lines) + "<extra></extra>",
                  legendgroup=BASELINES[0])
    coords = {key: rows[axis].astype(float).tolist() for key, axis in zip("xyz", axes)}
    if three_d:
        return [go.Scatter3d(**coords, marker=dict(color=BASELINES[1], size=4, symbol="x"), **common)]
    return [go.Scatter(**coords, marker=dict(color=BASELINES[1], size=9, symbol="x"), **common)]


def pareto_figures(frame: pd.DataFrame, objectives: Mapping[str, str], *,
                   summaries: Mapping[int, str] | None = None,
                   baselines: pd.DataFrame | None = None) -> list[object]:
    """The plotly figures of ``pareto.html``: the 3-D view, then one per projection.

    Args:
        frame: the trials table (:func:`autoprune.results.trials_frame`).
        objectives: metric name → ``"max"``/``"min"``.
        summaries: trial number → one-line policy summary, shown on hover.
        baselines: the study's ``baselines.csv`` table, drawn as crosses when given.
    """
    import plotly.graph_objects as go

    summaries = summaries or {}
    frame = placed(frame, objectives)
    axes = plot_axes(objectives)
    figures = []
    if len(axes) >= 3:
        view = go.Figure(list(_traces(frame, axes[:3], objectives, summaries, three_d=True))
                         + _baseline_trace(baselines, axes[:3], objectives, three_d=True))
        view.update_layout(
            title=dict(text="3-D view (drag to turn)", font_size=14), height=620, margin=dict(l=0, r=0, t=50, b=0),
            scene=dict(aspectmode="cube", camera=dict(eye=dict(x=1.7, y=1.7, z=1.1)),
                       **{f"{key}axis_title": _label(axis, objectives) for key, axis in zip("xyz", axes)}),
        )
        figures.append(view)
    for x, y in projections(axes):
        flat = go.Figure(list(_traces(frame, (x, y), objectives, summaries, three_d=False))
                         + _baseline_trace(baselines, (x, y), objectives, three_d=False))
        flat.update_layout(
            title=dict(text=f"{LABELS.get(y, y)} vs {LABELS.get(x, x)}", font_size=14), width=PROJECTION_SIZE[0],
            height=PROJECTION_SIZE[1], margin=dict(l=60, r=20, t=50, b=50),
            xaxis_title=_label(x, objectives), yaxis_title=_label(y, objectives), showlegend=False,
        )
        figures.append(flat)
    return figures


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 1em; margin-top: 1em; }}
.view {{ border: 1px solid #ddd; border-radius: 6px; padding: 4px; }}
p.note {{ color: #555; }}
</style></head>
<body>
<h1>{title}</h1>
<p class="note">{note}</p>
<div class="view" data-view="3d">{main}</div>
<div class="grid">{grid}</div>
</body></html>
"""


def pareto_html(frame: pd.DataFrame, objectives: Mapping[str, str], *, title: str,
                summaries: Mapping[int, str] | None = None, baselines: pd.DataFrame | None = None) -> str:
    """The text of ``pareto.html`` (plotly.js embedded once, so the page works offline)."""
    figures = pareto_figures(frame, objectives, summaries=summaries, baselines=baselines)
    config = {"displaylogo": False}
    parts = [
        figure.to_html(full_html=False, include_plotlyjs=index == 0, div_id=f"view-{index}", config=config,
                       default_width="100%" if index == 0 else f"{PROJECTION_SIZE[0]}px")
        for index, figure in enumerate(figures)
    ]
    groups = point_groups(frame)
    counts = ", ".join(f"{len(groups[name])} {name}" for name, *_ in GROUPS)
    failed = int((frame["state"] == "failed").sum()) if not frame.empty else 0
    goal = ", ".join(f"{name} {'↑' if d == 'max' else '↓'}" for name, d in objectives.items())
    shown = len(baseline_points(baselines, plot_axes(objectives)))
    extra = f" Baselines (black crosses): {shown}." if shown else ""
    note = html.escape(f"Objectives: {goal}. Trials: {counts}, {failed} failed (not drawn).{extra} "
                       "Hover a point for its trial number and policy.")
    grid = "".join(f'<div class="view" data-view="2d">{part}</div>' for part in parts[1:])
    return PAGE.format(title=html.escape(title), note=note, main=parts[0], grid=grid)


def _atomic_write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def write_pareto_html(frame: pd.DataFrame, objectives: Mapping[str, str], path: str | Path, *, title: str,
                      summaries: Mapping[int, str] | None = None, baselines: pd.DataFrame | None = None) -> Path:
    """Write :func:`pareto_html` to ``path`` atomically."""
    text = pareto_html(frame, objectives, title=title, summaries=summaries, baselines=baselines)
    return _atomic_write(Path(path), text.encode())


def write_pareto_png(frame: pd.DataFrame, objectives: Mapping[str, str], path: str | Path, *, title: str,
                     baselines: pd.DataFrame | None = None) -> Path:
    """Write the 2-D projections as one PNG (front red, feasible blue, infeasible grey, baselines black ×)."""
    import io

    from matplotlib.figure import Figure

    pairs = projections(plot_axes(objectives))
    columns = min(3, len(pairs))
    rows = -(-len(pairs) // columns)
    figure = Figure(figsize=(4.6 * columns, 4.0 * rows + 0.6), dpi=110, layout="constrained")
    figure.suptitle(title)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    groups = point_groups(placed(frame, objectives))
    for ax, (x, y) in zip(axes, pairs):
        for name, colour, size, opacity in reversed(GROUPS):
            points = groups[name].dropna(subset=[x, y])
            ax.scatter(points[x].astype(float), points[y].astype(float), s=size * 5, c=colour, alpha=opacity,
                       edgecolors="#333" if name != "infeasible" else "none", linewidths=0.4, label=name)
        crosses = baseline_points(baselines, (x, y))
        if len(crosses):
            ax.scatter(crosses[x].astype(float), crosses[y].astype(float), s=40, c=BASELINES[1], marker="x",
                       linewidths=1.2, label=BASELINES[0])
        ax.set_xlabel(_label(x, objectives))
        ax.set_ylabel(_label(y, objectives))
        ax.grid(alpha=0.3)
    for ax in axes[len(pairs):]:
        ax.set_visible(False)
    axes[0].legend(loc="best", fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return _atomic_write(Path(path), buffer.getvalue())


def write_plots(frame: pd.DataFrame, objectives: Mapping[str, str], folder: str | Path, *, title: str,
                summaries: Mapping[int, str] | None = None,
                baselines: pd.DataFrame | None = None) -> tuple[Path, Path]:
    """Write ``pareto.html`` and ``pareto.png`` into ``folder`` (baselines drawn when given)."""
    folder = Path(folder)
    page = write_pareto_html(frame, objectives, folder / PLOT_FILES[0], title=title, summaries=summaries,
                             baselines=baselines)
    image = write_pareto_png(frame, objectives, folder / PLOT_FILES[1], title=title, baselines=baselines)
    return page, image
