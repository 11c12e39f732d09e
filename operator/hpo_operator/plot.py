"""`hpo plot`: a study's learning curves and its trials over time, drawn from curves.StudyCurves, so a
local study (study.json) and a cluster study (the HPOStudy and its HPOTrials) are drawn alike.

Left: every trial's metric against the resource, one line per trial that reported, with the rungs;
a pruned trial's line ends in a cross at the rung where it was cut (reports it sent past the rung
trail off faintly), the best trial is drawn thick with a star. Right: each trial as a bar over
wall-clock time, coloured by phase, with a tick per report, against the budget's deadline.

Needs matplotlib (the `plot` extra); it draws on a Figure of its own, never pyplot's global one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .curves import StudyCurves, TrialCurve

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

COLOURS = {
    "Completed": "tab:blue",
    "Pruned": "tab:gray",
    "Paused": "tab:cyan",
    "Stopped": "tab:orange",
    "Failed": "tab:red",
    "Running": "tab:green",
    "Pending": "tab:olive",
}
BEST_COLOUR = "tab:purple"
CURVES_XLABEL = "resource (epochs)"
TIMELINE_XLABEL = "wall clock (s since the study started)"
MAX_TRIAL_TICKS = 30  # every trial's index on the timeline's axis, up to this many trials


def trial_gid(trial: TrialCurve) -> str:
    """The id of a trial's learning curve in the figure (its first line)."""
    return f"trial:{trial.name}"


def study_figure(curves: StudyCurves) -> Figure:
    """The two panels, side by side, on a new Figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 5.5), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[3, 2])
    _draw_curves(left, curves)
    _draw_timeline(right, curves)
    return fig


def save_plot(curves: StudyCurves, output: Path) -> Path:
    """Draws ``curves`` to ``output`` (a PNG unless its suffix names another format); returns it."""
    output.parent.mkdir(parents=True, exist_ok=True)
    study_figure(curves).savefig(output, dpi=110)
    return output


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _draw_curves(ax: Axes, curves: StudyCurves) -> None:
    from matplotlib.lines import Line2D

    for k, rung in enumerate(curves.rungs):
        ax.axvline(rung, color="0.75", linestyle=":", linewidth=1, zorder=0)
        _top_label(ax, rung, f"rung {k}")
    if curves.max_resource is not None:
        ax.axvline(curves.max_resource, color="0.6", linestyle="--", linewidth=1, zorder=0)
        _top_label(ax, curves.max_resource, f"R = {curves.max_resource:g}", left=True)
    best_index = curves.best.index if curves.best else None
    for trial in curves.trials:
        if trial.points:
            _draw_trial(ax, trial, trial.index == best_index)
    if curves.best is not None:
        ax.plot(
            [curves.best.resource],
            [_nan(curves.best.value)],
            marker="*",
            color="gold",
            markersize=18,
            markeredgecolor="black",
            linestyle="none",
            zorder=5,
        )
    ax.set_xlabel(CURVES_XLABEL)
    ax.set_ylabel(f"{curves.metric} ({curves.mode})")
    ax.set_title(f"{curves.name}: learning curves")
    ax.grid(True, alpha=0.3)
    phases = {t.phase for t in curves.trials if t.points}
    handles: list[Any] = [Line2D([], [], color=COLOURS[s], label=s.lower()) for s in COLOURS if s in phases]
    if any(t.pruned for t in curves.trials):
        handles.append(Line2D([], [], marker="x", color="black", linestyle="none", label="pruned at rung"))
    if curves.best is not None:
        value = "-" if curves.best.value is None else f"{curves.best.value:.4g}"
        handles.append(
            Line2D(
                [],
                [],
                marker="*",
                color=BEST_COLOUR,
                markerfacecolor="gold",
                markeredgecolor="black",
                markersize=12,
                label=f"best: {curves.best.trial} ({value} at {curves.best.resource:g})",
            )
        )
    ax.legend(handles=handles, fontsize=8, loc="lower right" if curves.mode == "max" else "upper right")


def _top_label(ax: Axes, x: float, text: str, left: bool = False) -> None:
    """A label at the top of a vertical line, on its right (``left``: on its left)."""
    ax.annotate(
        text,
        (x, 1),
        xycoords=("data", "axes fraction"),
        xytext=(-12 if left else 2, -12),  # on the left, clear of a best star at R
        textcoords="offset points",
        ha="right" if left else "left",
        fontsize=8,
        color="0.45",
    )


def _draw_trial(ax: Axes, trial: TrialCurve, is_best: bool) -> None:
    xs = [p.resource for p in trial.points]
    ys = [_nan(p.value) for p in trial.points]
    colour = COLOURS.get(trial.phase, "black")
    pruned = trial.pruned
    # A pruned trial's curve ends at its rung; reports sent before it was stopped trail off.
    cut = len(xs) if pruned is None else max(1, sum(1 for x in xs if x <= pruned.resource))
    ax.plot(
        xs[:cut],
        ys[:cut],
        color=BEST_COLOUR if is_best else colour,
        linewidth=2.5 if is_best else 1,
        alpha=1 if is_best else 0.75,
        marker=".",
        markersize=4,
        zorder=3 if is_best else 2,
        gid=trial_gid(trial),
    )
    if cut < len(xs):
        ax.plot(xs[cut - 1 :], ys[cut - 1 :], color=colour, linewidth=0.8, alpha=0.3, linestyle=":")
    if pruned is not None:
        ax.plot(
            [pruned.resource],
            [_nan(pruned.value)],
            marker="x",
            color="black",
            markersize=8,
            markeredgewidth=1.5,
            linestyle="none",
            zorder=4,
        )
    elif trial.phase in ("Failed", "Stopped"):
        ax.plot(
            [xs[-1]],
            [ys[-1]],
            marker="v" if trial.phase == "Failed" else "|",
            color=colour,
            markersize=9,
            markeredgewidth=2,
            linestyle="none",
            zorder=4,
        )


def _draw_timeline(ax: Axes, curves: StudyCurves) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    start = curves.started_at
    best_index = curves.best.index if curves.best else None
    for trial in curves.trials:
        if trial.started_at is None:
            continue  # not started yet: no bar
        began = trial.started_at - start
        ended = (trial.ended_at if trial.ended_at is not None else curves.end) - start
        ax.barh(
            trial.index,
            max(ended - began, 0.01),
            left=began,
            height=0.7,
            color=COLOURS.get(trial.phase, "black"),
            edgecolor="black" if trial.index == best_index else "none",
        )
        times = [p.time - start for p in trial.points]
        # Dark ticks: a report at the very end of a bar (a trial pruned by it) stays visible.
        ax.plot(times, [trial.index] * len(times), "|", color="0.15", markersize=6, alpha=0.8)
    if curves.deadline is not None:
        deadline = curves.deadline - start
        ax.axvline(deadline, color="tab:red", linewidth=2, label=f"deadline ({deadline:.0f}s budget)")
    if curves.finished_at is not None:
        inside = curves.finished_inside
        label = "finished" + (f", {inside:.1f}s inside" if inside is not None else "")
        ax.axvline(curves.finished_at - start, color="black", linestyle="--", linewidth=1, label=label)
    else:  # still running: the bars of running trials end where the study was read
        ax.axvline(curves.end - start, color="0.4", linestyle=":", linewidth=1, label="now")
    ax.set_xlim(left=0)
    if 0 < len(curves.trials) <= MAX_TRIAL_TICKS:
        ax.set_yticks([t.index for t in curves.trials])
    ax.set_xlabel(TIMELINE_XLABEL)
    ax.set_ylabel("trial")
    ax.invert_yaxis()
    ax.set_title("trials over time")
    ax.grid(True, axis="x", alpha=0.3)
    drawn = {t.phase for t in curves.trials if t.started_at is not None}
    legend: list[Any] = [Patch(color=COLOURS[s], label=s.lower()) for s in COLOURS if s in drawn]
    if any(t.points for t in curves.trials):
        legend.append(Line2D([], [], marker="|", color="0.15", linestyle="none", label="report"))
    lines, _ = ax.get_legend_handles_labels()
    ax.legend(handles=legend + lines, fontsize=8, loc="best", framealpha=0.9)
