"""A simulator backend with a virtual clock: the decision core over a model of trials.

Each trial reports once per resource unit (epoch), ``epoch_seconds(params)`` apart, the value
``objective(params, resource)``, after ``start_seconds`` of start-up. The simulator jumps from one
event to the next, so a study of thousands of trials over hours of virtual time runs in seconds, and
it makes exactly the decisions a real backend would make given the same reports at the same times.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from .budget import Plan
from .config import StudyConfig
from .result import StudyResult
from .study import (
    Decision,
    Finalize,
    Observation,
    PruneTrial,
    ResumeTrial,
    StartTrial,
    StopTrial,
    Study,
    TrialView,
)
from .trials import Report, StopMargin, TrialPhase, clean_exit_phase

Objective = Callable[[dict[str, Any], int], float]


@dataclass
class SimTrial:
    index: int
    params: dict[str, Any]
    created_at: float
    started_at: float
    status: TrialPhase = TrialPhase.RUNNING
    reports: list[Report] = field(default_factory=list)
    ended_at: float | None = None
    stop_at: float | None = None  # the resource this run pauses at (promote variant); None: R
    start_from: float = 0.0  # the resource this run resumed from
    runs: int = 1  # starts and resumptions

    def view(self) -> TrialView:
        return TrialView(self.index, self.status, tuple(self.reports), self.started_at, self.params)


@dataclass
class SimResult:
    trials: list[SimTrial]
    finalize: Finalize
    started_at: float
    finished_at: float
    deadline: float | None
    decisions: int
    busy_seconds: float  # slot-seconds spent in trials
    plan: Plan | None = None  # the last decision's

    @property
    def elapsed(self) -> float:
        return self.finished_at - self.started_at

    def result(self, study: str) -> StudyResult:
        """The result document's shared part, as a backend would write it for study ``study``."""
        return StudyResult.of(
            succeeded=self.finalize.succeeded,
            plan=self.plan,
            phases=[t.status for t in self.trials],
            best=self.finalize.best,
            trial_name=lambda index: f"{study}-{index}",
            final=self.finalize.final,
        )


def simulate(
    config: StudyConfig,
    slots: int,
    objective: Objective,
    epoch_seconds: Callable[[dict[str, Any]], float] | float,
    start_seconds: float = 0.0,
    max_events: int = 10_000_000,
    stop_margin: StopMargin | None = None,
    observe: Callable[[Observation, Decision], None] | None = None,
) -> SimResult:
    """Runs one study to its end on a virtual clock starting at 0. ``stop_margin``: a backend's
    (none by default: a virtual trial stops at once). ``observe``: told every observation and
    the decision made on it (a recorded history)."""
    study = Study(config, slots)
    epoch_of = epoch_seconds if callable(epoch_seconds) else (lambda _p, e=float(epoch_seconds): e)
    max_resource = math.ceil(config.max_resource)
    trials: dict[int, SimTrial] = {}
    events: list[tuple[float, int, int, int]] = []  # (time, trial, resource it reports, run)
    now, busy = 0.0, 0.0
    final_index: int | None = None

    def running() -> int:
        return sum(1 for t in trials.values() if t.status.active)

    def end(trial: SimTrial, status: TrialPhase) -> None:
        nonlocal busy
        trial.status, trial.ended_at = status, now
        busy += now - trial.created_at

    for decisions in range(1, max_events + 1):
        obs = Observation(
            started_at=0.0,
            now=now,
            free_slots=slots - running(),
            trials=tuple(t.view() for t in trials.values()),
            final_index=final_index,
            stop_margin=stop_margin or StopMargin(),
        )
        decision: Decision = study.decide(obs)
        if observe is not None:
            observe(obs, decision)
        for action in decision.actions:
            if isinstance(action, StartTrial):
                t = SimTrial(action.index, action.params, created_at=now, started_at=now + start_seconds)
                t.stop_at = action.stop_at
                trials[action.index] = t
                heapq.heappush(events, (t.started_at + epoch_of(t.params), t.index, 1, t.runs))
            elif isinstance(action, ResumeTrial):
                t = trials[action.index]
                t.status, t.created_at, t.stop_at, t.ended_at = TrialPhase.RUNNING, now, action.stop_at, None
                t.start_from = action.start_from
                t.runs += 1
                resumed = int(action.start_from) + 1
                heapq.heappush(events, (now + start_seconds + epoch_of(t.params), t.index, resumed, t.runs))
                if action.final:
                    final_index = action.index
            elif isinstance(action, PruneTrial):
                end(trials[action.index], TrialPhase.PRUNED)
            elif isinstance(action, StopTrial):
                end(trials[action.index], TrialPhase.STOPPED)
            elif isinstance(action, Finalize):
                return SimResult(
                    list(trials.values()), action, 0.0, now, decision.deadline, decisions, busy, decision.plan
                )
        # Advance to the next report of a trial still running, or to the deadline (which no longer
        # applies once the final training runs).
        next_time = math.inf
        if decision.deadline is not None and final_index is None:
            next_time = decision.deadline - decision.stop_margin
        # Events of trials that ended, or of an earlier run of a resumed trial, are stale.
        while events and (
            not trials[events[0][1]].status.active or trials[events[0][1]].runs != events[0][3]
        ):
            heapq.heappop(events)
        if events and events[0][0] <= next_time:
            now, index, resource, run = heapq.heappop(events)
            t = trials[index]
            t.reports.append(Report(resource, objective(t.params, resource), now))
            if resource >= (max_resource if t.stop_at is None else min(t.stop_at, max_resource)):
                # The trainer exits 0 once it reached where its run stops.
                end(t, clean_exit_phase(t.reports, t.start_from, t.stop_at, config.max_resource))
            else:
                heapq.heappush(events, (now + epoch_of(t.params), index, resource + 1, run))
        elif math.isfinite(next_time):
            now = max(now, next_time)
        else:
            raise RuntimeError(
                f"the study is stuck at t={now}: no event and no deadline ({decision.message})"
            )
    raise RuntimeError(f"no end after {max_events} events")


def with_budget(config: StudyConfig, **budget: Any) -> StudyConfig:
    """The config with some budget fields replaced (train_time, deadline, time_ratio)."""
    return replace(config, budget=replace(config.budget, **budget))
