"""One study's reconcile, as a pure function: the world as read from the API -> the writes to make.

Level-based: it reads everything it needs (the study, its HPOTrials, their Jobs and pods, the GPU
capacity), asks the decision core, and returns only the writes that change something. State lives
in the API (the study's ``status.budget.startedAt``, the HPOTrials and their reports), so any
operator, restarted or not, computes the same writes from the same world. world.py does the I/O.

Beside it: writes.py (the world read and the writes returned), status.py (the study's status),
stopping.py (how a stopped trial's Job ends); a trial's rules are trials.py's, observe.py reads
them from API objects.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..asha import tie_note
from ..config import ConfigError, StudyConfig, study_config_from_spec
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
from ..trials import ENDED_PHASE_NAMES, Report, StopMargin, TrialPhase, final_training_seconds, model_trial
from .builders import (
    build_claim,
    build_cleanup_job,
    build_job,
    build_trial,
    build_trial_identity,
    checkpoint_claim,
    cleanup_job_name,
    run_of,
    trial_account,
)
from .capacity import Capacity
from .core_cache import CoreCache
from .extension import Extension, checkpoints_expire_at, judge, refused_early, spec_changed
from .observe import (
    TrialState,
    current_job_name,
    observe_trial,
    progress,
    progress_reached_at,
    refused,
    status_patch,
    to_rfc3339,
    to_timestamp,
)
from .policy import TrialPolicy, refused_fields
from .resources import (
    GPU,
    TERMINAL_STUDY_PHASES,
    trial_identity_name,
    trial_name,
)
from .status import (
    FINAL_DONE,
    RESYNC_SECONDS,
    counts_wait,
    merge_conditions,
    only_the_clock_moved,
    study_status,
    without_plan_noise,
)
from .stopping import (
    live_pods,
    still_running,
    stop_check_after,
    stop_job,
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
from .writes import (
    JSON,
    CreateClaim,
    CreateCleanupJob,
    CreateIdentity,
    CreateJob,
    CreateTrial,
    Event,
    Outcome,
    PatchJobDeadline,
    PatchTrialStatus,
    World,
    Write,
)

# A run's verdict is final for these: its reports are counted then, and later ones never count.
SETTLED_PHASES = ENDED_PHASE_NAMES | {TrialPhase.PAUSED.value}
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


def needs_identity(trial: Mapping[str, Any], jobs: Mapping[str, Any]) -> bool:
    """Whether the trial may get a new Job soon (and so its identity must be ready): it has not
    settled and its current run's Job does not exist, or it is paused and may be resumed."""
    phase = verdict_of(trial).get("phase")
    if phase in ENDED_PHASE_NAMES:
        return False
    return phase == TrialPhase.PAUSED or current_job_name(trial) not in jobs


# --- the reconcile ------------------------------------------------------------------------------


def reconcile(
    world: World, now: float, policy: TrialPolicy | None = None, cores: CoreCache | None = None
) -> Outcome:
    """``policy``: what trial templates may ask for beyond the default (policy.py). ``cores``: the
    decision cores kept between reconciles (core_cache.py); without it a core is built each time,
    and either way the outcome is the same."""
    study = world.study
    status = study.get("status") or {}
    # A finished study is settled, unless its spec changed since: then a raised budget continues it.
    reopening = status.get("phase") in TERMINAL_STUDY_PHASES
    if reopening and not spec_changed(study):
        if cores is not None:
            cores.forget(study["metadata"]["uid"])
        return _settled(world, now)
    config, problem = _validated(study, policy or TrialPolicy())
    if problem is not None:
        if reopening:
            phase = status["phase"]
            reason, message = problem
            return _not_extended(world, now, Extension(False, reason, f"{message}: it stays {phase}"))
        return _invalid(world, *problem, now)
    assert config is not None

    gpus = int(study["spec"].get("gpusPerTrial", 1))
    largest = world.capacity.largest
    if not world.trials and largest is not None and gpus > largest and not reopening:
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
    slots = _slots(config, gpus, world.capacity)
    meta = study["metadata"]
    core = (
        Study(config, slots)
        if cores is None
        else cores.core(meta["uid"], meta.get("generation"), config, slots)
    )
    extension: Extension | None = None
    if reopening:
        budget = core.budget_seconds([core.screen(s.view) for s in states])
        extension = refused_early(world, config, now) or judge(
            study, budget, STOP_MARGIN.seconds(budget), now
        )
        if not extension.extend:
            return _not_extended(world, now, extension)
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
        if extension is not None:
            return _not_extended(world, now, Extension(False, "BudgetTooSmall", str(err)))
        outcome = _invalid(world, "BudgetTooSmall", str(err), now, states)
        return Outcome(outcome.writes, outcome.status, first_status, outcome.events, outcome.requeue_after)
    plan = decision.plan
    levels = (*plan.rungs, plan.max_resource) if plan else (config.max_resource,)
    writes, events, held = _trial_writes(world, states, decision, levels, now)
    requeue = RESYNC_SECONDS if held is None else min(RESYNC_SECONDS, held + 0.02)
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
    stop_check = stop_check_after(world, now)
    if stop_check is not None:
        requeue = min(requeue, stop_check)
    new_status = study_status(study, states, decision, started_at, now, writes, extension)
    finalize = decision.finalize
    if extension is not None:
        events.insert(0, Event("Extended", extension.message))
    else:
        events[:0] = _budget_changed(study, new_status)
    if finalize is not None:
        events.append(_finish_event(finalize))
    patch = status_patch(status, new_status)
    patch = without_plan_noise(status, patch)
    if set(patch) == {"budget"} and only_the_clock_moved(status.get("budget") or {}, patch["budget"]):
        patch = {}
    wait = counts_wait(status, patch, started_at, now)
    if wait is not None:
        patch, requeue = {}, min(requeue, wait + 0.02)
    return Outcome(
        writes=writes,
        status=patch or None,
        first_status=first_status,
        events=events,
        requeue_after=stop_check if finalize else requeue,
        decision=decision,
    )


def _final_index(study: JSON, states: list[TrialState]) -> int | None:
    """The trial under final training: as the study's status says, or as its HPOTrial says (the
    trial's status is written before the study's). A final training that ended before the study
    was extended is over: HPO goes on, and that trial is one trained to R."""
    final = (study.get("status") or {}).get("final") or {}
    if final.get("index") is not None and final.get("phase") not in FINAL_DONE:
        return int(final["index"])
    return next((s.view.index for s in states if s.run.final and s.view.status.active), None)


def _budget_changed(study: JSON, new_status: JSON) -> list[Event]:
    """A BudgetChanged event when a spec change moved a running study's deadline (once: the status
    written with it records the new generation)."""
    current = study.get("status") or {}
    before = (current.get("budget") or {}).get("deadline")
    after = (new_status.get("budget") or {}).get("deadline")
    if not spec_changed(study) or before is None or after is None or before == after:
        return []
    return [Event("BudgetChanged", f"the deadline moved from {before} to {after}")]


def _validated(study: JSON, policy: TrialPolicy) -> tuple[StudyConfig | None, tuple[str, str] | None]:
    """The study's config, or the reason and message of what makes its spec unusable."""
    try:
        config = study_config_from_spec(study.get("spec") or {})
    except ConfigError as err:
        return None, ("InvalidSpec", "; ".join(err.problems))
    refused = refused_fields(study["spec"].get("trialTemplate") or {}, study["metadata"]["namespace"], policy)
    if refused:
        # Before any trial is created; a study refused later (a changed policy) stops its trials as
        # every finished study does.
        return None, ("TemplateRefused", "; ".join(refused))
    unknown = template_problems(study["spec"])  # ${name}s of the command lines, the collector's command
    if unknown:
        return None, ("InvalidSpec", "; ".join(unknown))
    return config, None


def _not_extended(world: World, now: float, extension: Extension) -> Outcome:
    """A finished study whose changed spec does not continue it: settled as before, with the new
    generation recorded and the Extended condition and an event saying why."""
    settled = _settled(world, now)
    current = world.study.get("status") or {}
    wanted = [("Extended", False, extension.reason, extension.message)]
    status = {
        "observedGeneration": world.study["metadata"].get("generation"),
        "conditions": merge_conditions(current.get("conditions") or [], wanted, now),
    }
    event = Event("NotExtended", extension.message, "Warning" if extension.warning else "Normal")
    patch = status_patch(current, status) or None
    return Outcome(settled.writes, patch, None, [event], settled.requeue_after)


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
        "phase": TrialPhase.PENDING.value,
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
) -> tuple[list[Write], list[Event], float | None]:
    """The trials' writes and events, and how soon the first trial status held back is due
    (``first_mirror_wait``, ``progress_wait``)."""
    study, name = world.study, world.study["metadata"]["name"]
    trials = {t["metadata"]["name"]: t for t in world.trials}
    writes: list[Write] = []
    events: list[Event] = []
    settled: dict[str, JSON] = {}
    by_index = {s.view.index: s for s in states}
    resumed: dict[str, ResumeTrial] = {}
    waits: list[float] = []
    for action in decision.actions:
        if isinstance(action, ResumeTrial):
            state = by_index[action.index]
            settled[state.name] = _resume_status(action, state.run.number + 1)
            resumed[state.name] = action
        elif isinstance(action, PruneTrial):
            settled[trial_name(name, action.index)] = {
                "phase": TrialPhase.PRUNED.value,
                "rung": action.rung,
                "cutoff": action.cutoff,
                "reason": "Pruned",
                "message": f"{action.value:g} at resource {action.resource:g} missed rung {action.rung}'s "
                f"cut-off {action.cutoff:g}{tie_note(action.value, action.cutoff)}",
                "finishedAt": to_rfc3339(now),
            }
        elif isinstance(action, StopTrial):
            settled[trial_name(name, action.index)] = {
                "phase": TrialPhase.STOPPED.value,
                "reason": _STOP_REASONS.get(action.reason, "Stopped"),
                "message": f"stopped: {action.reason}",
                "finishedAt": to_rfc3339(now),
            }
    for state in states:
        if (
            world.identities.get(state.name) == "foreign"
            and state.name not in settled
            and state.status["phase"] in (TrialPhase.PENDING, TrialPhase.PAUSED)
        ):
            settled[state.name] = {
                "phase": TrialPhase.FAILED.value,
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
        wait = first_mirror_wait(trial, write, now)
        if wait is None and phase not in ENDED_PHASE_NAMES:
            ends_at = min(state.run.stop_at or levels[-1], levels[-1])
            wait = progress_wait(write, state.view.reports, levels, ends_at, now)
        if wait is not None:
            waits.append(wait)
        elif write is not None:
            writes.append(write)
        identity = world.identities.get(state.name, "ready")
        own = _needs_own_identity(study, state.name)
        if (
            own
            and identity == "missing"
            and phase in (TrialPhase.PENDING, TrialPhase.RUNNING, TrialPhase.PAUSED)
        ):
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
        if phase in (TrialPhase.PRUNED, TrialPhase.STOPPED) and still_running(world, state.name, job):
            # After the verdict, so a restart never reruns it.
            writes += stop_job(world, state.name, state.job_name, job, now)
        elif phase in (TrialPhase.PENDING, TrialPhase.RUNNING) and job is None and not state.run_started:
            if ready:
                job_deadline = _job_deadline(decision, trial, now)
                writes.append(CreateJob(state.name, build_job(study, trial, job_deadline, now)))
        elif (
            phase in (TrialPhase.PENDING, TrialPhase.RUNNING)
            and job is not None
            and decision.deadline is not None
            and "activeDeadlineSeconds" not in job.get("spec", {})
        ):
            job_deadline = _job_deadline(decision, trial, now)
            if job_deadline is not None:
                seconds = build_job(study, trial, job_deadline, now)["spec"]
                writes.append(PatchJobDeadline(state.job_name, seconds["activeDeadlineSeconds"]))
        elif (
            phase in (TrialPhase.PENDING, TrialPhase.RUNNING)
            and job is not None
            and decision.deadline is not None
            and not state.run.final
            and (later := _later_job_deadline(job, decision.deadline)) is not None
        ):
            # The budget was raised while the trial runs: its Job may run to the new deadline.
            writes.append(PatchJobDeadline(state.job_name, later))
    for action in decision.actions:
        if isinstance(action, StartTrial):
            trial = build_trial(study, action.index, action.params, action.stop_at)
            trial_name_ = trial["metadata"]["name"]
            own = _needs_own_identity(study, trial_name_)
            # Before 1.24 the new account's token Secret must exist before its pod is admitted.
            job = None if own and world.token_secrets else build_job(study, trial, decision.deadline, now)
            started = Event("TrialStarted", f"trial {trial_name_}: {action.params}")
            writes.append(CreateTrial(trial, job, started, identity=own))
    return writes, events, min(waits, default=None)


# A running trial's progress to the level where its run ends (R, or the stop resource of a run that
# pauses) waits this long after the report that reached it: the run ends a moment later, and its
# verdict carries the progress in its own write. Progress to a rung below is written at once.
PROGRESS_SECONDS = 5.0


def progress_wait(
    write: PatchTrialStatus | None,
    reports: Sequence[Report],
    levels: Sequence[float],
    ends_at: float,
    now: float,
) -> float | None:
    """Seconds a write of a running trial's progress alone waits (``PROGRESS_SECONDS`` from the
    report that reached ``ends_at``, the level where its run ends), or None to make ``write`` now.
    A report stamped later than ``now`` (a trial's clock ahead of the operator's) is written at
    once, so nothing waits longer."""
    if write is None or write.verdict is not None or write.event is not None:
        return None
    if not write.patch or set(write.patch) - {"resource", "lastValue"}:
        return None
    reached_at = progress_reached_at(reports, levels, ends_at)  # only for a write of progress alone
    if reached_at is None:
        return None
    waited = now - reached_at
    return PROGRESS_SECONDS - waited if 0 <= waited < PROGRESS_SECONDS else None


# A new trial's status is first written once its pod runs (with its start, in the same writes), or
# after this long still Pending: a pod that starts at once costs no write of "Pending".
FIRST_MIRROR_SECONDS = 5.0


def first_mirror_wait(trial: JSON, write: PatchTrialStatus | None, now: float) -> float | None:
    """Seconds the first status write of a new trial waits (``FIRST_MIRROR_SECONDS``), or None to
    make ``write`` now: it records no verdict and no event, it only shows "Pending" on a trial whose
    status has no phase yet."""
    if write is None or write.verdict is not None or write.event is not None:
        return None
    if write.patch.get("phase") != TrialPhase.PENDING or (trial.get("status") or {}).get("phase"):
        return None
    created = to_timestamp(trial["metadata"].get("creationTimestamp"))
    if created is None:
        return None
    wait = created + FIRST_MIRROR_SECONDS - now
    return wait if wait > 0 else None


def _later_job_deadline(job: JSON, deadline: float) -> int | None:
    """activeDeadlineSeconds that lets a started Job run to ``deadline``, when that is later than
    the one it has (a lowered budget needs none: the operator stops its trials itself)."""
    seconds = (job.get("spec") or {}).get("activeDeadlineSeconds")
    started = to_timestamp((job.get("status") or {}).get("startTime"))
    if seconds is None or started is None:
        return None
    wanted = math.floor(deadline - started)
    return wanted if wanted > int(seconds) + 1 else None


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


def _trial_event(name: str, phase: str, status: JSON) -> Event | None:
    message = f"trial {name}: {status.get('message') or phase.lower()}"
    if phase == TrialPhase.PRUNED:
        return Event("TrialPruned", message)
    if phase == TrialPhase.FAILED:
        return Event("TrialFailed", message, "Warning")
    if phase == TrialPhase.STOPPED:
        return Event("TrialStopped", message)
    if phase == TrialPhase.COMPLETED:
        return Event("TrialCompleted", message)
    if phase == TrialPhase.PAUSED:
        return Event("TrialPaused", message)
    return None


# A stopped trial's reason (CamelCase) for the core's reasons that have their own.
_STOP_REASONS = {"deadline": "Deadline", "goal reached": "GoalReached"}


def _finish_event(finalize: Finalize) -> Event:
    best = finalize.best
    detail = f"; best {best.value:g} by trial {best.index} at resource {best.resource:g}" if best else ""
    if finalize.succeeded:
        return Event("StudySucceeded", f"{finalize.reason}{detail}")
    return Event("StudyFailed", f"{finalize.reason}{detail}", "Warning")


def _invalid(
    world: World, reason: str, message: str, now: float, states: list[TrialState] | None = None
) -> Outcome:
    """A study that cannot run: phase Failed, an Invalid condition naming every problem, no trial."""
    current = world.study.get("status") or {}
    conditions = merge_conditions(
        current.get("conditions") or [],
        [("Invalid", True, reason, message), ("Ready", False, reason, message)],
        now,
    )
    writes: list[Write] = []
    trials = {t["metadata"]["name"]: t for t in world.trials}
    for state in states or []:
        if state.view.status.active:
            stop = {
                "phase": TrialPhase.STOPPED.value,
                "reason": reason,
                "message": message,
                "finishedAt": to_rfc3339(now),
            }
            job = world.jobs.get(state.job_name)
            write = trial_patch(trials[state.name], stop)
            writes += [write] if write else []
            writes += stop_job(world, state.name, state.job_name, job, now)
    status = {
        "phase": TrialPhase.FAILED.value,
        "message": message,
        "conditions": conditions,
        "observedGeneration": world.study["metadata"].get("generation"),
    }
    return Outcome(
        writes=writes,
        status=status_patch(current, status) or None,
        events=[Event(reason, message, "Warning")],
        requeue_after=stop_check_after(world, now),
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
        if phase not in ENDED_PHASE_NAMES and phase != TrialPhase.PAUSED:  # a paused trial stays as it ended
            stop = {
                "phase": TrialPhase.STOPPED.value,
                "reason": "StudyFinished",
                "finishedAt": to_rfc3339(now),
            }
        write = trial_patch(trial, stop)  # also writes back a status forged after the end
        writes += [write] if write else []
        # A Completed or Paused verdict comes from a pod that exited 0, often before its Job says
        # Complete: that Job is finishing on its own and is kept, a resumed run's record.
        if phase not in (TrialPhase.COMPLETED, TrialPhase.PAUSED) and still_running(world, name, job):
            writes += stop_job(world, name, job_name, job, now)
    requeue = stop_check_after(world, now)
    expires = checkpoints_expire_at(world.study)
    if not writes and expires is not None:
        if now >= expires:
            writes += _checkpoint_cleanup(world)
        elif cleanup_job_name(world.study["metadata"]["name"]) not in world.jobs:
            wait = max(0.05, expires - now)
            requeue = wait if requeue is None else min(requeue, wait)
    return Outcome(writes=writes, requeue_after=requeue)


def _checkpoint_cleanup(world: World) -> list[Write]:
    """Once no trial runs and spec.checkpoints.keepFor has passed since the end, delete every
    checkpoint folder but the model's (the final training's, else the best trial's): from then on
    no trial of the study resumes, and its budget can no longer be raised (extension.py)."""
    study = world.study
    name = study["metadata"]["name"]
    if checkpoint_claim(study) is None or cleanup_job_name(name) in world.jobs:
        return []
    if any(live_pods(world, t["metadata"]["name"]) for t in world.trials):
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
