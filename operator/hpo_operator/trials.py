"""A trial's rules, below the decision core and the same for every backend.

Every backend (``hpo run``'s processes, the operator's Jobs, the simulator's virtual clock) reads
and ends trials through these rules, and only translates between them and its own world:

- **Phases** (``TrialPhase``): one vocabulary. Pending and Running are active; Completed, Pruned,
  Failed and Stopped are ended for good; Paused (promote variant) ended a run at a rung and may be
  resumed. The CRD's enum is generated from it.
- **A report** is ``{seq, resource, value, time, extra}`` (the trial contract). ``parse_report``
  holds one strictness: ``seq`` an integer >= 0, ``resource`` and ``time`` numbers, ``value`` a
  number or null; a value that is not finite is kept as null (the worst value). A retried report
  repeats its ``(seq, time)`` and counts once (``ReportKeys``); a second process of the same trial
  counts ``seq`` from 0 again, at new times, so ``seq`` alone is no key.
- **Which reports count** (``report_refusal``): a resource in (0, R], not below the highest the
  trial reported before, and a finite time.
- **The outcome of a run that exited 0** (``clean_exit_phase``): without a report that counts
  beyond the resource it started from it has no result and is Failed; a run that was to stop below
  R is Paused; otherwise Completed.
- **The furthest level** (``furthest_level``): the highest rung (or R) a report reached, and the
  first report to reach it.
- **The model's checkpoints** (``model_trial``): once a study is over only the model's trial keeps
  its checkpoints: the final training's trial, else the best.
- **The final training's time limit** (``final_training_seconds``): it is not bounded by the HPO
  deadline, but by FINAL_TRAININGS full trainings as planned, at least FINAL_MIN_SECONDS.
- **The stop margin** (``StopMargin``): how long before the deadline running trials are stopped:
  what stopping takes on the backend, plus a share of the budget for a late look.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar, cast

T = TypeVar("T")


class TrialPhase(str, Enum):
    PENDING = "Pending"  # created, not running yet (e.g. waiting for a GPU)
    RUNNING = "Running"
    COMPLETED = "Completed"
    PRUNED = "Pruned"
    FAILED = "Failed"
    STOPPED = "Stopped"  # stopped at the deadline
    PAUSED = "Paused"  # promote variant: trained to its rung and exited; may be resumed

    @property
    def active(self) -> bool:
        return self in (TrialPhase.PENDING, TrialPhase.RUNNING)

    @property
    def ended(self) -> bool:
        """Ended for good: no run of the trial follows (a Paused trial may be resumed)."""
        return self in ENDED_PHASES


ENDED_PHASES = frozenset({TrialPhase.COMPLETED, TrialPhase.PRUNED, TrialPhase.FAILED, TrialPhase.STOPPED})
# The same, as the names the API objects carry.
ENDED_PHASE_NAMES = frozenset(p.value for p in ENDED_PHASES)


# --- reports ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    """One report of a trial: its value at a resource, and when (seconds, on the study's clock)."""

    resource: float
    value: float
    time: float


def report_order(report: Report) -> tuple[float, float]:
    return (report.time, report.resource)


def _is_number(value: Any) -> bool:
    """A JSON number, NaN and the infinities included."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_report(raw: Any) -> dict[str, Any] | str:
    """A report as the trial wrote it, normalised (``value`` None where not finite, ``time`` a
    float, ``extra`` a dict), or why it is not a report. Whether its resource is in range and its
    time finite is ``report_refusal``'s question, not this one."""
    if not isinstance(raw, Mapping):
        return "not a JSON object"
    seq, resource, value, at = raw.get("seq"), raw.get("resource"), raw.get("value"), raw.get("time")
    seq_ok = isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0
    if not seq_ok or not _is_number(resource) or not _is_number(at):
        return "needs integer seq, numeric resource and time"
    if value is not None and not _is_number(value):
        return "value must be a number or null"
    extra = raw.get("extra")
    return {
        "seq": seq,
        "resource": resource,
        # null, NaN or an infinity (Python's json writes both): not finite, the worst value.
        "value": value if value is None or math.isfinite(value) else None,
        "time": float(cast(float, at)),  # a number, checked above
        "extra": extra if isinstance(extra, dict) else {},
    }


@dataclass
class ReportKeys:
    """The ``(seq, time)`` of the reports seen so far: ``first`` is True once per key."""

    seen: set[tuple[int, float]] = field(default_factory=set)

    def first(self, report: Mapping[str, Any]) -> bool:
        key = (report["seq"], report["time"])
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def to_report(entry: Mapping[str, Any]) -> Report:
    """A parsed report as the core sees it (a null value is NaN: the worst)."""
    value = entry["value"]
    return Report(float(entry["resource"]), math.nan if value is None else float(value), float(entry["time"]))


def report_refusal(report: Report, max_resource: float, highest: float = 0.0) -> str | None:
    """Why a trial's report does not count, or None when it does.

    ``highest``: the highest resource among the trial's reports that count before this one (in time
    order); resources only grow within a trial, across its resumed runs too, so a lower one is a
    trainer that restarted from scratch or a report out of place. A value that is not finite counts
    (as the worst value): a diverged training is a result, and a bad one.
    """
    resource = report.resource
    if not math.isfinite(resource):
        return f"resource {resource} is not a finite number"
    if resource <= 0:
        return f"resource {resource:g} is not above 0"
    if resource > max_resource:
        return f"resource {resource:g} is beyond the maximum resource {max_resource:g}"
    if resource < highest:
        return f"resource {resource:g} is below {highest:g}, reported before"
    if not math.isfinite(report.time):
        return f"time {report.time} is not a finite number"
    return None


def screen_reports(
    reports: Sequence[Report], max_resource: float
) -> tuple[tuple[Report, ...], tuple[tuple[Report, str], ...]]:
    """``reports`` (in time order) split into those that count and those that do not, with why."""
    counted: list[Report] = []
    refused: list[tuple[Report, str]] = []
    highest = 0.0
    for report in reports:
        reason = report_refusal(report, max_resource, highest)
        if reason is None:
            counted.append(report)
            highest = report.resource
        else:
            refused.append((report, reason))
    return tuple(counted), tuple(refused)


# --- the end of a run -------------------------------------------------------------------------------


def reported_beyond(counted: Iterable[Report], start_from: float | None) -> bool:
    """The run made a report that counts beyond the resource it started from (0, or where it was
    resumed): a paused run at its stop resource has, a run whose trainer's metric nobody saw has not."""
    return any(r.resource > (start_from or 0.0) for r in counted)


def clean_exit_phase(
    counted: Iterable[Report], start_from: float | None, stop_at: float | None, max_resource: float
) -> TrialPhase:
    """The phase of a run that exited 0: Failed without a report that counts beyond where it
    started (no result, never Completed or Paused), Paused when it was to stop below R, else
    Completed."""
    if not reported_beyond(counted, start_from):
        return TrialPhase.FAILED
    if stop_at is not None and stop_at < max_resource:
        return TrialPhase.PAUSED
    return TrialPhase.COMPLETED


# --- levels and the model ---------------------------------------------------------------------------


def furthest_level(reports: Sequence[Report], levels: Sequence[float]) -> tuple[int, Report] | None:
    """The highest level (an index into ``levels``: the rungs, then R) that a report reached, with
    the first report (``reports`` in time order) to reach it; None when none reached ``levels[0]``."""
    if not reports:
        return None
    top = max(r.resource for r in reports)
    level = max((k for k, lv in enumerate(levels) if top >= lv), default=-1)
    if level < 0:
        return None
    return level, next(r for r in reports if r.resource >= levels[level])


def model_trial(best: T | None, final: T | None) -> T | None:
    """The trial (an index or a name) whose checkpoints are the study's model, and so the only ones
    kept once the study is over (no trial of a finished study resumes): the final training's, else
    the best trial's."""
    return final if final is not None else best


# The final training's run may take this many full trainings as planned (start-up + the epochs
# from where it resumes to R), and at least FINAL_MIN_SECONDS; the HPO deadline does not bound it.
FINAL_TRAININGS = 3
FINAL_MIN_SECONDS = 60


def final_training_seconds(
    overhead_seconds: float, epoch_seconds: float, max_resource: float, start_from: float
) -> float:
    """The final training's time limit, from the plan's start-up and epoch times."""
    training = overhead_seconds + (max_resource - start_from) * epoch_seconds
    return max(FINAL_MIN_SECONDS, FINAL_TRAININGS * training)


@dataclass(frozen=True)
class StopMargin:
    """How long before the deadline running trials are stopped, so that they have ended by it:
    ``fixed`` seconds (what stopping takes on the backend: a grace, a look, a write landing) plus
    ``share`` of the budget, at most ``share_max`` seconds (a late look on a busy machine or API
    server). The budget is the core's own, of the decision being made."""

    fixed: float = 0.0
    share: float = 0.0
    share_max: float = 0.0

    def seconds(self, budget_seconds: float | None) -> float:
        extra = 0.0 if not budget_seconds else min(self.share_max, self.share * budget_seconds)
        return self.fixed + extra
