"""The decision core: from what has been observed to what to do next.

``decide(observation)`` reads the study's start, "now", the free slots and every trial with its
state and reports, and returns the actions to take: start trials, prune trials, stop trials at the
deadline, finalize with the best. It has no clock, no I/O and no state of its own; the same
observation always gives the same decision, so adapters call it as often as they like (after a
restart too). Trial ``k``'s hyper-parameters: the config's prior configurations first, in order
(OTX's ``prior_hyper_parameters``); without them trial 0 takes the defaults (each parameter's
``default``, else the middle of its range), as OTX tries the model's own configuration first; then
the sampler's proposals.

A trial's own rules (its phases, which of its reports count, how a run ends, the stop margin) are
the trial layer's, trials.py, below this core and shared by every backend.

Which reports count (the same rules for every backend): a report counts when its resource is a
finite number in (0, R], not below the highest resource the trial reported before it, and its time
is finite (``trials.report_refusal``); a value that is not finite counts, as the worst value, which never
becomes the best. A pruned trial's reports past the rung ASHA pruned it at came after its verdict
and do not count. Adapters that see reports arrive after they stopped or failed a trial drop those
themselves (the core sees only timestamps, on the trial's clock). ``Study.counting`` gives the
views with only the reports that count.

The budget: with ``deadline`` or ``train_time`` it is known from the start; otherwise trial 0 runs
alone and its first report measures one epoch, hence one training (R epochs), hence the budget. The
deadline is hard: no trial starts that cannot finish its first rung before it, and at the deadline
every running trial is stopped and the study finalized from what was reported.

Two more stop conditions: a goal (once a report that counts, at the goal's resource or beyond,
reaches it, the running trials are stopped and the study succeeds, ``GOAL_REACHED``) and a trial
limit (no trial index reaches ``max_trials``; once they all ended the study is over).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .asha import RungDecision, RungRecord, StopReplay, rung_records, rung_resources, score
from .brackets import Brackets
from .budget import (
    HEADROOM,
    BudgetTooSmall,
    Plan,
    default_min_resource,
    expected_runs,
    fit_brackets,
    make_plan,
    mean_runs,
    mean_trial_resource,
)
from .config import StudyConfig
from .sampler import Observed, Sampler
from .trials import Report, StopMargin, TrialPhase, furthest_level, report_order, screen_reports

# With maxFailedTrials unset, the fewest failed trials that can stop a study (see too_many_failed).
DEFAULT_MIN_FAILED = 3
# Finalize.code of a study that ended because a report reached its goal.
GOAL_REACHED = "GoalReached"


@dataclass(frozen=True)
class TrialView:
    """One trial as an adapter sees it. ``started_at`` is when it began running (None: not yet).

    ``reports`` are kept in time order whatever order they are given in.
    """

    index: int
    status: TrialPhase
    reports: tuple[Report, ...] = ()
    started_at: float | None = None
    params: dict[str, Any] | None = None  # as started; None: the adapter relies on params_for(index)

    def __post_init__(self) -> None:
        object.__setattr__(self, "reports", tuple(sorted(self.reports, key=report_order)))


@dataclass(frozen=True)
class Observation:
    """The world as the adapter sees it; all times in seconds on one clock.

    ``final_index``: the trial the adapter resumed for the final training, once it has.
    ``stop_margin``: how long before the deadline the backend needs its trials stopped; the core
    decides as of ``now`` plus that margin of its own budget (``Decision.stop_margin``).
    """

    started_at: float
    now: float
    free_slots: int
    trials: tuple[TrialView, ...] = ()
    final_index: int | None = None
    stop_margin: StopMargin = field(default_factory=StopMargin)


@dataclass(frozen=True)
class StartTrial:
    """Start a new trial; ``stop_at``: the resource to pause at (promote variant), None: train to R."""

    index: int
    params: dict[str, Any]
    stop_at: float | None = None


@dataclass(frozen=True)
class ResumeTrial:
    """Resume a trial from its checkpoint at ``start_from`` and train it to ``stop_at``.

    ``final``: this is the final training of the best configuration, which runs to R after HPO and
    is not bounded by the HPO deadline.
    """

    index: int
    params: dict[str, Any]
    start_from: float
    stop_at: float
    final: bool = False


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
    """The study is over. ``succeeded`` is False when it ended without a usable result.

    ``final``: with final training on, the trial whose checkpoint is the trained model (trained to R).
    ``code``: why, for machines (``GOAL_REACHED``), where the reason is more than that it ended.
    """

    reason: str
    best: Best | None
    succeeded: bool = True
    final: int | None = None
    code: str | None = None


Action = StartTrial | ResumeTrial | PruneTrial | StopTrial | Finalize


@dataclass(frozen=True)
class Decision:
    actions: list[Action]
    plan: Plan | None
    deadline: float | None  # on the observation's clock; None while the first trial measures it
    best: Best | None
    message: str = ""  # why nothing more starts, when that is worth saying
    rung_decisions: dict[int, list[RungDecision]] = field(default_factory=dict)
    stop_margin: float = 0.0  # seconds: the observation's margin, for this decision's budget

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
        self.sampler = Sampler(config.space, config.sampler, config.seed, config.mode, config.priors)
        r = config.min_resource or default_min_resource(config.max_resource)
        self.rungs = rung_resources(r, self.eta, config.max_resource)  # the plan's rungs too
        self.levels = (*self.rungs, config.max_resource)
        # Hyperband brackets: how many is fixed for the study (never by measured epoch times), so a
        # trial's bracket, a function of its index, never changes while the study runs.
        self._bracket_fit = fit_brackets(
            config.asha_brackets, self.rungs, config.max_resource, self.eta, self._budget_trainings()
        )
        self.brackets = Brackets(self.rungs, config.max_resource, self.eta, self._bracket_fit[0], config.seed)
        # Resources where the promote variant pauses trials: time across them is not training.
        self._pauses = frozenset(self.rungs) if config.asha_variant == "promote" else frozenset()
        # A trial pauses only at its own bracket's rungs.
        self._pauses_of = [
            self._pauses & frozenset(self.brackets.rungs_of(b)) for b in range(self.brackets.count)
        ]
        # An average trial's epochs and runs, for trials past the plan's (budget.py's cost model).
        self._trial_resource = mean_trial_resource(
            self.rungs, config.max_resource, self.eta, self.brackets.count
        )
        self._runs_per_trial = (
            mean_runs(self.rungs, config.max_resource, self.eta, self.brackets.count) if self._pauses else 1.0
        )
        # Trial 0 sizes a measured budget from two reports, so with the promote variant its first run
        # goes on past the first rung to the next level (None: to R) rather than pause after one report.
        self._trial0_stop: float | None = self.rungs[0] if self._pauses else None
        self._trial0_runs_through: float | None = None  # the rung trial 0 does not pause at
        if self._pauses and config.budget.seconds() is None:
            self._trial0_stop = self.levels[1] if self.levels[1] < config.max_resource else None
            self._trial0_runs_through = self.rungs[0]
        # Per-trial summaries, recomputed only when a trial's start or reports change. Keyed on the
        # whole content, not the count and last report: a core kept between reconciles (kube's
        # core_cache.py) may see a trial deleted and made again, or its reports rewritten.
        self._summaries: dict[int, tuple[float | None, tuple[Report, ...], _Summary]] = {}
        self._screened: dict[int, tuple[TrialView, TrialView]] = {}  # index -> (as given, screened)
        self._replay = StopReplay(self.eta, config.mode)

    def _budget_trainings(self) -> float | None:
        """Full trainings the budget holds over all slots, as known before any trial ran: the time
        ratio (or deadline / trainTime) times the parallelism; None for a deadline alone."""
        spec = self.config.budget
        if spec.deadline is None:
            per_slot = spec.time_ratio
        elif spec.train_time is not None:
            per_slot = spec.deadline / spec.train_time
        else:
            return None
        return per_slot * self.parallel_limit()

    # --- hyper-parameters -----------------------------------------------------------------

    def params_for(
        self, index: int, trials: Sequence[TrialView] = (), rungs: Sequence[float] = ()
    ) -> dict[str, Any]:
        """Trial ``index``'s configuration: the prior configurations for trials 0..k-1 (the defaults for
        trial 0 without them), then the sampler's proposal from the trials so far (random and qmc
        depend on (seed, index) only)."""
        tried = [Observed(self.trial_params(t), t.reports, t.index) for t in trials]
        return self.sampler.propose(index, tried, rungs, self.config.max_resource)

    def trial_params(self, trial: TrialView) -> dict[str, Any]:
        """A trial's configuration as started (re-derived when the adapter did not keep it)."""
        if trial.params is not None:
            return trial.params
        # The defaults and the priors depend on the index alone; a model-based proposal does not.
        if self.config.sampler in ("tpe", "gp") and trial.index >= max(1, len(self.config.priors)):
            raise ValueError(
                f"trial {trial.index}: the {self.config.sampler} sampler needs the params each trial "
                "started with"
            )
        return self.sampler.propose(trial.index, [], (), self.config.max_resource)

    # --- the budget -------------------------------------------------------------------------

    def summary(self, t: TrialView) -> _Summary:
        """What the core derives from one trial's reports: rung records, epoch rates, its best level."""
        cached = self._summaries.get(t.index)
        if (
            cached is not None
            and cached[0] == t.started_at
            and (cached[1] is t.reports or cached[1] == t.reports)
        ):
            return cached[2]
        rates: list[float] = []
        first: tuple[float, float] | None = None
        if t.started_at is not None:
            last_time, last_resource = t.started_at, 0.0
            for r in t.reports:
                if r.resource > last_resource and r.time >= last_time:
                    if first is None:  # start-up and the first epochs together
                        first = (r.time - last_time, r.resource)
                    elif last_resource not in self._pauses_of[self.brackets.of_trial(t.index)] or (
                        t.index == 0 and last_resource == self._trial0_runs_through
                    ):
                        rates.append((r.time - last_time) / (r.resource - last_resource))
                    # else: the trial paused at that rung and was resumed later; the wait is no epoch.
                    last_time, last_resource = r.time, r.resource
        records = rung_records(t.index, t.reports, self.rungs, self.brackets.of_trial(t.index))
        standing: tuple[int, float, Report] | None = None
        if t.reports:
            # Below the first rung, a trial stands at level -1 with its last report.
            level, at = furthest_level(t.reports, self.levels) or (-1, t.reports[-1])
            standing = (level, score(at.value, self.config.mode), at)
        summary = _Summary(records, rates, first, standing)
        self._summaries[t.index] = (t.started_at, t.reports, summary)
        return summary

    def measured_times(self, trials: Sequence[TrialView]) -> tuple[float, float] | None:
        """(seconds per resource unit, start-up seconds per trial) measured so far, or None.

        Epochs are timed between consecutive reports, and each trial's median rate counts once (a
        trial trained far, with many rates, would otherwise set the estimate alone: with the promote
        variant most trials report once a run); a trial's start-up is what its first report took
        beyond its epochs. Before any trial has two reports, the first reports are all there is:
        with a train time given, its epochs stand and the first reports time start-up beyond them
        (promote-variant trials report once before they pause); without one, they count as epochs
        with no start-up.
        """
        summaries = [self.summary(t) for t in trials]
        rates = [statistics.median(s.rates) for s in summaries if s.rates]
        firsts = [s.first for s in summaries if s.first is not None]
        if rates:
            epoch = statistics.median(rates)
            overhead = (
                statistics.median(max(0.0, sec - res * epoch) for sec, res in firsts) if firsts else 0.0
            )
            return epoch, overhead
        if firsts and self.config.budget.train_time is not None:
            epoch = self.config.budget.train_time / self.config.max_resource
            return epoch, statistics.median(max(0.0, sec - res * epoch) for sec, res in firsts)
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
            planned = max(plan.planned_trials, self.parallel_limit())
            limit = self.config.max_trials
            if limit is not None and limit < planned:
                return replace(plan, planned_trials=limit, max_trials=limit)
            return replace(plan, planned_trials=planned)
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
                promote=bool(self._pauses),
                max_trials=self.config.max_trials,
                brackets=self._bracket_fit,
            )
        except BudgetTooSmall as err:
            raise StudyError(str(err)) from err

    def parallel_limit(self) -> int:
        if self.config.parallel_trials is not None:
            return max(1, min(self.config.parallel_trials, self.slots))
        return self.slots

    # --- which reports count ----------------------------------------------------------------

    def screen(self, trial: TrialView) -> TrialView:
        """The trial with only the reports that pass ``report_refusal``."""
        cached = self._screened.get(trial.index)
        if cached is not None and cached[0] == trial:
            return cached[1]
        counted, refused = screen_reports(trial.reports, self.config.max_resource)
        screened = replace(trial, reports=counted) if refused else trial
        self._screened[trial.index] = (trial, screened)
        return screened

    def counting(self, trials: Sequence[TrialView]) -> list[TrialView]:
        """The trials with only the reports that count: those ``screen`` keeps, and of a trial
        pruned (its status) where the stop rule prunes it, none after the report that pruned it
        (the first reaching that rung): what it sent while it was being stopped came after its
        verdict."""
        screened = [self.screen(t) for t in trials]
        return self._cut_at_verdicts(screened, self._rung_decisions(screened))

    def _cut_at_verdicts(
        self, screened: Sequence[TrialView], decisions: dict[int, list[RungDecision]]
    ) -> list[TrialView]:
        out = []
        for t in screened:
            last = decisions.get(t.index)
            # Only a trial the adapter pruned: a report that arrives late with an earlier timestamp
            # may turn the replay against a trial that already trained on, and completed.
            if t.status is TrialPhase.PRUNED and last and not last[-1].promoted:
                at = next(k for k, r in enumerate(t.reports) if r.resource >= last[-1].resource)
                if at + 1 < len(t.reports):
                    t = replace(t, reports=t.reports[: at + 1])
            out.append(t)
        return out

    # --- ASHA and the best ------------------------------------------------------------------

    def rung_decisions(self, trials: Sequence[TrialView]) -> dict[int, list[RungDecision]]:
        """The stop rule's decisions over the reports that pass ``report_refusal``."""
        return self._rung_decisions([self.screen(t) for t in trials])

    def _rung_decisions(self, screened: Sequence[TrialView]) -> dict[int, list[RungDecision]]:
        if self.config.asha_variant == "promote":
            return {}  # the promote variant pauses trials at rungs and never prunes
        records = [rec for t in screened for rec in self.summary(t).records]
        return self._replay.update(records)

    def best(self, trials: Sequence[TrialView]) -> Best | None:
        """The best of the reports that count (``counting``), among the trials that trained
        furthest: compared at the highest level (rung or R) reached by a trial whose value there
        is finite, by each trial's first report at its highest level; ties go to the lower index.
        A trial whose value at its highest level is not finite is never the best, and does not
        hide a finite best at a lower level."""
        return self._best_of(self.counting(trials))

    def _best_of(self, counting: Sequence[TrialView]) -> Best | None:
        candidates = [
            (standing, t)
            for t in counting
            if (standing := self.summary(t).standing) is not None and math.isfinite(standing[1])
        ]
        if not candidates:
            return None
        (_, _, report), trial = max(candidates, key=lambda c: (c[0][0], c[0][1], -c[1].index))
        return Best(
            index=trial.index, value=report.value, resource=report.resource, params=self.trial_params(trial)
        )

    # --- failures ---------------------------------------------------------------------------

    def too_many_failed(self, trials: Sequence[TrialView]) -> str | None:
        """Why the study should stop for its failed trials, or None to go on.

        With ``max_failed_trials`` set: once that many trials failed. Unset: once at least
        ``DEFAULT_MIN_FAILED`` trials failed and failures are at least half of the ended trials
        (a study whose every trial crashes stops after three, not at its deadline; a few crashes
        among many finished trials do not stop it).
        """
        failed = sum(1 for t in trials if t.status is TrialPhase.FAILED)
        limit = self.config.max_failed_trials
        if limit is not None:
            return f"{failed} trials failed (maxFailedTrials is {limit})" if failed >= limit else None
        ended = sum(1 for t in trials if t.status.ended)
        if failed >= DEFAULT_MIN_FAILED and 2 * failed >= ended:
            return (
                f"{failed} of {ended} ended trials failed (with maxFailedTrials unset a study stops "
                f"once at least {DEFAULT_MIN_FAILED} trials failed and they are half of those ended)"
            )
        return None

    # --- the goal and the trial limit ------------------------------------------------------

    def goal_reached(self, counting: Sequence[TrialView]) -> str | None:
        """Why the goal is reached (the first report, in time, that reached it), or None.

        ``counting``: the trials with the reports that count. A report reaches the goal at the
        goal's resource or beyond with a value at least the goal (mode max) or at most (min).
        """
        goal = self.config.goal
        if goal is None:
            return None
        sign = 1 if self.config.mode == "max" else -1
        hits = [
            (r.time, t.index, r)
            for t in counting
            for r in t.reports
            if r.resource >= self.config.goal_at and math.isfinite(r.value) and sign * (r.value - goal) >= 0
        ]
        if not hits:
            return None
        _, index, report = min(hits, key=lambda h: (h[0], h[1]))
        return f"goal reached: trial {index} reported {report.value:g} at resource {report.resource:g}"

    def may_start(self, index: int) -> bool:
        """Whether trial ``index`` is within the trial limit."""
        return self.config.max_trials is None or index < self.config.max_trials

    # --- the decision -----------------------------------------------------------------------

    def decide(self, obs: Observation) -> Decision:
        """The actions for ``obs``, decided as of ``obs.now`` plus the stop margin of this
        decision's budget, so that trials stopped at the deadline have ended by it."""
        margin = obs.stop_margin.seconds(self.budget_seconds([self.screen(t) for t in obs.trials]))
        if not margin:
            return self._decide(obs)
        return replace(self._decide(replace(obs, now=obs.now + margin)), stop_margin=margin)

    def _decide(self, obs: Observation) -> Decision:
        screened = [self.screen(t) for t in sorted(obs.trials, key=lambda t: t.index)]
        # Timing reads every screened report (a pruned trial's last epochs were still epochs);
        # everything else reads the reports that count.
        plan = self.plan(screened)
        budget = self.budget_seconds(screened)
        promote = self.config.asha_variant == "promote"
        rung_decisions = self._rung_decisions(screened)
        trials = self._cut_at_verdicts(screened, rung_decisions)
        deadline = None if budget is None else obs.started_at + budget
        best = self._best_of(trials)
        if obs.final_index is not None:
            return self._final_phase(obs, trials, plan, deadline, best)

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

        def finish(reason: str, message: str = "", code: str | None = None) -> Decision:
            return self._finish(
                actions, reason, trials, active, plan, deadline, best, message, rung_decisions, code
            )

        goal = self.goal_reached(trials)
        if goal is not None:
            actions += [StopTrial(i, "goal reached") for i in sorted(active)]
            return finish(goal, "the goal is reached", GOAL_REACHED)

        if deadline is not None and obs.now >= deadline:
            actions += [StopTrial(i, "deadline") for i in sorted(active)]
            return finish("deadline", "the budget is used up")

        failed_message = self.too_many_failed(trials)
        if failed_message is not None:
            actions += [StopTrial(i, "too many failed trials") for i in sorted(active)]
            message = failed_message
            return Decision(
                [*actions, Finalize(message, best, False)], plan, deadline, best, message, rung_decisions
            )

        started = len(trials)
        next_index = max((t.index for t in trials), default=-1) + 1
        message = ""
        # A trial pruned by this decision frees its slot for a trial started by it.
        free = min(obs.free_slots + pruned_now, self.parallel_limit() - len(active))
        promotion_waits = False  # a paused trial would be promoted, were a slot free
        if plan is None:
            # The budget is measured by trial 0, which runs alone until it has reported twice.
            if next_index == 0 and free > 0:
                actions.append(StartTrial(0, self.params_for(0), self._trial0_stop))
                active.add(0)
            elif next_index > 0:
                message = "timing the first trial's first two reports to size the budget"
        else:
            assert deadline is not None
            epoch, overhead = plan.epoch_seconds, plan.trial_overhead_seconds
            if promote:
                for index, start_from, stop_at in self.promotable(trials):
                    if obs.now + overhead + (stop_at - start_from) * epoch > deadline:
                        continue
                    if free <= 0:
                        promotion_waits = True
                        break
                    trial = next(t for t in trials if t.index == index)
                    actions.append(ResumeTrial(index, self.trial_params(trial), start_from, stop_at))
                    active.add(index)
                    free -= 1
            tried = list(trials)
            while (
                free > 0
                and self.may_start(next_index)
                and (
                    started < plan.planned_trials
                    or self._room_for_another(plan, obs.now, deadline, len(active), next_index)
                )
            ):
                fitting = self._next_fitting(next_index, (deadline - obs.now - overhead) / epoch)
                if fitting is None:
                    message = "no time left for another trial to reach its first rung"
                    break
                next_index = fitting
                if not self.may_start(next_index):
                    break  # the trial limit: a passed-over index counts towards it
                first_level = self.brackets.first_level(self.brackets.of_trial(next_index))
                params = self.params_for(next_index, tried, self.rungs)
                # Promote variant: a trial's first run pauses at its bracket's first rung, if it has one.
                first_stop = first_level if promote and first_level < self.config.max_resource else None
                actions.append(StartTrial(next_index, params, first_stop))
                # Later proposals of this decision see this one, so they do not repeat it.
                tried.append(TrialView(next_index, TrialPhase.PENDING, params=params))
                active.add(next_index)
                next_index += 1
                started += 1
                free -= 1
            if not self.may_start(next_index):
                message = f"all {next_index} trials started, the trial limit"
            elif started >= plan.planned_trials and not self._room_for_another(
                plan, obs.now, deadline, len(active), next_index
            ):
                message = f"all {plan.planned_trials} planned trials started"

        if not active:
            if plan is not None and not self.may_start(next_index) and not promotion_waits:
                return finish(f"all {next_index} trial{'s' if next_index != 1 else ''} finished", message)
            if plan is not None:
                first_rung = plan.trial_overhead_seconds + plan.min_resource * plan.epoch_seconds
                out_of_time = deadline is not None and obs.now + first_rung > deadline
                if started >= plan.planned_trials and not self._room_for_another(
                    plan, obs.now, deadline, 0, next_index
                ):
                    return finish("all planned trials finished", message)
                if out_of_time:
                    return finish("no time for another trial", message)
            elif next_index > 0:
                # Trial 0 ended without the reports that size the budget.
                actions.append(Finalize("the first trial ended before its first report", best, False))
        return Decision(actions, plan, deadline, best, message, rung_decisions)

    def _next_fitting(self, index: int, resource_left: float) -> int | None:
        """The first trial index from ``index`` whose bracket's first rung fits in ``resource_left``
        (None: not even the first rung does). Near the deadline a trial of a later bracket, which
        would not reach its first rung, is passed over and its index left unused, rather than the
        slots left idle; since time only runs on, a later decision passes it over again."""
        if self.brackets.first_level(0) > resource_left:
            return None
        while self.brackets.first_level(self.brackets.of_trial(index)) > resource_left:
            index += 1  # bracket 0 (whose first rung fits) comes round within a few indices
        return index

    def _room_for_another(
        self, plan: Plan, now: float, deadline: float | None, running: int, next_index: int | None = None
    ) -> bool:
        """Past the plan's trials, whether another may start: the slots' time left must hold the
        work still due (``running`` trials) and one more, at an average trial each. Trials often
        cost less than planned, and the budget is the user's to use. With brackets, the one more
        costs what a trial of the bracket it would join costs (near the deadline only the first
        brackets' trials still start, ``_next_fitting``), not the average over every bracket."""
        if deadline is None:
            return False
        mean_trial = (
            plan.trial_overhead_seconds * self._runs_per_trial + self._trial_resource * plan.epoch_seconds
        )
        another = mean_trial
        if self.brackets.count > 1 and next_index is not None:
            left = (deadline - now - plan.trial_overhead_seconds) / plan.epoch_seconds
            fitting = self._next_fitting(next_index, left)
            if fitting is None:
                return False
            b = self.brackets.of_trial(fitting)
            runs = expected_runs(self.brackets.rungs_of(b), self.eta) if self._pauses else 1.0
            another = plan.trial_overhead_seconds * runs + self.brackets.cost(b) * plan.epoch_seconds
        capacity = HEADROOM * (deadline - now) * self.parallel_limit()
        return now + another <= deadline and running * mean_trial + another <= capacity

    def promotable(self, trials: Sequence[TrialView]) -> list[tuple[int, float, float]]:
        """Promote variant: paused trials in the top ``n // eta`` of the n values recorded at the
        rung they paused at by trials of their bracket, as (index, resource reached, next level),
        highest rung first, then best first. Equal values go to the one recorded first."""
        by_rung: dict[tuple[int, int], list[tuple[float, float, int]]] = {}
        for t in trials:
            for rec in self.summary(t).records:
                by_rung.setdefault((rec.bracket, rec.rung), []).append(
                    (-score(rec.value, self.config.mode), rec.time, t.index)
                )
        for ranking in by_rung.values():
            ranking.sort()
        found: list[tuple[int, int, int, float, float]] = []
        for t in trials:
            records = self.summary(t).records
            if t.status is not TrialPhase.PAUSED or not records:
                continue
            rec = records[-1]
            ranking = by_rung[(rec.bracket, rec.rung)]
            rank = ranking.index((-score(rec.value, self.config.mode), rec.time, t.index)) + 1
            if rank <= len(ranking) // self.eta:
                reached = max(r.resource for r in t.reports)
                found.append((-rec.rung, rank, t.index, reached, self.levels[rec.rung + 1]))
        return [(index, reached, stop_at) for _, _, index, reached, stop_at in sorted(found)]

    def _finish(
        self,
        actions: list[Action],
        reason: str,
        trials: Sequence[TrialView],
        active: set[int],
        plan: Plan | None,
        deadline: float | None,
        best: Best | None,
        message: str,
        rung_decisions: dict[int, list[RungDecision]],
        code: str | None = None,
    ) -> Decision:
        """HPO is over: finalize, or with final training first train the best configuration to R."""
        if not self.config.final_training or best is None:
            return Decision(
                [*actions, Finalize(reason, best, best is not None, code=code)],
                plan,
                deadline,
                best,
                message,
                rung_decisions,
            )
        trial = next(t for t in trials if t.index == best.index)
        reached = max(r.resource for r in trial.reports)
        if reached >= self.config.max_resource:
            final = Finalize(
                f"{reason}; the best trial trained to the maximum resource", best, True, best.index, code
            )
            return Decision([*actions, final], plan, deadline, best, message, rung_decisions)
        if trial.index in active:
            # Being stopped by this decision: it resumes once it has ended.
            return Decision(
                actions,
                plan,
                deadline,
                best,
                "stopping the best trial for its final training",
                rung_decisions,
            )
        resume = ResumeTrial(best.index, best.params, reached, self.config.max_resource, final=True)
        return Decision(
            [*actions, resume],
            plan,
            deadline,
            best,
            "final training of the best configuration",
            rung_decisions,
        )

    def _final_phase(
        self,
        obs: Observation,
        trials: Sequence[TrialView],
        plan: Plan | None,
        deadline: float | None,
        best: Best | None,
    ) -> Decision:
        """The final training is running or has ended; the HPO deadline no longer applies."""
        assert obs.final_index is not None
        trial = next((t for t in trials if t.index == obs.final_index), None)
        if trial is None:
            raise ValueError(f"final training names trial {obs.final_index}, which is not among the trials")
        if trial.status.active:
            return Decision([], plan, deadline, best, "final training of the best configuration")
        reached = max((r.resource for r in trial.reports), default=0.0)
        if trial.status is TrialPhase.COMPLETED and reached >= self.config.max_resource:
            final_best = self._best_of([trial])
            if final_best is not None:
                goal = self.goal_reached(trials)
                reason = "final training finished" if goal is None else f"{goal}; final training finished"
                code = None if goal is None else GOAL_REACHED
                return Decision(
                    [Finalize(reason, final_best, True, trial.index, code)],
                    plan,
                    deadline,
                    final_best,
                )
            why = "final training reached R with a value that is not finite"
        else:
            why = f"final training ended {trial.status.value.lower()} before R"
        return Decision([Finalize(why, best, False)], plan, deadline, best)
