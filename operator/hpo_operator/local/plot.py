"""`hpo plot DIR`: a local study's learning curves and its trials over time, as a PNG.

Left: every trial's metric against the resource, rung lines, pruned trials ending in a cross at the
rung where they were cut, the best trial drawn thick with a star. Right: each trial as a bar over
wall-clock time, coloured by outcome, against the budget's deadline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

COLOURS = {
    "Completed": "tab:blue",
    "Pruned": "tab:gray",
    "Stopped": "tab:orange",
    "Failed": "tab:red",
    "Running": "tab:green",
    "Pending": "tab:olive",
}


def _value(v: Any) -> float:
    return math.nan if v is None else float(v)


def plot_study(doc: Mapping[str, Any], output: Path) -> Path:
    """Draws ``doc`` (a study.json document) to ``output``; returns the path written."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig, (curves, timeline) = plt.subplots(1, 2, figsize=(14, 5.5), gridspec_kw={"width_ratios": [3, 2]})
    metric = doc["config"].get("metric", "value")
    best = doc.get("best") or {}
    best_index = best.get("index")
    plan = doc.get("plan") or {}
    statuses = {t["status"] for t in doc["trials"]}

    # --- learning curves ---------------------------------------------------------------------
    for k, rung in enumerate(plan.get("rungs", [])):
        curves.axvline(rung, color="0.75", linestyle=":", linewidth=1, zorder=0)
        curves.annotate(
            f"rung {k}",
            (rung, 1),
            xycoords=("data", "axes fraction"),
            xytext=(2, -12),
            textcoords="offset points",
            fontsize=8,
            color="0.45",
        )
    if plan.get("maximumResource") is not None:
        curves.axvline(plan["maximumResource"], color="0.6", linestyle="--", linewidth=1, zorder=0)
    for trial in doc["trials"]:
        reports = sorted(trial["reports"], key=lambda r: (r["time"], r["resource"]))
        if not reports:
            continue
        xs = [float(r["resource"]) for r in reports]
        ys = [_value(r["value"]) for r in reports]
        colour = COLOURS.get(trial["status"], "black")
        is_best = trial["index"] == best_index
        pruned = trial.get("pruned")
        # A pruned trial's curve ends at its rung; reports sent before SIGTERM took effect trail off.
        cut = len(xs) if pruned is None else max(1, sum(1 for x in xs if x <= pruned["resource"]))
        curves.plot(
            xs[:cut],
            ys[:cut],
            color="tab:purple" if is_best else colour,
            linewidth=2.5 if is_best else 1,
            alpha=1 if is_best else 0.75,
            marker=".",
            markersize=4,
            zorder=3 if is_best else 2,
        )
        if cut < len(xs):
            curves.plot(xs[cut - 1 :], ys[cut - 1 :], color=colour, linewidth=0.8, alpha=0.3, linestyle=":")
        if pruned is not None:
            curves.plot(
                [pruned["resource"]],
                [_value(pruned["value"])],
                marker="x",
                color="black",
                markersize=8,
                markeredgewidth=1.5,
                linestyle="none",
                zorder=4,
            )
        elif trial["status"] in ("Failed", "Stopped"):
            curves.plot(
                [xs[-1]],
                [ys[-1]],
                marker="v" if trial["status"] == "Failed" else "|",
                color=colour,
                markersize=9,
                markeredgewidth=2,
                linestyle="none",
                zorder=4,
            )
    if best:
        curves.plot(
            [best["resource"]],
            [_value(best["value"])],
            marker="*",
            color="gold",
            markersize=18,
            markeredgecolor="black",
            linestyle="none",
            zorder=5,
        )
    curves.set_xlabel("resource (epochs)")
    curves.set_ylabel(f"{metric} ({doc['config'].get('mode', 'max')})")
    curves.set_title(f"{doc['name']}: learning curves")
    curves.grid(True, alpha=0.3)
    handles: list[Any] = [Line2D([], [], color=COLOURS[s], label=s.lower()) for s in COLOURS if s in statuses]
    handles += [
        Line2D([], [], marker="x", color="black", linestyle="none", label="pruned at rung"),
        Line2D(
            [],
            [],
            marker="*",
            color="tab:purple",
            markerfacecolor="gold",
            markeredgecolor="black",
            markersize=12,
            label=f"best: {best.get('trial', '-')}",
        ),
    ]
    curves.legend(handles=handles, fontsize=8, loc="lower right")

    # --- trials over time --------------------------------------------------------------------
    start = float(doc["startedAt"])
    end = float(doc.get("finishedAt") or doc.get("updatedAt") or start)
    for trial in doc["trials"]:
        began = float(trial["startedAt"]) - start
        ended = float(trial["endedAt"] if trial["endedAt"] is not None else end) - start
        timeline.barh(
            trial["index"],
            max(ended - began, 0.01),
            left=began,
            height=0.7,
            color=COLOURS.get(trial["status"], "black"),
            edgecolor="black" if trial["index"] == best_index else "none",
        )
        report_times = [float(r["time"]) - start for r in trial["reports"]]
        timeline.plot(report_times, [trial["index"]] * len(report_times), "|", color="white", markersize=6)
    if doc.get("deadline") is not None:
        deadline = float(doc["deadline"]) - start
        timeline.axvline(deadline, color="tab:red", linewidth=2, label=f"deadline ({deadline:.0f}s budget)")
    inside = (doc.get("budget") or {}).get("finishedInsideSeconds")
    if doc.get("finishedAt") is not None:
        label = "finished" + (f", {inside:.1f}s inside" if inside is not None else "")
        timeline.axvline(end - start, color="black", linestyle="--", linewidth=1, label=label)
    timeline.set_xlabel("wall clock (s since the study started)")
    timeline.set_ylabel("trial")
    timeline.invert_yaxis()
    timeline.set_title("trials over time")
    timeline.grid(True, axis="x", alpha=0.3)
    legend: list[Any] = [
        Patch(color=COLOURS[s], label=s.lower())
        for s in COLOURS
        if any(t["status"] == s for t in doc["trials"])
    ]
    lines, _ = timeline.get_legend_handles_labels()
    timeline.legend(handles=legend + lines, fontsize=8, loc="best", framealpha=0.9)

    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output
