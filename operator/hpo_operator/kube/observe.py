"""From API objects to the decision core's view of a trial: pure functions of dicts.

A trial's state is the operator's verdict once it recorded one (Completed, Pruned, Failed, Stopped,
in the HPOTrial's verdict annotation, see verdict.py); before that it is read from its Job and pod,
the pod first because it says "finished" a moment before the Job controller does. Reports are read
from the status, where the trial writes them. Which of them count, and how a run that ended
ends, are the trial layer's rules (trials.py): a run that exits 0 without a report that counts
beyond where it started has no result: it is Failed (NoReports), never Completed or Paused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..study import TrialView
from ..trials import (
    ENDED_PHASE_NAMES,
    Report,
    ReportKeys,
    TrialPhase,
    clean_exit_phase,
    furthest_level,
    parse_report,
    screen_reports,
    to_report,
)
from .builders import Run, run_of
from .resources import RUN_LABEL, job_name
from .verdict import counted_reports, verdict_of

JSON = dict[str, Any]
# A run that ended without a report is judged this long after its end, so that a report written
# just before the exit is seen even where the trials were read from an older cache than the pods.
REPORT_SETTLE_SECONDS = 3.0


def to_timestamp(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def to_rfc3339(seconds: float, micro: bool = False) -> str:
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.isoformat(timespec="microseconds" if micro else "seconds").replace("+00:00", "Z")


def reports_of(trial: Mapping[str, Any]) -> tuple[Report, ...]:
    """The trial's reports as written, read by the trial layer's rules (trials.parse_report, the
    first of each ``(seq, time)``); an entry that is no report is skipped. Reports appended after
    the operator's verdict on the run are not read (verdict.py). Which of these count is
    trials.report_refusal's rule."""
    keys = ReportKeys()
    parsed = (parse_report(raw) for raw in counted_reports(trial))
    return tuple(to_report(p) for p in parsed if not isinstance(p, str) and keys.first(p))


Refusals = tuple[tuple[Report, str], ...]


def refused(refusals: Refusals) -> JSON:
    """status.refusedReports and refusedReason: how many reports do not count, and why the last."""
    return {"refusedReports": len(refusals) or None, "refusedReason": refusals[-1][1] if refusals else None}


def _condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind and c.get("status") == "True":
            return c  # type: ignore[no-any-return]
    return None


def newest_pod(pods: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    return max(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", default=None)


def _terminated(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        state = (status.get("state") or {}).get("terminated")
        if state and state.get("exitCode", 0) != 0:
            return state  # type: ignore[no-any-return]
    return None


def pod_started_at(pod: Mapping[str, Any]) -> float | None:
    """When the trial's container began running (or the pod started, where that is all there is)."""
    status = pod.get("status") or {}
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        started = (state.get("running") or state.get("terminated") or {}).get("startedAt")
        if started:
            return to_timestamp(started)
    if status.get("phase") in ("Running", "Succeeded", "Failed"):
        return to_timestamp(status.get("startTime"))
    return None


def unschedulable_message(pod: Mapping[str, Any]) -> str | None:
    if (pod.get("status") or {}).get("phase") != "Pending":
        return None
    for c in (pod.get("status") or {}).get("conditions") or []:
        if (
            c.get("type") == "PodScheduled"
            and c.get("status") == "False"
            and c.get("reason") == "Unschedulable"
        ):
            return str(c.get("message") or "Unschedulable")
    return None


@dataclass(frozen=True)
class TrialState:
    """A trial as read from the API: what the core sees, and what the HPOTrial status should say."""

    name: str
    view: TrialView
    status: JSON  # the HPOTrial status fields the operator owns, as they should be now
    has_pod: bool
    job_exists: bool
    unschedulable: str | None = None
    run: Run = field(default_factory=Run)
    job_name: str = ""  # the current run's Job
    run_started: bool = False  # the current run's pod has started
    refusals: Refusals = ()  # the reports trials.report_refusal does not count, with why (in time order)


def current_job_name(trial: Mapping[str, Any]) -> str:
    """The name of the Job of the trial's current run."""
    return job_name(trial["metadata"]["name"], run_of(trial).number)


def run_pods(trial: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The pods of the trial's current run (a pod without the run label belongs to the first)."""
    number = str(run_of(trial).number)
    return [p for p in pods if ((p["metadata"].get("labels") or {}).get(RUN_LABEL) or "0") == number]


def _finished(phase: TrialPhase, reason: str, message: str, exit_code: int | None = None) -> JSON:
    out: JSON = {"phase": phase.value, "reason": reason, "message": message}
    if exit_code is not None:
        out["exitCode"] = exit_code
    return out


def termination_message(pod: Mapping[str, Any] | None) -> str | None:
    """What a container of the pod left in its termination message (the metrics collector says
    there why a trial reported nothing), or None."""
    for status in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        message = ((status.get("state") or {}).get("terminated") or {}).get("message")
        if isinstance(message, str) and message.strip():
            return message.strip()
    return None


def _no_reports(refusals: Refusals, run: Run, pod: Mapping[str, Any] | None) -> JSON:
    message = "the trial exited with status 0 without a report that counts"
    if run.start_from:
        message += f" beyond resource {run.start_from:g}, where it resumed"
    if refusals:
        message += f" ({len(refusals)} refused, the last: {refusals[-1][1]})"
    said = termination_message(pod)
    if said:
        message += f"; {said}"
    return _finished(TrialPhase.FAILED, "NoReports", message, 0)


def _ended_at(job: Mapping[str, Any] | None, pod: Mapping[str, Any] | None) -> float | None:
    """When the run's container (else its Job) finished, where the API says."""
    for status in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        finished = ((status.get("state") or {}).get("terminated") or {}).get("finishedAt")
        if finished:
            return to_timestamp(finished)
    return to_timestamp(((job or {}).get("status") or {}).get("completionTime"))


def _verdict(job: Mapping[str, Any] | None, pod: Mapping[str, Any] | None, started: bool) -> JSON:
    """Phase (and reason) of a trial the operator has not settled yet, from its Job and pod."""
    pod_phase = (pod.get("status") or {}).get("phase") if pod else None
    failed = _condition(job, "Failed") if job else None
    if failed and failed.get("reason") == "DeadlineExceeded":
        return _finished(
            TrialPhase.STOPPED, "Deadline", "the study's deadline passed (the Job's activeDeadlineSeconds)"
        )
    # A Job of Kubernetes 1.20 counts a pod deleted by someone else (an eviction, a drain) that exits 0
    # on SIGTERM as its success, while the pod it made in its place runs on: a live pod of the run
    # is followed, not the Job's condition.
    replaced = pod_phase in ("Pending", "Running") and not (pod or {}).get("metadata", {}).get(
        "deletionTimestamp"
    )
    if (job and _condition(job, "Complete") and not replaced) or pod_phase == "Succeeded":
        return _finished(TrialPhase.COMPLETED, "Completed", "the trial exited with status 0", 0)
    if failed or pod_phase == "Failed":
        state = _terminated(pod) if pod else None
        code = state.get("exitCode") if state else None
        why = (state or {}).get("reason") or (failed or {}).get("reason") or "Failed"
        detail = (failed or {}).get("message") or ""
        message = f"exit code {code}" if code is not None else "the trial's pod failed"
        return _finished(TrialPhase.FAILED, str(why), message + (f": {detail}" if detail else ""), code)
    if job is None and started:
        return _finished(TrialPhase.FAILED, "JobDeleted", "its Job was deleted while the trial ran")
    if pod_phase == "Running":
        return {"phase": TrialPhase.RUNNING.value}
    return {"phase": TrialPhase.PENDING.value}


def observe_trial(
    trial: Mapping[str, Any],
    job: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]],
    now: float,
    max_resource: float | None = None,
) -> TrialState:
    """``job``: the current run's Job; ``pods``: the trial's pods (of any run); ``max_resource``: R,
    below which a run that pauses (its stopAt) and exits 0 leaves the trial Paused."""
    meta, current = trial["metadata"], verdict_of(trial)
    run = run_of(trial)
    reports = reports_of(trial)
    # Screened once here (in time order) for the status and the no-report verdict; the core screens
    # the view itself.
    ordered = tuple(sorted(reports, key=lambda r: r.time))
    counted, refusals = screen_reports(ordered, max_resource) if max_resource is not None else (ordered, ())
    pods = run_pods(trial, pods)
    pod = newest_pod([p for p in pods if not p["metadata"].get("deletionTimestamp")]) or newest_pod(pods)
    started_text = current.get("startedAt")
    started_at = to_timestamp(started_text)
    if started_at is None and pod is not None:
        started_at = pod_started_at(pod)
        started_text = to_rfc3339(started_at) if started_at is not None else None
    run_started_text = started_text if run.number == 0 else current.get("runStartedAt")
    if run_started_text is None and run.number > 0 and pod is not None:
        run_started_at = pod_started_at(pod)
        run_started_text = to_rfc3339(run_started_at) if run_started_at is not None else None
    if current.get("phase") in ENDED_PHASE_NAMES or current.get("phase") == TrialPhase.PAUSED:
        status: JSON = {"phase": current["phase"]}
    else:
        status = _verdict(job, pod, run_started_text is not None)
        # Without R (no config) a run is never taken for one that paused.
        stop_at = run.stop_at if max_resource is not None else None
        exit_phase = TrialPhase.COMPLETED
        if status["phase"] == TrialPhase.COMPLETED:
            exit_phase = clean_exit_phase(counted, run.start_from, stop_at, max_resource or 0.0)
        if exit_phase is TrialPhase.FAILED:
            ended = _ended_at(job, pod)
            if ended is not None and now - ended < REPORT_SETTLE_SECONDS:
                # The last report may be newer than the HPOTrial list this was read from: the
                # reports are written before the exit, but each list comes from its own cache.
                status = {"phase": TrialPhase.RUNNING.value}
            else:
                status = _no_reports(refusals, run, pod)
                status["finishedAt"] = to_rfc3339(now)
        elif exit_phase is TrialPhase.PAUSED:
            status = _finished(
                TrialPhase.PAUSED, "Paused", f"trained to resource {stop_at:g}; may be promoted", 0
            )
        elif status["phase"] in ENDED_PHASE_NAMES:
            status["finishedAt"] = to_rfc3339(now)
    if started_text:
        status["startedAt"] = started_text
    if run.number > 0 and run_started_text:
        status["runStartedAt"] = run_started_text
    view = TrialView(
        index=int(trial["spec"]["index"]),
        status=TrialPhase(status["phase"]),
        reports=reports,
        started_at=started_at,
        params=dict(trial["spec"].get("hyperparameters") or {}),
    )
    return TrialState(
        name=meta["name"],
        view=view,
        status=status,
        has_pod=pod is not None and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"),
        job_exists=job is not None,
        unschedulable=unschedulable_message(pod) if pod else None,
        run=run,
        job_name=job_name(meta["name"], run.number),
        run_started=run_started_text is not None,
        refusals=refusals,
    )


def progress(reports: Sequence[Report], levels: Sequence[float], final: bool) -> JSON:
    """status.resource and lastValue: the highest level (rung or R) reached and the value there, or
    for a finished trial its last report. Written at rungs, not at every report, to spare the API."""
    if not reports:
        return {}
    ordered = sorted(reports, key=lambda r: (r.time, r.resource))
    if final:
        at = ordered[-1]
        return {"resource": max(r.resource for r in ordered), "lastValue": _finite(at.value)}
    reached = furthest_level(ordered, levels)
    if reached is None:
        return {}
    return {"resource": reached[1].resource, "lastValue": _finite(reached[1].value)}


def progress_reached_at(reports: Sequence[Report], levels: Sequence[float], at: float) -> float | None:
    """When the report that ``progress`` shows for a running trial was made (its own time), if it is
    at ``at`` or beyond; else None."""
    reached = furthest_level(sorted(reports, key=lambda r: (r.time, r.resource)), levels)
    return None if reached is None or reached[1].resource < at else reached[1].time


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


def status_patch(current: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> JSON:
    """The keys of ``desired`` whose values differ from ``current`` (a merge patch; {} if none)."""
    current = current or {}
    return {k: v for k, v in desired.items() if current.get(k) != v}
