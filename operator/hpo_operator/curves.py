"""What `hpo plot` draws, typed: a study's learning curves and its trials over wall-clock time.

Both backends are read into this one model, and plot.py draws only the model, so that a local study
and a cluster study are drawn alike: ``StudyCurves.of_study_file`` reads `hpo run`'s study.json,
``kube/curves.py`` an HPOStudy and its HPOTrials. Times are seconds since the epoch on the
backend's clock (report times are the trial's own clock, as the core reads them). Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict


class CurvesModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Point(CurvesModel):
    """One report: the metric (None where it was not finite) at a resource, and when it came."""

    resource: float
    value: float | None
    time: float


class PrunedAt(CurvesModel):
    """Where ASHA cut a pruned trial: the rung, its resource, and the value the trial had there."""

    rung: int
    resource: float
    value: float | None


class TrialCurve(CurvesModel):
    index: int
    name: str
    phase: str
    started_at: float | None
    ended_at: float | None
    points: list[Point]  # in time order
    pruned: PrunedAt | None = None


class BestPoint(CurvesModel):
    trial: str
    index: int
    value: float | None
    resource: float


class StudyCurves(CurvesModel):
    """A study as plotted. ``end`` is where its timeline ends: when it finished, else when it was
    last written (a local study) or read (a cluster study)."""

    name: str
    metric: str
    mode: str
    rungs: list[float]
    max_resource: float | None
    started_at: float
    deadline: float | None
    finished_at: float | None
    end: float
    finished_inside: float | None
    best: BestPoint | None
    trials: list[TrialCurve]  # by index

    @classmethod
    def of_study_file(cls, doc: Mapping[str, Any]) -> StudyCurves:
        """From `hpo run`'s study.json document."""
        config = doc.get("config") or {}
        plan = doc.get("plan") or {}
        best = doc.get("best")
        started = float(doc["startedAt"])
        finished = _seconds(doc.get("finishedAt"))
        max_resource = plan.get("maximumResource", config.get("maximumResource"))
        trials = []
        for t in doc["trials"]:
            pruned = t.get("pruned")
            trials.append(
                TrialCurve(
                    index=int(t["index"]),
                    name=str(t["name"]),
                    phase=str(t["status"]),
                    started_at=_seconds(t.get("startedAt")),
                    ended_at=_seconds(t.get("endedAt")),
                    points=_points(t.get("reports") or []),
                    pruned=None
                    if pruned is None
                    else PrunedAt(rung=pruned["rung"], resource=pruned["resource"], value=pruned["value"]),
                )
            )
        return cls(
            name=str(doc["name"]),
            metric=str(config.get("metric") or (best or {}).get("metric") or "value"),
            mode=str(config.get("mode") or (best or {}).get("mode") or "max"),
            rungs=[float(r) for r in plan.get("rungs") or []],
            max_resource=None if max_resource is None else float(max_resource),
            started_at=started,
            deadline=_seconds(doc.get("deadline")),
            finished_at=finished,
            end=finished if finished is not None else float(doc.get("updatedAt") or started),
            finished_inside=_seconds((doc.get("budget") or {}).get("finishedInsideSeconds")),
            best=None if best is None else best_point(best),
            trials=sorted(trials, key=lambda t: t.index),
        )


def best_point(best: Mapping[str, Any]) -> BestPoint:
    """study.json's best and status.best have the same keys (result.BestStatus)."""
    value = best.get("value")
    return BestPoint(
        trial=str(best["trial"]),
        index=int(best["index"]),
        value=None if value is None else float(value),
        resource=float(best["resource"]),
    )


def finite(value: Any) -> float | None:
    """A value as plotted: None where it is missing or not finite."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _points(reports: list[Mapping[str, Any]]) -> list[Point]:
    points = [Point(resource=r["resource"], value=finite(r["value"]), time=r["time"]) for r in reports]
    return sorted(points, key=lambda p: (p.time, p.resource))


def _seconds(value: Any) -> float | None:
    return None if value is None else float(value)
