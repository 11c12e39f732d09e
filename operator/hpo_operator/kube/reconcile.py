"""One study's reconcile, as a pure function: the world as read from the API -> the writes to make.

Level-based: it reads everything it needs (the study, its HPOTrials, their Jobs and pods, the GPU
capacity), asks the decision core, and returns only the writes that change something. State lives
in the API (the study's ``status.budget.startedAt``, the HPOTrials and their reports), so any
operator, restarted or not, computes the same writes from the same world. world.py does the I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..asha import tie_note
from ..config import ConfigError, StudyConfig, study_config_from_spec
from ..result import BestStatus, PlanStatus, StudyPhase, TrialCounts
from ..study import (
    Decision,
    Finalize,
    Observation,
    PruneTrial,
    ResumeTrial,
    StartTrial,
    StopTrial,
    Study,
    StudyError,
)
from ..trial_command import template_problems
from ..trials import ENDED_PHASE_NAMES, StopMargin, TrialPhase, final_training_seconds, model_trial
from .builders import (
    build_claim,
    build_cleanup_job,
    build_job,
    build_trial,
    build_trial_identity,
    checkpoint_claim,
    checkpoint_path,
    cleanup_job_name,
    run_of,
    trial_account,
)
from .capacity import Capacity
from .observe import (
    TrialState,
    current_job_name,
    observe_trial,
    progress,
    refused,
    status_patch,
    to_rfc3339,
    to_timestamp,
)
from .policy import TrialPolicy, refused_fields
from .resources import (
    GPU,
    TERMINAL_STUDY_PHASES,
    BudgetStatus,
    Condition,
    FinalStatus,
    StudyStatus,
    trial_identity_name,
    trial_name,
)
from .verdict import (
    DERIVED_FIELDS,
    RECORDED_FIELDS,
    REPORTS_COUNTED,
    VERDICT_ANNOTATION,
    has_verdict,
    verdict_of,
    verdict_text,
)

# A run's verdict is final for these: its reports are counted then, and later ones never count.
SETTLED_PHASES = ENDED_PHASE_NAMES | {TrialPhase.PAUSED.value}

JSON = dict[str, Any]

# How often a running study is looked at even when nothing it watches changes: other workloads'
# pods free GPUs without an event the operator watches.
RESYNC_SECONDS = 5.0
# The reconcile decides for the moment its writes will have landed, this much after it read the
# world, so that a study stopped "at the deadline" is finished at the deadline, not just after it.
LEAD_SECONDS = 1.0
# And it stops the trials this much earlier still: a share of the budget, at most STOP_MARGIN_MAX
# seconds, for a late reconcile (a busy operator or API server) and the trial pods' stopping.
STOP_MARGIN_FRACTION = 0.03
STOP_MARGIN_MAX = 10.0
STOP_MARGIN = StopMargin(LEAD_SECONDS, STOP_MARGIN_FRACTION, STOP_MARGIN_MAX)
# While a trial's ServiceAccount waits for its token (clusters before 1.24), look again soon.
ACCESS_RETRY_SECONDS = 0.2
# A stopped trial's Job is first scaled to no pods, so that the Job controller deletes the pod itself;
# if its pod still runs this long after, the operator deletes the pod and the Job by name.
JOB_CONTROLLER_WAIT_SECONDS = 10.0
# When the Job was scaled down, on the Job (the time of the verdict is not it after an outage).
SCALED_DOWN_AT = "hpo.dev/scaled-down-at"


@dataclass(frozen=True)
class World:
    """Everything one reconcile of a study reads."""

    study: JSON
    trials: tuple[JSON, ...] = ()
    jobs: Mapping[str, JSON] = field(default_factory=dict)  # by name (= the trial's name)
    pods: Mapping[str, tuple[JSON, ...]] = field(default_factory=dict)  # by trial name
    capacity: Capacity = field(default_factory=lambda: Capacity(0, 0))
    # The identity (ServiceAccount) of each trial that may need a new Job (needs_identity): "missing",
    # "waiting" (for its token Secret), "ready", or "foreign" (an account of that name that is not
    # the trial's own); a trial not named is looked at again next time.
    identities: Mapping[str, str] = field(default_factory=dict)
    token_secrets: bool = False  # before 1.24 a pod is admitted only once its account has a token
    claim_exists: bool = True  # the checkpoint claim the operator creates (spec.checkpoints.size)


def needs_identity(trial: Mapping[str, Any], jobs: Mapping[str, Any]) -> bool:
    """Whether the trial may get a new Job soon (and so its identity must be ready): it has not
    settled and its current run's Job does not exist, or it is paused and may be resumed."""
    phase = verdict_of(trial).get("phase")
    if phase in ENDED_PHASE_NAMES:
        return False
    return phase == "Paused" or current_job_name(trial) not in jobs


# --- the writes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    reason: str
    message: str
    type: str = "Normal"


@dataclass(frozen=True)
class CreateIdentity:
    """A trial's ServiceAccount, Role and RoleBinding, owned by its HPOTrial (409: they exist)."""

    trial: str
    objects: tuple[JSON, ...]


@dataclass(frozen=True)
class CreateClaim:
    """The study's checkpoint PersistentVolumeClaim (409: it exists)."""

    claim: JSON


@dataclass(frozen=True)
class CreateCleanupJob:
    """The Job that deletes the checkpoints no trial will resume from (409: it exists)."""

    job: JSON
    event: Event


@dataclass(frozen=True)
class CreateTrial:
    """Create the HPOTrial (409: it exists), then its identity (unless the template names an allowed
    account) and its Job, owned by it; the event only if new. No Job where the cluster must first
    make the identity's token: a later reconcile makes it."""

    trial: JSON
    job: JSON | None
    event: Event
    identity: bool = True


@dataclass(frozen=True)
class CreateJob:
    trial: str
    job: JSON


@dataclass(frozen=True)
class PatchTrialStatus:
    """``verdict``: the operator's record of the trial (verdict.py), written first when it changed;
    ``patch``: a merge patch of the HPOTrial's status, which mirrors it."""

    trial: str
    patch: JSON
    event: Event | None = None
    verdict: JSON | None = None


@dataclass(frozen=True)
class ScaleJobDown:
    """``spec.parallelism: 0`` on a stopped trial's Job, stamped with ``at``: the Job controller
    deletes the pod, and having seen parallelism 0 before the pod's deletion it never replaces it. A
    pod deleted by anyone else is replaced by a controller whose cache still wants one, and the
    replacement takes a GPU until the garbage collector removes it."""

    name: str
    at: str


@dataclass(frozen=True)
class DeleteJob:
    """The Job goes (background propagation), and the pods named are deleted right after instead of
    waiting for the garbage collector: a Job whose pods already stop, or whose controller did not act
    on ``ScaleJobDown`` in time, or a pod whose Job is already gone."""

    name: str
    pods: tuple[str, ...] = ()


@dataclass(frozen=True)
class PatchJobDeadline:
    name: str
    seconds: int


Write = (
    CreateIdentity
    | CreateClaim
    | CreateCleanupJob
    | CreateTrial
    | CreateJob
    | PatchTrialStatus
    | ScaleJobDown
    | DeleteJob
    | PatchJobDeadline
)


@dataclass(frozen=True)
class Outcome:
    writes: list[Write] = field(default_factory=list)
    status: JSON | None = None  # a merge patch of the study's status, None when nothing changed
    first_status: JSON | None = None  # written before anything else: the budget's start
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    decision: Decision | None = None


# --- conditions ---------------------------------------------------------------------------------


def condition(current: list[JSON], kind: str, status: bool, reason: str, message: str, now: float) -> JSON:
    """A condition whose lastTransitionTime moves only when its status does."""
    text = "True" if status else "False"
    old = next((c for c in current if c.get("type") == kind), None)
    since = old["lastTransitionTime"] if old and old.get("status") == text else to_rfc3339(now)
    return {"type": kind, "status": text, "reason": reason, "message": message, "lastTransitionTime": since}


def _conditions(current: list[JSON], wanted: list[tuple[str, bool, str, str]], now: float) -> list[JSON]:
    kinds = {w[0] for w in wanted}
    kept = [c for c in current if c.get("type") not in kinds]
    return kept + [condition(current, *w, now=now) for w in wanted]


# --- the reconcile ------------------------------------------------------------------------------


def reconcile(world: World, now: float, policy: TrialPolicy | None = None) -> Outcome:
    """``policy``: what trial templates may ask for beyond the default (policy.py)."""
    study = world.study
    status = study.get("status") or {}
    if status.get("phase") in TERMINAL_STUDY_PHASES:
        return _settled(world, now)
    try:
        config = study_config_from_spec(study.get("spec") or {})
    except ConfigError as err:
        return _invalid(world, "InvalidSpec", "; ".join(err.problems), now)
    refused = refused_fields(
        study["spec"].get("trialTemplate") or {}, study["metadata"]["namespace"], policy or TrialPolicy()
    )
    if refused:
        # Before any trial is created; a study refused later (a changed policy) stops its trials as
        # every finished study does.
        return _invalid(world, "TemplateRefused", "; ".join(refused), now)
    unknown = template_problems(study["spec"])  # ${name}s of the command lines, the collector's command
    if unknown:
        return _invalid(world, "InvalidSpec", "; ".join(unknown), now)

    gpus = int(study["spec"].get("gpusPerTrial", 1))
    largest = world.capacity.largest
    if not world.trials and largest is not None and gpus > largest:
        # No node could ever take one trial: say so now instead of leaving a pod Pending to the deadline.
        message = f"spec.gpusPerTrial: {gpus} GPUs per trial, but no node has more than {largest} ({GPU})"
        return _invalid(world, "Unschedulable", message, now)

    started_text = (status.get("budget") or {}).get("startedAt")
    started_at = to_timestamp(started_text) or now
    first_status = None if started_text else {"budget": {"startedAt": to_rfc3339(started_at, micro=True)}}

    jobs, pods = world.jobs, world.pods
    states = [
        observe_trial(
            t, jobs.get(current_job_name(t)), pods.get(t["metadata"]["name"], ()), now, config.max_resource
        )
        for t in world.trials
    ]
    core = Study(config, _slots(config, gpus, world.capacity))
    final_index = _final_index(study, states)
    observation = Observation(
        started_at=started_at,
        now=now,
        free_slots=_free_slots(gpus, world.capacity, states),
        trials=tuple(s.view for s in states),
        final_index=final_index,
        stop_margin=STOP_MARGIN,  # of the core's own budget
    )
    try:
        decision = core.decide(observation)
    except StudyError as err:
        outcome = _invalid(world, "BudgetTooSmall", str(err), now, states)
        return Outcome(outcome.writes, outcome.status, first_status, outcome.events, outcome.requeue_after)
    plan = decision.plan
    levels = (*plan.rungs, plan.max_resource) if plan else (config.max_resource,)
    writes, events = _trial_writes(world, states, decision, levels, now)
    requeue = RESYNC_SECONDS
    if any(
        isinstance(w, CreateIdentity) or (isinstance(w, CreateTrial) and w.job is None) for w in writes
    ) or any(world.identities.get(s.name) == "waiting" for s in states):
        requeue = ACCESS_RETRY_SECONDS  # a Job waits for its trial's identity
    claim = build_claim(study)
    if claim is not None and not world.claim_exists:
        writes.insert(0, CreateClaim(claim))
    resumed_final = any(isinstance(a, ResumeTrial) and a.final for a in decision.actions)
    if (
        decision.deadline is not None
        and decision.finalize is None
        and final_index is None
        and not resumed_final
    ):
        requeue = min(requeue, max(0.05, decision.deadline - decision.stop_margin - now + 0.02))
    stop_check = _stop_check_after(world, now)
    if stop_check is not None:
        requeue = min(requeue, stop_check)
    new_status = _study_status(study, states, decision, started_at, now, writes)
    finalize = decision.finalize
    if finalize is not None:
        events.append(_finish_event(finalize))
    patch = status_patch(status, new_status)
    if "plan" in patch and _only_estimates_moved(status.get("plan") or {}, patch["plan"]):
        del patch["plan"]
    if set(patch) == {"budget"} and _only_the_clock_moved(status.get("budget") or {}, patch["budget"]):
        patch = {}
    return Outcome(
        writes=writes,
        status=patch or None,
        first_status=first_status,
        events=events,
        requeue_after=stop_check if finalize else requeue,
        decision=decision,
    )


def _final_index(study: JSON, states: list[TrialState]) -> int | None:
    """The trial resumed for the final training: as the study's status says, or as its HPOTrial says
    (the trial's status is written before the study's)."""
    final = (study.get("status") or {}).get("final") or {}
    if final.get("index") is not None:
        return int(final["index"])
    return next((s.view.index for s in states if s.run.final), None)


def _final_seconds(decision: Decision, start_from: float) -> float | None:
    """The bound of the final training's Job (trials.final_training_seconds), once there is a plan."""
    plan = decision.plan
    if plan is None:
        return None
    return final_training_seconds(
        plan.trial_overhead_seconds, plan.epoch_seconds, plan.max_resource, start_from
    )


def _resume_status(action: ResumeTrial, run: int) -> JSON:
    """The HPOTrial status of a new run: Pending again, and what was left of the last run cleared."""
    return {
        "phase": "Pending",
        "run": run,
        "startFrom": action.start_from,
        "stopAt": action.stop_at,
        "final": action.final or None,
        REPORTS_COUNTED: None,
        "runStartedAt": None,
        "finishedAt": None,
        "reason": None,
        "message": None,
        "exitCode": None,
        "rung": None,
        "cutoff": None,
    }


def _only_the_clock_moved(current: JSON, desired: JSON) -> bool:
    """True when the budget changed by usedSeconds alone, and by less than a resync: not worth a write."""
    others = {k: v for k, v in desired.items() if k != "usedSeconds"}
    moved = abs(float(desired.get("usedSeconds", 0)) - float(current.get("usedSeconds", 0)))
    return status_patch(current, others) == {} and moved < RESYNC_SECONDS


# Plan figures re-measured from every report; a change below this share is not worth a write.
PLAN_ESTIMATES = ("epochSeconds", "trialOverheadSeconds", "predictedGpuSeconds", "predictedSeconds")
ESTIMATE_TOLERANCE = 0.05


def _only_estimates_moved(current: JSON, desired: JSON | None) -> bool:
    """True when the plan changed by its time estimates alone, each by less than 5%."""
    if not current or not desired:
        return False
    if status_patch(
        {k: v for k, v in current.items() if k not in PLAN_ESTIMATES},
        {k: v for k, v in desired.items() if k not in PLAN_ESTIMATES},
    ):
        return False
    for key in PLAN_ESTIMATES:
        old, new = current.get(key), desired.get(key)
        if old is None or new is None:
            if old != new:
                return False
        elif abs(float(new) - float(old)) > ESTIMATE_TOLERANCE * max(abs(float(old)), 1e-9):
            return False
    return True


def _slots(config: StudyConfig, gpus: int, capacity: Capacity) -> int:
    """Trials the cluster could run at once; without GPUs per trial, parallelTrials (or one)."""
    if gpus <= 0:
        return config.parallel_trials or 1
    return max(1, capacity.total // gpus)


def _free_slots(gpus: int, capacity: Capacity, states: list[TrialState]) -> int:
    if gpus <= 0:
        return 1 << 16
    # A trial created but without a pod yet has not taken its GPUs in the capacity count.
    promised = sum(gpus for s in states if s.view.status.active and not s.has_pod)
    return max(0, capacity.free - promised) // gpus


def trial_patch(trial: JSON, desired: JSON, event: Event | None = None) -> PatchTrialStatus | None:
    """The write that makes the operator's record of ``trial`` and its status say ``desired`` (a
    merge: None removes a field), or None when both say it already. The status is compared with the
    record, not trusted: a field forged there is written back. A run's verdict (settled or paused)
    records how many reports it was made on; later ones never count."""
    recorded = verdict_of(trial)
    verdict = {**recorded, **{k: v for k, v in desired.items() if k not in DERIVED_FIELDS}}
    verdict = {k: v for k, v in verdict.items() if v is not None}
    if verdict.get("phase") in SETTLED_PHASES and verdict.get(REPORTS_COUNTED) is None:
        verdict[REPORTS_COUNTED] = len((trial.get("status") or {}).get("reports") or [])
    shown = {**dict.fromkeys(RECORDED_FIELDS), **recorded, **desired}
    shown.pop(REPORTS_COUNTED, None)
    patch = status_patch(trial.get("status"), shown)
    changed = verdict != recorded or not has_verdict(trial)
    if not patch and not changed:
        return None
    return PatchTrialStatus(trial["metadata"]["name"], patch, event, verdict if changed else None)


def _needs_own_identity(study: JSON, trial: str) -> bool:
    return trial_account(study, trial) == trial_identity_name(trial)


def _trial_writes(
    world: World, states: list[TrialState], decision: Decision, levels: tuple[float, ...], now: float
) -> tuple[list[Write], list[Event]]:
    study, name = world.study, world.study["metadata"]["name"]
    trials = {t["metadata"]["name"]: t for t in world.trials}
    writes: list[Write] = []
    events: list[Event] = []
    settled: dict[str, JSON] = {}
    by_index = {s.view.index: s for s in states}
    resumed: dict[str, ResumeTrial] = {}
    for action in decision.actions:
        if isinstance(action, ResumeTrial):
            state = by_index[action.index]
            settled[state.name] = _resume_status(action, state.run.number + 1)
            resumed[state.name] = action
        elif isinstance(action, PruneTrial):
            settled[trial_name(name, action.index)] = {
                "phase": "Pruned",
                "rung": action.rung,
                "cutoff": action.cutoff,
                "reason": "Pruned",
                "message": f"{action.value:g} at resource {action.resource:g} missed rung {action.rung}'s "
                f"cut-off {action.cutoff:g}{tie_note(action.value, action.cutoff)}",
                "finishedAt": to_rfc3339(now),
            }
        elif isinstance(action, StopTrial):
            settled[trial_name(name, action.index)] = {
                "phase": "Stopped",
                "reason": "Deadline" if action.reason == "deadline" else "Stopped",
                "message": f"stopped: {action.reason}",
                "finishedAt": to_rfc3339(now),
            }
    for state in states:
        if (
            world.identities.get(state.name) == "foreign"
            and state.name not in settled
            and state.status["phase"] in ("Pending", "Paused")
        ):
            settled[state.name] = {
                "phase": "Failed",
                "reason": "IdentityTaken",
                "message": f"a ServiceAccount named {trial_identity_name(state.name)} exists and is not the "
                "trial's own: the trial does not run as it",
                "finishedAt": to_rfc3339(now),
            }
    for state in states:
        desired = {**state.status, **settled.get(state.name, {})}
        phase = desired["phase"]
        desired |= progress(state.view.reports, levels, phase in ENDED_PHASE_NAMES)
        desired |= refused(state.refusals)
        trial = trials[state.name]
        recorded_phase = verdict_of(trial).get("phase")
        event = _trial_event(state.name, phase, desired) if phase != recorded_phase else None
        if state.name in resumed:
            action = resumed[state.name]
            what = "final training" if action.final else "promoted"
            event = Event(
                "TrialResumed",
                f"trial {state.name}: {what}, from resource {action.start_from:g} to {action.stop_at:g}",
            )
        write = trial_patch(trial, desired, event)
        if write is not None:
            writes.append(write)
        identity = world.identities.get(state.name, "ready")
        own = _needs_own_identity(study, state.name)
        if own and identity == "missing" and phase in ("Pending", "Running", "Paused"):
            writes.append(CreateIdentity(state.name, tuple(build_trial_identity(trial))))
        ready = not own or identity == "ready"
        if state.name in resumed:
            # The new run's Job, from the verdict just recorded (a restart makes it from the API).
            if ready:
                resumed_trial = {**trial, "metadata": _with_verdict(trial, write)}
                job_deadline = _job_deadline(decision, resumed_trial, now)
                writes.append(CreateJob(state.name, build_job(study, resumed_trial, job_deadline, now)))
            continue
        job = world.jobs.get(state.job_name)
        if phase in ("Pruned", "Stopped") and _still_running(world, state.name, job):
            # After the verdict, so a restart never reruns it.
            writes += _stop_job(world, state.name, state.job_name, job, now)
        elif phase in ("Pending", "Running") and job is None and not state.run_started:
            if ready:
                job_deadline = _job_deadline(decision, trial, now)
                writes.append(CreateJob(state.name, build_job(study, trial, job_deadline, now)))
        elif (
            phase in ("Pending", "Running")
            and job is not None
            and decision.deadline is not None
            and "activeDeadlineSeconds" not in job.get("spec", {})
        ):
            job_deadline = _job_deadline(decision, trial, now)
            if job_deadline is not None:
                seconds = build_job(study, trial, job_deadline, now)["spec"]
                writes.append(PatchJobDeadline(state.job_name, seconds["activeDeadlineSeconds"]))
    for action in decision.actions:
        if isinstance(action, StartTrial):
            trial = build_trial(study, action.index, action.params, action.stop_at)
            trial_name_ = trial["metadata"]["name"]
            own = _needs_own_identity(study, trial_name_)
            # Before 1.24 the new account's token Secret must exist before its pod is admitted.
            job = None if own and world.token_secrets else build_job(study, trial, decision.deadline, now)
            started = Event("TrialStarted", f"trial {trial_name_}: {action.params}")
            writes.append(CreateTrial(trial, job, started, identity=own))
    return writes, events


def _with_verdict(trial: JSON, write: PatchTrialStatus | None) -> JSON:
    """The trial's metadata with the verdict ``write`` records (what a later read would see)."""
    meta = dict(trial["metadata"])
    if write is not None and write.verdict is not None:
        meta["annotations"] = {
            **(meta.get("annotations") or {}),
            VERDICT_ANNOTATION: verdict_text(write.verdict),
        }
    return meta


def _job_deadline(decision: Decision, trial: JSON, now: float) -> float | None:
    """When a run's Job must end: the study's deadline, or for the final training its own bound."""
    run = run_of(trial)
    if run.final:
        seconds = _final_seconds(decision, run.start_from or 0.0)
        return None if seconds is None else now + seconds
    return decision.deadline


def _live_pods(world: World, trial: str) -> tuple[str, ...]:
    return tuple(
        p["metadata"]["name"]
        for p in world.pods.get(trial, ())
        if not p["metadata"].get("deletionTimestamp")
        and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    )


def _still_running(world: World, trial: str, job: JSON | None) -> bool:
    """The trial's Job has not finished, or its Job is gone and a pod of it still runs: a crash or
    an API outage between deleting the Job and deleting its pods leaves the pod to the garbage
    collector, which may take long or, after an outage, not come at all."""
    if job is not None:
        return not _job_finished(job)
    return bool(_live_pods(world, trial))


def _stop_job(world: World, trial: str, job_name: str, job: JSON | None, now: float) -> list[Write]:
    """The writes that end a stopped trial's Job: scale it down, then delete it once its pod stops
    (or JOB_CONTROLLER_WAIT_SECONDS after the scale-down, pods by name); a pod whose Job is gone is
    deleted by name at once. Nothing while the Job controller is given its time."""
    live = _live_pods(world, trial)
    if job is None:
        return [DeleteJob(job_name, live)]
    if (job.get("spec") or {}).get("parallelism") != 0:
        return [ScaleJobDown(job_name, to_rfc3339(now, micro=True))]
    waited = _scale_down_wait(job, now)
    if live and waited is not None and waited > 0:
        return []
    return [DeleteJob(job_name, live)]


def _scale_down_wait(job: JSON, now: float) -> float | None:
    """Seconds the Job controller still has to stop the pod of a scaled-down Job; None when the Job
    carries no scale-down time."""
    stamp = to_timestamp(((job.get("metadata") or {}).get("annotations") or {}).get(SCALED_DOWN_AT))
    return None if stamp is None else stamp + JOB_CONTROLLER_WAIT_SECONDS - now


def _stop_check_after(world: World, now: float) -> float | None:
    """When to look again at scaled-down Jobs whose pods still run, for the fallback."""
    waits = [
        wait
        for trial in world.trials
        if (job := world.jobs.get(current_job_name(trial))) is not None
        and (job.get("spec") or {}).get("parallelism") == 0
        and _live_pods(world, trial["metadata"]["name"])
        and (wait := _scale_down_wait(job, now)) is not None
    ]
    return max(0.05, min(waits) + 0.02) if waits else None


def _job_finished(job: JSON) -> bool:
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


def _trial_event(name: str, phase: str, status: JSON) -> Event | None:
    message = f"trial {name}: {status.get('message') or phase.lower()}"
    if phase == "Pruned":
        return Event("TrialPruned", message)
    if phase == "Failed":
        return Event("TrialFailed", message, "Warning")
    if phase == "Stopped":
        return Event("TrialStopped", message)
    if phase == "Completed":
        return Event("TrialCompleted", message)
    if phase == "Paused":
        return Event("TrialPaused", message)
    return None


def _finish_event(finalize: Finalize) -> Event:
    best = finalize.best
    detail = f"; best {best.value:g} by trial {best.index} at resource {best.resource:g}" if best else ""
    if finalize.succeeded:
        return Event("StudySucceeded", f"{finalize.reason}{detail}")
    return Event("StudyFailed", f"{finalize.reason}{detail}", "Warning")


def _phases(states: list[TrialState], writes: list[Write]) -> list[str]:
    """Each trial's phase once these writes have landed."""
    phases = {s.name: s.status["phase"] for s in states}
    for w in writes:
        if isinstance(w, PatchTrialStatus) and "phase" in w.patch:
            phases[w.trial] = w.patch["phase"]
        elif isinstance(w, CreateTrial):
            phases[w.trial["metadata"]["name"]] = "Pending"
    return list(phases.values())


def _study_status(
    study: JSON,
    states: list[TrialState],
    decision: Decision,
    started_at: float,
    now: float,
    writes: list[Write],
) -> JSON:
    current = study.get("status") or {}
    conditions = current.get("conditions") or []
    phases = _phases(states, writes)
    plan, deadline, best = decision.plan, decision.deadline, decision.best
    finalize = decision.finalize
    finished = sum(1 for p in phases if p in ENDED_PHASE_NAMES)
    unschedulable = [f"{s.name}: {s.unschedulable}" for s in states if s.unschedulable]
    wanted = [("Invalid", False, "Valid", "the spec is valid")]
    if finalize is not None:
        wanted += [
            ("Ready", False, "Finished", finalize.reason),
            ("Complete", True, "Succeeded" if finalize.succeeded else "Failed", finalize.reason),
        ]
    elif unschedulable:
        wanted.append(("Ready", False, "Unschedulable", "; ".join(unschedulable)))
    else:
        wanted.append(("Ready", True, "Running", decision.message or "trials are running"))
    budget: JSON = {
        "startedAt": to_rfc3339(started_at, micro=True),
        "deadline": to_rfc3339(deadline) if deadline is not None else None,
        "budgetSeconds": round(deadline - started_at, 3) if deadline is not None else None,
        "usedSeconds": float(round(now - started_at)),
    }
    if deadline is not None:
        budget["stopMarginSeconds"] = round(decision.stop_margin, 3)
    if finalize is not None:
        budget["finishedAt"] = to_rfc3339(now, micro=True)
        budget["usedSeconds"] = round(now - started_at, 3)
        if deadline is not None:
            budget["finishedInsideSeconds"] = round(deadline - now, 3)
    phase: StudyPhase = "Running" if finalize is None else ("Succeeded" if finalize.succeeded else "Failed")
    return StudyStatus(
        phase=phase,
        message=(finalize.reason if finalize else decision.message) or None,
        progress=f"{finished}/{plan.planned_trials if plan else '?'}",
        observed_generation=study["metadata"].get("generation"),
        conditions=[Condition.model_validate(c) for c in _conditions(conditions, wanted, now)],
        plan=PlanStatus.of(plan, deadline=budget["deadline"]) if plan else None,
        trials=TrialCounts.of(phases),
        best=None if best is None else BestStatus.of(best, trial_name(study["metadata"]["name"], best.index)),
        budget=BudgetStatus.model_validate(budget),
        final=_final_status(study, states, decision, now),
    ).document()


def _final_status(
    study: JSON, states: list[TrialState], decision: Decision, now: float
) -> FinalStatus | None:
    """status.final: the trial under final training, and once it is done its value and model."""
    current = (study.get("status") or {}).get("final")
    finalize = decision.finalize
    index: int | None
    if finalize is not None and finalize.final is not None:
        index = finalize.final
    elif current:
        index = int(current["index"])
    else:
        index = next((a.index for a in decision.actions if isinstance(a, ResumeTrial) and a.final), None)
        index = index if index is not None else next((s.view.index for s in states if s.run.final), None)
    if index is None:
        return None
    name = trial_name(study["metadata"]["name"], index)
    out: JSON = {"trial": name, "index": index, "phase": "Running"}
    trained = any(s.run.final for s in states if s.view.index == index) or any(
        isinstance(a, ResumeTrial) and a.final for a in decision.actions
    )
    if trained:  # a final training ran (else the best trial reached R during HPO)
        out["startedAt"] = (current or {}).get("startedAt") or to_rfc3339(now)
    if finalize is not None:
        out["phase"] = "Succeeded" if finalize.succeeded and finalize.final is not None else "Failed"
        best = finalize.best
        if best is not None and best.index == index:
            out |= {"value": best.value, "resource": best.resource}
        claim = checkpoint_claim(study)
        if claim is not None and finalize.final is not None:
            out["checkpoint"] = {"claimName": claim, "path": checkpoint_path(study, name)}
    return FinalStatus.model_validate(out)


def _invalid(
    world: World, reason: str, message: str, now: float, states: list[TrialState] | None = None
) -> Outcome:
    """A study that cannot run: phase Failed, an Invalid condition naming every problem, no trial."""
    current = world.study.get("status") or {}
    conditions = _conditions(
        current.get("conditions") or [],
        [("Invalid", True, reason, message), ("Ready", False, reason, message)],
        now,
    )
    writes: list[Write] = []
    trials = {t["metadata"]["name"]: t for t in world.trials}
    for state in states or []:
        if state.view.status.active:
            stop = {"phase": "Stopped", "reason": reason, "message": message, "finishedAt": to_rfc3339(now)}
            job = world.jobs.get(state.job_name)
            write = trial_patch(trials[state.name], stop)
            writes += [write] if write else []
            writes += _stop_job(world, state.name, state.job_name, job, now)
    status = {"phase": "Failed", "message": message, "conditions": conditions}
    return Outcome(
        writes=writes,
        status=status_patch(current, status) or None,
        events=[Event(reason, message, "Warning")],
        requeue_after=_stop_check_after(world, now),
    )


def reconcile_failed(world: World, error: Exception, now: float) -> Outcome:
    """What a reconcile that raised leaves behind: a running study is Failed with the error in its
    Invalid condition (its trials are stopped as every finished study's are); a finished one is left
    as it is. Nothing is retried: the same world would fail the same way."""
    if (world.study.get("status") or {}).get("phase") in TERMINAL_STUDY_PHASES:
        return Outcome()
    message = f"the operator could not reconcile this study: {type(error).__name__}: {error}"[:1000]
    outcome = _invalid(world, "ReconcileError", message, now)
    return Outcome(status=outcome.status, events=outcome.events)


def _settled(world: World, now: float) -> Outcome:
    """A finished study: make sure no trial of it still runs (a crash may have interrupted the end)."""
    writes: list[Write] = []
    for trial in world.trials:
        name = trial["metadata"]["name"]
        phase = verdict_of(trial).get("phase")
        job_name = current_job_name(trial)
        job = world.jobs.get(job_name)
        stop: JSON = {}
        if phase not in ENDED_PHASE_NAMES and phase != "Paused":  # a paused trial stays as it ended
            stop = {"phase": "Stopped", "reason": "StudyFinished", "finishedAt": to_rfc3339(now)}
        write = trial_patch(trial, stop)  # also writes back a status forged after the end
        writes += [write] if write else []
        # A Completed or Paused verdict comes from a pod that exited 0, often before its Job says
        # Complete: that Job is finishing on its own and is kept, a resumed run's record.
        if phase not in ("Completed", "Paused") and _still_running(world, name, job):
            writes += _stop_job(world, name, job_name, job, now)
    if not writes:
        writes += _checkpoint_cleanup(world)
    return Outcome(writes=writes, requeue_after=_stop_check_after(world, now))


def _checkpoint_cleanup(world: World) -> list[Write]:
    """Once no trial runs, delete every checkpoint folder but the model's (the final training's,
    else the best trial's): no trial of a finished study resumes."""
    study = world.study
    name = study["metadata"]["name"]
    if checkpoint_claim(study) is None or cleanup_job_name(name) in world.jobs:
        return []
    if any(_live_pods(world, t["metadata"]["name"]) for t in world.trials):
        return []
    status = study.get("status") or {}
    keep = model_trial((status.get("best") or {}).get("trial"), (status.get("final") or {}).get("trial"))
    drop = sorted(t["metadata"]["name"] for t in world.trials if t["metadata"]["name"] != keep)
    job = build_cleanup_job(study, drop)
    if job is None:
        return []
    kept = f", keeping {keep}'s" if keep else ""
    event = Event("CheckpointCleanup", f"deleting the checkpoints of {len(drop)} trials{kept}")
    return [CreateCleanupJob(job, event)]
