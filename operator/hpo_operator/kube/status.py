"""The HPOStudy's status, typed (resources.StudyStatus, from result.py's parts): its phase and
conditions, the plan, the trials' counts, the best, the budget and the final training. Written
only where it changed by more than the clock and the plan's re-measured figures (``without_plan_noise``)."""

from __future__ import annotations

import re

from ..result import BestStatus, PlanStatus, StudyPhase, TrialCounts
from ..study import (
    Decision,
    Finalize,
    ResumeTrial,
)
from ..trials import ENDED_PHASE_NAMES, TrialPhase
from .builders import (
    checkpoint_claim,
    checkpoint_path,
)
from .extension import Extension
from .observe import (
    TrialState,
    status_patch,
    to_rfc3339,
)
from .resources import (
    BudgetStatus,
    Condition,
    FinalStatus,
    StudyStatus,
    trial_name,
)
from .writes import (
    JSON,
    CreateTrial,
    PatchTrialStatus,
    Write,
)

# The phases of a final training that has ended (status.final.phase).
FINAL_DONE = frozenset({"Succeeded", "Failed"})
# How often a running study is looked at even when nothing it watches changes: other workloads'
# pods free GPUs without an event the operator watches.
RESYNC_SECONDS = 5.0


# --- conditions ---------------------------------------------------------------------------------


def condition(current: list[JSON], kind: str, status: bool, reason: str, message: str, now: float) -> JSON:
    """A condition whose lastTransitionTime moves only when its status does."""
    text = "True" if status else "False"
    old = next((c for c in current if c.get("type") == kind), None)
    since = old["lastTransitionTime"] if old and old.get("status") == text else to_rfc3339(now)
    return {"type": kind, "status": text, "reason": reason, "message": message, "lastTransitionTime": since}


def merge_conditions(current: list[JSON], wanted: list[tuple[str, bool, str, str]], now: float) -> list[JSON]:
    kinds = {w[0] for w in wanted}
    kept = [c for c in current if c.get("type") not in kinds]
    return kept + [condition(current, *w, now=now) for w in wanted]


# A running study's clock (budget.usedSeconds) alone is written once it moved this far: it is
# derived (budget.startedAt gives it), the operator's metrics have it live, and written at every
# resync it made each running study a whole-status write every 5 s, whatever happened.
CLOCK_EVERY_SECONDS = 30.0


def only_the_clock_moved(current: JSON, desired: JSON) -> bool:
    """True when the budget changed by usedSeconds alone, and by less than CLOCK_EVERY_SECONDS: not
    worth a write of its own (any other write carries the clock)."""
    others = {k: v for k, v in desired.items() if k != "usedSeconds"}
    moved = abs(float(desired.get("usedSeconds", 0)) - float(current.get("usedSeconds", 0)))
    return status_patch(current, others) == {} and moved < CLOCK_EVERY_SECONDS


# Plan figures re-measured from every report, and how far each may move from what the status says
# before it is worth a write of its own: estimates by a share, plannedTrials by a share or one trial.
PLAN_ESTIMATES = ("epochSeconds", "trialOverheadSeconds", "predictedGpuSeconds", "predictedSeconds")
ESTIMATE_TOLERANCE = 0.05
PLANNED_TRIALS_TOLERANCE = 0.1
PLAN_FIGURES = (*PLAN_ESTIMATES, "plannedTrials")


def _within(old: object, new: object, share: float, least: float = 0.0) -> bool:
    if old is None or new is None:
        return old == new
    assert isinstance(old, int | float) and isinstance(new, int | float)
    return abs(float(new) - float(old)) <= max(share * abs(float(old)), least, 1e-9)


def only_estimates_moved(current: JSON, desired: JSON | None) -> bool:
    """True when the plan changed by its re-measured figures alone, each by little: the time
    estimates by at most 5%, plannedTrials by at most 10% or one trial."""
    if not current or not desired:
        return False
    if status_patch(
        {k: v for k, v in current.items() if k not in PLAN_FIGURES},
        {k: v for k, v in desired.items() if k not in PLAN_FIGURES},
    ):
        return False
    return all(
        _within(current.get(k), desired.get(k), ESTIMATE_TOLERANCE) for k in PLAN_ESTIMATES
    ) and _within(current.get("plannedTrials"), desired.get("plannedTrials"), PLANNED_TRIALS_TOLERANCE, 1)


def _numbers_only(old: object, new: object) -> bool:
    """Two texts that differ in their numbers alone ("all 9 planned trials started", "all 10 ...")."""
    return isinstance(old, str) and isinstance(new, str) and _DIGITS.sub("#", old) == _DIGITS.sub("#", new)


_DIGITS = re.compile(r"[0-9]+")


def _conditions_numbers_only(old: object, new: object) -> bool:
    if not isinstance(old, list) or not isinstance(new, list) or len(old) != len(new):
        return False
    return all(
        isinstance(a, dict)
        and isinstance(b, dict)
        and status_patch(a, {k: v for k, v in b.items() if k != "message"}) == {}
        and set(a) == set(b)
        and (a.get("message") == b.get("message") or _numbers_only(a.get("message"), b.get("message")))
        for a, b in zip(old, new, strict=True)
    )


def without_plan_noise(current: JSON, patch: JSON) -> JSON:
    """The study status patch, less what only the plan's re-measured figures moved while the study
    runs: a plan whose figures moved a little (``only_estimates_moved``), the progress's planned
    count and the messages that quote it ("all 9 planned trials started"). Each report re-measures
    epoch times, so without this nearly every report rewrote the status. What stays is written as
    it is, the plan included when anything else changes (the phase, a condition's status or
    reason, a trial count, the best, the budget's other fields); the clock (usedSeconds) is
    ``only_the_clock_moved``'s to judge. A finished study's status is written whole."""
    if (patch.get("phase") or current.get("phase")) != "Running" or "plan" not in patch:
        return patch
    if not only_estimates_moved(current.get("plan") or {}, patch["plan"]):
        return patch
    noise = {"plan"}
    old_progress, new_progress = current.get("progress"), patch.get("progress")
    if (
        isinstance(old_progress, str)
        and isinstance(new_progress, str)
        and old_progress.split("/")[0] == new_progress.split("/")[0]
    ):
        noise.add("progress")
    if _numbers_only(current.get("message"), patch.get("message")):
        noise.add("message")
    if _conditions_numbers_only(current.get("conditions"), patch.get("conditions")):
        noise.add("conditions")
    rest = {k: v for k, v in patch.items() if k not in noise}
    if set(rest) - {"budget"}:
        return patch
    budget = rest.get("budget") or {}
    others = {k: v for k, v in budget.items() if k != "usedSeconds"}
    return rest if status_patch(current.get("budget") or {}, others) == {} else patch


# A running study's trial counts (status.trials, progress) change with every trial started and every
# verdict; written at most this often when nothing else changed, as the Job controller batches its
# status. The verdicts themselves are on the HPOTrials at once, and so are the best, the phase and
# the conditions here.
COUNTS_EVERY_SECONDS = 5.0
COUNTS = ("trials", "progress")


def only_counts_moved(current: JSON, patch: JSON) -> bool:
    """True when a running study's status patch changes its trial counts and nothing else that
    the noise rules (``without_plan_noise``, ``only_the_clock_moved``) would not drop."""
    if current.get("phase") != "Running" or patch.get("phase", "Running") != "Running":
        return False
    if not set(patch) & set(COUNTS):
        return False
    rest = without_plan_noise(current, {k: v for k, v in patch.items() if k not in COUNTS})
    if set(rest) == {"budget"} and only_the_clock_moved(current.get("budget") or {}, rest["budget"]):
        return True
    return not rest


def counts_wait(current: JSON, patch: JSON, started_at: float, now: float) -> float | None:
    """Seconds a count-only patch (``only_counts_moved``) waits before it is written, or None to
    write it now. The last write's time is the status's own: budget.usedSeconds, rewritten with
    every status write (to the second), so a restarted operator keeps the pace."""
    if not only_counts_moved(current, patch):
        return None
    used = (current.get("budget") or {}).get("usedSeconds")
    if not isinstance(used, int | float):
        return None
    wait = float(used) + COUNTS_EVERY_SECONDS - (now - started_at)
    return wait if wait > 0 else None


def _complete_reason(finalize: Finalize) -> str:
    """The Complete condition's reason: the core's code (GoalReached) for a success that has one."""
    if finalize.succeeded:
        return finalize.code or "Succeeded"
    return "Failed"


def _phases(states: list[TrialState], writes: list[Write]) -> list[str]:
    """Each trial's phase once these writes have landed."""
    phases = {s.name: s.status["phase"] for s in states}
    for w in writes:
        if isinstance(w, PatchTrialStatus) and "phase" in w.patch:
            phases[w.trial] = w.patch["phase"]
        elif isinstance(w, CreateTrial):
            phases[w.trial["metadata"]["name"]] = TrialPhase.PENDING.value
    return list(phases.values())


def study_status(
    study: JSON,
    states: list[TrialState],
    decision: Decision,
    started_at: float,
    now: float,
    writes: list[Write],
    extension: Extension | None = None,
) -> JSON:
    """``extension``: this reconcile continues the finished study (a raised budget)."""
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
            ("Complete", True, _complete_reason(finalize), finalize.reason),
        ]
    elif unschedulable:
        wanted.append(("Ready", False, "Unschedulable", "; ".join(unschedulable)))
    else:
        extended = extension is not None or bool((current.get("budget") or {}).get("extendedAt"))
        ready = "Extended" if extended else "Running"
        wanted.append(("Ready", True, ready, decision.message or "trials are running"))
    if extension is not None:
        wanted.append(("Extended", True, extension.reason, extension.message))
    if finalize is None and any(c.get("type") == "Complete" for c in conditions):
        # Finished once, running again.
        wanted.append(("Complete", False, "Extended", "the budget was raised after the study finished"))
    budget: JSON = {
        "startedAt": to_rfc3339(started_at, micro=True),
        "deadline": to_rfc3339(deadline) if deadline is not None else None,
        "budgetSeconds": round(deadline - started_at, 3) if deadline is not None else None,
        "usedSeconds": float(round(now - started_at)),
    }
    if deadline is not None:
        budget["stopMarginSeconds"] = round(decision.stop_margin, 3)
    recorded = current.get("budget") or {}
    if extension is not None:
        budget |= {"extendedAt": to_rfc3339(now, micro=True), "previousDeadline": extension.previous_deadline}
    elif recorded.get("extendedAt"):
        budget |= {"extendedAt": recorded["extendedAt"], "previousDeadline": recorded.get("previousDeadline")}
    if finalize is not None:
        budget["finishedAt"] = to_rfc3339(now, micro=True)
        budget["usedSeconds"] = round(now - started_at, 3)
        if deadline is not None:
            budget["finishedInsideSeconds"] = round(deadline - now, 3)
    phase: StudyPhase = "Running" if finalize is None else ("Succeeded" if finalize.succeeded else "Failed")
    document = StudyStatus(
        phase=phase,
        message=(finalize.reason if finalize else decision.message) or None,
        progress=f"{finished}/{plan.planned_trials if plan else '?'}",
        observed_generation=study["metadata"].get("generation"),
        conditions=[Condition.model_validate(c) for c in merge_conditions(conditions, wanted, now)],
        plan=PlanStatus.of(plan, deadline=budget["deadline"]) if plan else None,
        trials=TrialCounts.of(phases),
        best=None if best is None else BestStatus.of(best, trial_name(study["metadata"]["name"], best.index)),
        budget=BudgetStatus.model_validate(budget),
        final=_final_status(study, states, decision, now),
    ).document()
    for key in ("budget", "final"):
        # The status is written as a merge patch: a field this status no longer has (an earlier
        # end's finishedAt, another trial's final value) is removed by a null.
        old, new = current.get(key), document.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            document[key] = {**dict.fromkeys(k for k in old if k not in new), **new}
    return document


def _final_status(
    study: JSON, states: list[TrialState], decision: Decision, now: float
) -> FinalStatus | None:
    """status.final: the trial under final training, and once it is done its value and model."""
    current = (study.get("status") or {}).get("final")
    finalize = decision.finalize
    # A final training under way: resumed now, or resumed by an earlier reconcile.
    training = next((a.index for a in decision.actions if isinstance(a, ResumeTrial) and a.final), None)
    if training is None:
        training = next((s.view.index for s in states if s.run.final and s.view.status.active), None)
    done = current is not None and current.get("phase") in FINAL_DONE
    index: int | None
    if finalize is not None and finalize.final is not None:
        index = finalize.final
    elif done and training is None and finalize is None:
        # The final training of an earlier end (before the budget was raised) stands until a
        # better configuration is trained.
        return FinalStatus.model_validate(current)
    elif current and not done:
        index = int(current["index"])
    else:
        index = training
    if index is None:
        return None
    if current and int(current["index"]) != index:
        current = None  # another trial's final training: nothing of the last one carries over
    name = trial_name(study["metadata"]["name"], index)
    out: JSON = {"trial": name, "index": index, "phase": "Running"}
    if current and done and finalize is None:
        current = {k: v for k, v in current.items() if k != "startedAt"}  # trained again from now
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
