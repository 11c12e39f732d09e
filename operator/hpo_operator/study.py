"""The decision core: from what has been observed to what to do next.

``decide(observation)`` reads the study's start, "now", the free slots and every trial with its
state and reports, and returns the actions to take: start trials, prune trials, stop trials at the
deadline, finalize with the best. It has no clock, no I/O and no state of its own; the same
observation always gives the same decision, so adapters call it as often as they like (after a
restart too). Trial ``k``'s hyper-parameters depend only on ``(seed, k)``: trial 0 takes the
defaults, as OTX tries the current configuration first.

The budget: with ``deadline`` or ``train_time`` it is known from the start; otherwise trial 0 runs
alone and its first report measures one epoch, hence one training (R epochs), hence the budget. The
deadline is hard: no trial starts that cannot finish its first rung before it, and at the deadline
every running trial is stopped and the study finalized from what was reported.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from .asha import Report as Report
from .asha import RungDecision, RungRecord, StopReplay, report_order, rung_records, rung_resources, score
from .budget import HEADROOM, BudgetTooSmall, Plan, default_min_resource, make_plan
from .config import StudyConfig
from .sampler import Observed, Sampler


class TrialStatus(str, Enum):
    PENDING = "Pending"  # created, not running yet (e.g. waiting for a GPU)
    RUNNING = "Running"
    COMPLETED = "Completed"
    PRUNED = "Pruned"
    FAILED = "Failed"
    STOPPED = "Stopped"  # stopped at the deadline

    @property
    def active(self) -> bool:
        return self in (TrialStatus.PENDING, TrialStatus.RUNNING)


@dataclass(frozen=True)
class TrialView:
    """One trial as an adapter sees it. ``started_at`` is when it began running (None: not yet).

    ``reports`` are kept in time order whatever order they are given in.
    """

    index: int
    status: TrialStatus
    reports: tuple[Report, ...] = ()
    started_at: float | None = None
    params: dict[str, Any] | None = None  # as started; None: the adapter relies on params_for(index)

    def __post_init__(self) -> None:
        object.__setattr__(self, "reports", tuple(sorted(self.reports, key=report_order)))


@dataclass(frozen=True)
class Observation:
    """The world as the adapter sees it; all times in seconds on one clock."""

    started_at: float
    now: float
    free_slots: int
    trials: tuple[TrialView, ...] = ()


@dataclass(frozen=True)
class StartTrial:
    index: int
    params: dict[str, Any]


@dataclass(frozen=True)
class PruneTrial:
    index: int
    rung: int
    resource: float
    value: float
    cutoff: float


@dataclass(frozen=True)
class StopTrial:
    index: int
    reason: str


@dataclass(frozen=True)
class Best:
    index: int
    value: float
    resource: float
    params: dict[str, Any]


@dataclass(frozen=True)
class Finalize:
    """The study is over. ``succeeded`` is False when it ended without a usable result."""

    reason: str
    best: Best | None
    succeeded: bool = True


Action = StartTrial | PruneTrial | StopTrial | Finalize


@dataclass(frozen=True)
class Decision:
    actions: list[Action]
    plan: Plan | None
    deadline: float | None  # on the observation's clock; None while the first trial measures it
    best: Best | None
    message: str = ""  # why nothing more starts, when that is worth saying
    rung_decisions: dict[int, list[RungDecision]] = field(default_factory=dict)

    @property
    def finalize(self) -> Finalize | None:
        return next((a for a in self.actions if isinstance(a, Finalize)), None)


@dataclass(frozen=True)
class _Summary:
    records: list[RungRecord]
    rates: list[float]  # seconds per resource unit between consecutive reports
    first: tuple[float, float] | None  # (seconds, resource) from the start to the first report
    standing: tuple[int, float, Report] | None  # highest level reached, its score, its report


class StudyError(ValueError):
    """The study cannot run as configured (for example a budget smaller than one training)."""


class Study:
    """A study's decision core for a given config and slot count."""

    def __init__(self, config: StudyConfig, slots: int) -> None:
        self.config = config
        self.slots = max(1, slots)
        self.eta = config.reduction_factor or 3
        self.sampler = Sampler(config.space, config.sampler, config.seed, config.mode)
        r = config.min_resource or default_min_resource(config.max_resource)
        self.rungs = rung_resources(r, self.eta, config.max_resource)  # the plan's rungs too
        self.levels = (*self.rungs, config.max_resource)
        # Per-trial summaries, recomputed only when a trial's reports change (they only grow).
        self._summaries: dict[int, tuple[tuple[Any, ...], _Summary]] = {}
        self._replay = StopReplay(self.eta, config.mode)

    # --- hyper-parameters -----------------------------------------------------------------

    def params_for(
        self, index: int, trials: Sequence[TrialView] = (), rungs: Sequence[float] = ()
    ) -> dict[str, Any]:
        """Trial ``index``'s configuration: the defaults for trial 0, else the sampler's proposal from
        the trials so far (random and qmc depend on (seed, index) only)."""
        tried = [Observed(self.trial_params(t), t.reports) for t in trials]
        return self.sampler.propose(index, tried, rungs, self.config.max_resource)

    def trial_params(self, trial: TrialView) -> dict[str, Any]:
        """A trial's configuration as started (re-derived when the adapter did not keep it)."""
        if trial.params is not None:
            return trial.params
        if self.config.sampler == "tpe" and trial.index > 0:
            raise ValueError(f"trial {trial.index}: the tpe sampler needs the params each trial started with")
        return self.sampler.propose(trial.index, [], (), self.config.max_resource)

    # --- the budget -------------------------------------------------------------------------

    def summary(self, t: TrialView) -> _Summary:
        """What the core derives from one trial's reports: rung records, epoch rates, its best level."""
        key = (t.started_at, len(t.reports), t.reports[-1] if t.reports else None)
        cached = self._summaries.get(t.index)
        if cached is not None and cached[0] == key:
            return cached[1]
        rates: list[float] = []
        first: tuple[float, float] | None = None
        if t.started_at is not None:
            last_time, last_resource = t.started_at, 0.0
            for r in t.reports:
                if r.resource > last_resource and r.time >= last_time:
                    if first is None:  # start-up and the first epochs together
                        first = (r.time - last_time, r.resource)
                    else:
                        rates.append((r.time - last_time) / (r.resource - last_resource))
                    last_time, last_resource = r.time, r.resource
        records = rung_records(t.index, t.reports, self.rungs)
        standing: tuple[int, float, Report] | None = None
        if t.reports:
            top = max(r.resource for r in t.reports)
            level = max((k for k, lv in enumerate(self.levels) if top >= lv), default=-1)
            at = (
                t.reports[-1] if level < 0 else next(r for r in t.reports if r.resource >= self.levels[level])
            )
            standing = (level, score(at.value, self.config.mode), at)
        summary = _Summary(records, rates, first, standing)
        self._summaries[t.index] = (key, summary)
        return summary

    def measured_times(self, trials: Sequence[TrialView]) -> tuple[float, float] | None:
        """(seconds per resource unit, start-up seconds per trial) measured so far, or None.

        Epochs are timed between consecutive reports; a trial's start-up is what its first report
        took beyond its epochs. Before any trial has two reports, the first reports are all there
        is, and they count as epochs with no start-up.
        """
        summaries = [self.summary(t) for t in trials]
        rates = [rate for s in summaries for rate in s.rates]
        firsts = [s.first for s in summaries if s.first is not None]
        if rates:
            epoch = statistics.median(rates)
            overhead = (
                statistics.median(max(0.0, sec - res * epoch) for sec, res in firsts) if firsts else 0.0
            )
            return epoch, overhead
        if firsts:
            return statistics.median(sec / res for sec, res in firsts), 0.0
        return None

    def budget_seconds(self, trials: Sequence[TrialView]) -> float | None:
        """The budget; without train time or deadline, ``time_ratio`` x one training of trial 0,
        timed from its first two reports (start-up once, plus R epochs at its epoch rate)."""
        known = self.config.budget.seconds()
        if known is not None:
            return known
        trial0 = next((t for t in trials if t.index == 0), None)
        if trial0 is None:
            return None
        summary = self.summary(trial0)
        if summary.first is None:
            return None
        seconds, resource = summary.first
        if summary.rates:
            epoch = summary.rates[0]
            train = max(0.0, seconds - resource * epoch) + self.config.max_resource * epoch
        elif trial0.status.active:
            return None  # wait for the second report, which separates start-up from epochs
        else:
            train = seconds / resource * self.config.max_resource
        return self.config.budget.time_ratio * max(train, 1e-6)

    def plan(self, trials: Sequence[TrialView]) -> Plan | None:
        """The plan for the budget and the best epoch-time estimate so far (None: not known yet).

        Raises StudyError only for a budget that cannot hold one training as configured (a given
        train time, or the time ratio itself). Measured epoch times never fail a running study: an
        estimate that no longer fits is capped, which plans no more trials than are running, and
        the deadline ends the study with what was reported.
        """
        spec = self.config.budget
        if spec.deadline is None and spec.train_time is None and spec.time_ratio * HEADROOM < 1 - 1e-9:
            raise StudyError(
                f"a time ratio of {spec.time_ratio:g} is too small for even one full training; "
                f"the smallest workable ratio is {1 / HEADROOM:.2f}"
            )
        budget = self.budget_seconds(trials)
        if budget is None:
            return None
        max_r = self.config.max_resource
        measured = self.measured_times(trials)
        if measured is None and self.config.budget.train_time is None:
            # A deadline and no measurement yet: run as many trials as there are slots until the
            # first reports size the plan; parallel slots cost no wall-clock time.
            plan = self._make_plan(budget, HEADROOM * budget / max_r, 0.0)
            return replace(plan, planned_trials=max(plan.planned_trials, self.parallel_limit()))
        if measured is None:
            assert self.config.budget.train_time is not None
            return self._make_plan(budget, self.config.budget.train_time / max_r, 0.0)
        epoch, overhead = measured
        train = max_r * epoch + overhead
        if train > HEADROOM * budget:
            # Slower than planned: scale the estimate down to the largest that fits.
            shrink = HEADROOM * budget / train
            epoch, overhead = epoch * shrink, overhead * shrink
        return self._make_plan(budget, epoch, overhead)

    def _make_plan(self, budget: float, epoch: float, overhead: float) -> Plan:
        try:
            return make_plan(
                budget_seconds=budget,
                slots=self.parallel_limit(),
                epoch_seconds=epoch,
                max_resource=self.config.max_resource,
                min_resource=self.config.min_resource,
                eta=self.eta,
                trial_overhead=overhead,
            )
        except BudgetTooSmall as err:
            raise StudyError(str(err)) from err

    def parallel_limit(self) -> int:
        if self.config.parallel_trials is not None:
            return max(1, min(self.config.parallel_trials, self.slots))
        return self.slots

    # --- ASHA and the best ------------------------------------------------------------------

    def rung_decisions(self, trials: Sequence[TrialView]) -> dict[int, list[RungDecision]]:
        records = [rec for t in trials for rec in self.summary(t).records]
        return self._replay.update(records)

    def best(self, trials: Sequence[TrialView]) -> Best | None:
        """The best of the trials that trained furthest: compared at the highest level (rung or R)
        any trial reached, by its first report at that level; ties go to the lower index."""
        candidates = [(s.standing, t) for t in trials if (s := self.summary(t)).standing is not None]
        if not candidates:
            return None
        standing, trial = max(candidates, key=lambda c: (c[0][0], c[0][1], -c[1].index))
        assert standing is not None
        _, value_score, report = standing
        if math.isinf(value_score):
            return None
        return Best(
            index=trial.index, value=report.value, resource=report.resource, params=self.trial_params(trial)
        )

    # --- the decision -----------------------------------------------------------------------

    def decide(self, obs: Observation) -> Decision:
        trials = sorted(obs.trials, key=lambda t: t.index)
        plan = self.plan(trials)
        rungs = self.rungs
        rung_decisions = self.rung_decisions(trials)
        actions: list[Action] = []
        active = {t.index for t in trials if t.status.active}

        pruned_now = 0
        for t in trials:
            last = rung_decisions.get(t.index, [])
            if t.status.active and last and not last[-1].promoted:
                d = last[-1]
                actions.append(PruneTrial(t.index, d.rung, d.resource, d.value, d.cutoff))
                active.discard(t.index)
                pruned_now += 1

        budget = self.budget_seconds(trials)
        deadline = None if budget is None else obs.started_at + budget
        best = self.best(trials)

        if deadline is not None and obs.now >= deadline:
            actions += [StopTrial(i, "deadline") for i in sorted(active)]
            return Decision(
                [*actions, Finalize("deadline", best, best is not None)],
                plan,
                deadline,
                best,
                "the budget is used up",
                rung_decisions,
            )

        failed = sum(1 for t in trials if t.status is TrialStatus.FAILED)
        limit = self.config.max_failed_trials
        if limit is not None and failed >= limit:
            actions += [StopTrial(i, "too many failed trials") for i in sorted(active)]
            message = f"{failed} trials failed (maxFailedTrials is {limit})"
            return Decision(
                [*actions, Finalize(message, best, False)], plan, deadline, best, message, rung_decisions
            )

        started = len(trials)
        next_index = max((t.index for t in trials), default=-1) + 1
        message = ""
        # A trial pruned by this decision frees its slot for a trial started by it.
        free = min(obs.free_slots + pruned_now, self.parallel_limit() - len(active))
        if plan is None:
            # The budget is measured by trial 0, which runs alone until it has reported twice.
            if next_index == 0 and free > 0:
                actions.append(StartTrial(0, self.params_for(0)))
                active.add(0)
            elif next_index > 0:
                message = "timing the first trial's first two reports to size the budget"
        else:
            epoch = plan.epoch_seconds
            tried = list(trials)
            while free > 0 and started < plan.planned_trials:
                assert deadline is not None
                if obs.now + plan.trial_overhead_seconds + plan.min_resource * epoch > deadline:
                    message = "no time left for another trial to reach its first rung"
                    break
                params = self.params_for(next_index, tried, rungs)
                actions.append(StartTrial(next_index, params))
                # Later proposals of this decision see this one, so they do not repeat it.
                tried.append(TrialView(next_index, TrialStatus.PENDING, params=params))
                active.add(next_index)
                next_index += 1
                started += 1
                free -= 1
            if started >= plan.planned_trials:
                message = f"all {plan.planned_trials} planned trials started"

        if not active:
            out_of_time = (
                deadline is not None
                and obs.now
                + (plan.trial_overhead_seconds + plan.min_resource * plan.epoch_seconds if plan else 0)
                > deadline
            )
            if plan is not None and (started >= plan.planned_trials or out_of_time):
                reason = (
                    "all planned trials finished"
                    if started >= plan.planned_trials
                    else "no time for another trial"
                )
                actions.append(Finalize(reason, best, best is not None))
            elif plan is None and next_index > 0:
                # Trial 0 ended without the report that sizes the budget.
                actions.append(Finalize("the first trial ended before its first report", best, False))
        return Decision(actions, plan, deadline, best, message, rung_decisions)
