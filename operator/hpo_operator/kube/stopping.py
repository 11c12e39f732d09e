"""How a stopped trial's Job ends: scaled to no pods, one request, so that the Job controller deletes
the pod itself and never replaces it. The Job stays, with no pod, as the record of the trial's run
(like a finished trial's), and goes with its HPOTrial; the same request removes its deadline, which
would otherwise fail it at the study's deadline. If the pod still runs JOB_CONTROLLER_WAIT_SECONDS
after the scale-down, the operator deletes the Job and the pod by name. A pod whose Job is gone is
deleted by name at once.

Deleting the Job instead, in the foreground, is also one request, but leaves the pod to the garbage
collector, whose queue and client rate limit delayed it by seconds on a busy control plane, where
the Job controller acts on the scale-down at once."""

from __future__ import annotations

from .observe import (
    current_job_name,
    to_rfc3339,
    to_timestamp,
)
from .writes import (
    JSON,
    DeleteJob,
    ScaleJobDown,
    World,
    Write,
)

# A stopped trial's Job is first scaled to no pods, so that the Job controller deletes the pod itself;
# if its pod still runs this long after, the operator deletes the pod and the Job by name.
JOB_CONTROLLER_WAIT_SECONDS = 10.0
# When the Job was scaled down, on the Job (the time of the verdict is not it after an outage).
SCALED_DOWN_AT = "hpo.dev/scaled-down-at"


def live_pods(world: World, trial: str) -> tuple[str, ...]:
    return tuple(
        p["metadata"]["name"]
        for p in world.pods.get(trial, ())
        if not p["metadata"].get("deletionTimestamp")
        and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    )


def scaled_down(job: JSON) -> bool:
    return (job.get("spec") or {}).get("parallelism") == 0


def still_running(world: World, trial: str, job: JSON | None) -> bool:
    """The trial's Job has not finished and is not scaled down, or a pod of it still runs: a Job
    controller that has not acted yet, or a Job gone while its pod runs (a crash or an API outage
    between deleting the Job and deleting its pods leaves the pod to the garbage collector, which
    may take long or, after an outage, not come at all)."""
    if job is not None and not scaled_down(job):
        return not job_finished(job)
    return bool(live_pods(world, trial))


def stop_job(world: World, trial: str, job_name: str, job: JSON | None, now: float) -> list[Write]:
    """The writes that end a stopped trial's Job: scale it down; if its pod still runs
    JOB_CONTROLLER_WAIT_SECONDS after, delete the Job and the pod by name. A pod whose Job is gone
    is deleted by name at once. Nothing while the Job controller is given its time, nor once the
    scaled-down Job has no pod left."""
    live = live_pods(world, trial)
    if job is None:
        return [DeleteJob(job_name, live)] if live else []
    if not scaled_down(job):
        return [ScaleJobDown(job_name, to_rfc3339(now, micro=True))]
    waited = scale_down_wait(job, now)
    if not live or (waited is not None and waited > 0):
        return []
    return [DeleteJob(job_name, live)]


def scale_down_wait(job: JSON, now: float) -> float | None:
    """Seconds the Job controller still has to stop the pod of a scaled-down Job; None when the Job
    carries no scale-down time."""
    stamp = to_timestamp(((job.get("metadata") or {}).get("annotations") or {}).get(SCALED_DOWN_AT))
    return None if stamp is None else stamp + JOB_CONTROLLER_WAIT_SECONDS - now


def stop_check_after(world: World, now: float) -> float | None:
    """When to look again at scaled-down Jobs whose pods still run, for the fallback."""
    waits = [
        wait
        for trial in world.trials
        if (job := world.jobs.get(current_job_name(trial))) is not None
        and scaled_down(job)
        and live_pods(world, trial["metadata"]["name"])
        and (wait := scale_down_wait(job, now)) is not None
    ]
    return max(0.05, min(waits) + 0.02) if waits else None


def job_finished(job: JSON) -> bool:
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )
