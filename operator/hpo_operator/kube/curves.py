"""`hpo plot STUDY`: an HPOStudy and its HPOTrials, as read from the API, into the model plot.py draws
(curves.StudyCurves), as study.json is for a local study. Pure: the objects and the time they were
read come in.

The reports are those the operator counts (verdict.py: none appended after its verdict), the phase
and times the operator's verdict, the plan, deadline and best the study's status.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..config import DEFAULT_METRIC
from ..curves import Point, PrunedAt, StudyCurves, TrialCurve, best_point, finite
from .observe import reports_of, to_timestamp
from .verdict import verdict_of


def cluster_curves(study: Mapping[str, Any], trials: Sequence[Mapping[str, Any]], now: float) -> StudyCurves:
    """The study's curves as of ``now``, the time its objects were read."""
    meta, spec = study["metadata"], study.get("spec") or {}
    status = study.get("status") or {}
    plan, budget = status.get("plan") or {}, status.get("budget") or {}
    rungs = [float(r) for r in plan.get("rungs") or []]
    curves = [_trial_curve(t, rungs) for t in trials]
    started = to_timestamp(budget.get("startedAt")) or to_timestamp(meta.get("creationTimestamp"))
    if started is None:
        started = min((c.started_at for c in curves if c.started_at is not None), default=now)
    # The deadline is written to the second; startedAt + budgetSeconds keeps its milliseconds.
    deadline = to_timestamp(budget.get("deadline"))
    if deadline is not None and budget.get("budgetSeconds") is not None and budget.get("startedAt"):
        deadline = started + float(budget["budgetSeconds"])
    finished = to_timestamp(budget.get("finishedAt"))
    max_resource = plan.get("maximumResource", spec.get("maximumResource"))
    best = status.get("best")
    return StudyCurves(
        name=str(meta["name"]),
        metric=str(spec.get("metric") or DEFAULT_METRIC),
        mode=str(spec.get("mode") or "max"),
        rungs=rungs,
        max_resource=None if max_resource is None else float(max_resource),
        started_at=started,
        deadline=deadline,
        finished_at=finished,
        end=finished if finished is not None else now,
        finished_inside=finite(budget.get("finishedInsideSeconds")),
        best=None if best is None else best_point(best),
        trials=sorted(curves, key=lambda c: c.index),
    )


def _trial_curve(trial: Mapping[str, Any], rungs: list[float]) -> TrialCurve:
    # The operator's own record, where trials cannot write; the status mirrors it.
    record = {**(trial.get("status") or {}), **verdict_of(trial)}
    points = sorted(
        (Point(resource=r.resource, value=finite(r.value), time=r.time) for r in reports_of(trial)),
        key=lambda p: (p.time, p.resource),
    )
    phase = str(record.get("phase") or "Pending")
    started, ended = to_timestamp(record.get("startedAt")), to_timestamp(record.get("finishedAt"))
    if points:
        # The API's times are to the second (the kubelet's, the operator's): a trial's span holds
        # its reports, whose times are exact.
        started = None if started is None else min(started, points[0].time)
        ended = None if ended is None else max(ended, points[-1].time)
    return TrialCurve(
        index=int(trial["spec"]["index"]),
        name=str(trial["metadata"]["name"]),
        phase=phase,
        started_at=started,
        ended_at=ended,
        points=points,
        pruned=_pruned_at(record, points, rungs) if phase == "Pruned" else None,
    )


def _pruned_at(record: Mapping[str, Any], points: list[Point], rungs: list[float]) -> PrunedAt | None:
    """The rung a pruned trial was cut at, and its value there: its first report to reach the rung
    (ASHA records a trial at a rung by that report)."""
    rung = record.get("rung")
    if not isinstance(rung, int) or isinstance(rung, bool) or not 0 <= rung < len(rungs):
        return None
    at = next((p for p in points if p.resource >= rungs[rung]), None)
    return PrunedAt(rung=rung, resource=rungs[rung], value=None if at is None else at.value)
