"""The decision core: observations in, actions out; and whole studies on the virtual clock."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest

from hpo_operator.config import BudgetSpec, Mode, SamplerName, StudyConfig, config_from_mapping
from hpo_operator.simulate import simulate, with_budget
from hpo_operator.study import (
    Finalize,
    Observation,
    PruneTrial,
    ResumeTrial,
    StartTrial,
    StopTrial,
    Study,
    StudyError,
    TrialView,
)
from hpo_operator.trials import Report, TrialPhase, report_refusal, screen_reports

RUNNING, COMPLETED, PRUNED, FAILED = (
    TrialPhase.RUNNING,
    TrialPhase.COMPLETED,
    TrialPhase.PRUNED,
    TrialPhase.FAILED,
)


def config(mode: Mode = "max", **kw: Any) -> StudyConfig:
    base = config_from_mapping(
        {
            "metric": "accuracy",
            "mode": mode,
            "maximum_resource": 9,
            "hp_space": {
                "lr": {"param_type": "loguniform", "range": [0.0001, 0.1]},
                "bs": {"param_type": "quniform", "range": [16, 112, 16]},
            },
        }
    )
    budget = kw.pop("budget", BudgetSpec(train_time=90.0))  # 10 s an epoch, 360 s budget
    kw.setdefault("sampler", "random")  # hand-worked cases: params depend on (seed, index) only
    return replace(base, budget=budget, **kw)


def obs(now: float, free: int, *trials: TrialView) -> Observation:
    return Observation(started_at=0.0, now=now, free_slots=free, trials=trials)


def trial(
    index: int, status: TrialPhase, *reports: tuple[float, float, float], started: float = 0.0
) -> TrialView:
    return TrialView(index, status, tuple(Report(*r) for r in reports), started)


def starts(actions: list[Any]) -> list[int]:
    return [a.index for a in actions if isinstance(a, StartTrial)]


def test_the_first_trial_gets_the_defaults_and_the_rest_are_seeded() -> None:
    study = Study(config(), slots=4)
    decision = study.decide(obs(0, 4))
    assert starts(decision.actions) == [0, 1, 2, 3]
    first = decision.actions[0]
    assert isinstance(first, StartTrial)
    assert first.params == {"lr": pytest.approx(math.sqrt(0.0001 * 0.1)), "bs": 64}
    again = Study(config(), slots=4).decide(obs(0, 4))
    assert decision.actions == again.actions  # same seed, same observation -> same actions
    other = Study(config(seed=1), slots=4).decide(obs(0, 4))
    assert other.actions[0] == first and other.actions[1] != decision.actions[1]


def test_prior_configurations_are_trials_zero_to_k_minus_one() -> None:
    priors = ({"lr": 0.01, "bs": 32}, {"lr": 0.001, "bs": 96})
    for sampler in ("random", "gp"):
        study = Study(config(priors=priors, sampler=sampler), slots=3)
        decision = study.decide(obs(0, 3))
        started = [a for a in decision.actions if isinstance(a, StartTrial)]
        assert [a.params for a in started[:2]] == list(priors)
        assert started[2].index == 2 and started[2].params not in priors
        # A restarted adapter that kept no parameters re-derives the priors from the index alone.
        assert study.trial_params(TrialView(1, RUNNING)) == priors[1]


def test_parameters_depend_on_the_trial_index_only() -> None:
    study = Study(config(), slots=1)
    assert study.params_for(5) == Study(config(), slots=8).params_for(5)


def test_free_slots_and_parallel_trials_bound_the_starts() -> None:
    assert starts(Study(config(), slots=4).decide(obs(0, 2)).actions) == [0, 1]
    assert starts(Study(config(parallel_trials=1), slots=4).decide(obs(0, 4)).actions) == [0]
    running = trial(0, RUNNING)
    assert starts(Study(config(parallel_trials=1), slots=4).decide(obs(5, 3, running)).actions) == []


def test_a_report_below_the_cutoff_prunes_its_trial() -> None:
    study = Study(config(), slots=2)  # rungs 1, 3 (R = 9)
    a = trial(0, RUNNING, (1, 0.8, 10.0))
    b = trial(1, RUNNING, (1, 0.6, 11.0))
    decision = study.decide(obs(11, 0, a, b))
    # The pruned trial's slot goes to the next trial in the same decision.
    assert decision.actions == [PruneTrial(1, 0, 1, 0.6, 0.8), StartTrial(2, study.params_for(2))]
    # Already pruned: no second prune.
    b_pruned = replace(b, status=PRUNED)
    assert not [x for x in study.decide(obs(12, 0, a, b_pruned)).actions if isinstance(x, PruneTrial)]


def test_min_mode_prunes_the_higher_value() -> None:
    study = Study(config("min"), slots=2)
    decision = study.decide(obs(11, 0, trial(0, RUNNING, (1, 0.8, 10.0)), trial(1, RUNNING, (1, 0.6, 11.0))))
    assert [a for a in decision.actions if isinstance(a, PruneTrial)] == []
    decision = study.decide(obs(11, 0, trial(0, RUNNING, (1, 0.6, 10.0)), trial(1, RUNNING, (1, 0.8, 11.0))))
    assert decision.actions[0] == PruneTrial(1, 0, 1, 0.8, 0.6)


def test_the_deadline_stops_every_running_trial_and_finalizes() -> None:
    study = Study(config(), slots=2)
    a = trial(0, RUNNING, (1, 0.8, 10.0), (3, 0.9, 30.0))
    b = trial(1, RUNNING, (1, 0.85, 11.0))
    decision = study.decide(obs(360, 0, a, b))
    assert decision.deadline == 360
    stops = [x for x in decision.actions if isinstance(x, StopTrial)]
    assert [s.index for s in stops] == [0, 1] and all(s.reason == "deadline" for s in stops)
    final = decision.finalize
    assert final is not None and final.reason == "deadline" and final.succeeded
    assert final.best is not None and (final.best.index, final.best.value, final.best.resource) == (0, 0.9, 3)


def test_no_trial_starts_that_cannot_reach_its_first_rung_in_time() -> None:
    study = Study(config(), slots=2)
    done = trial(0, COMPLETED, (9, 0.5, 90.0))
    # 10 s an epoch, r = 1: at t = 351 a new trial would report at 361 > 360.
    decision = study.decide(obs(351, 2, done))
    assert starts(decision.actions) == []
    assert decision.finalize is not None and decision.finalize.reason == "no time for another trial"
    assert starts(study.decide(obs(349, 2, done)).actions) == [1, 2]


def test_the_study_finalizes_when_every_planned_trial_ended() -> None:
    study = Study(replace(config(), budget=BudgetSpec(train_time=90.0, time_ratio=1.2)), slots=1)
    plan = study.plan([])
    assert plan is not None and plan.planned_trials == 1
    done = trial(0, COMPLETED, (9, 0.5, 90.0))
    final = study.decide(obs(95, 1, done)).finalize
    assert final is not None and final.reason == "all planned trials finished"
    assert final.best is not None and final.best.params == study.params_for(0)


def test_without_train_time_the_first_trial_measures_the_budget() -> None:
    study = Study(config(budget=BudgetSpec(time_ratio=4)), slots=4)
    first = study.decide(obs(0, 4))
    assert starts(first.actions) == [0] and first.deadline is None
    waiting = study.decide(obs(5, 3, trial(0, RUNNING, started=1.0)))
    assert starts(waiting.actions) == [] and "timing the first trial" in waiting.message
    # One report cannot tell start-up from epochs: keep waiting.
    one = study.decide(obs(16, 3, trial(0, RUNNING, (1, 0.5, 16.0), started=1.0)))
    assert starts(one.actions) == [] and one.deadline is None
    # Started at t=1, epoch 1 at t=16, epoch 2 at t=26: 10 s an epoch after 5 s of start-up, so one
    # training is 5 + 9 x 10 = 95 s and the budget 4 x 95 = 380 s.
    two = trial(0, RUNNING, (1, 0.5, 16.0), (2, 0.6, 26.0), started=1.0)
    measured = study.decide(obs(26, 3, two))
    assert measured.deadline == 380
    assert starts(measured.actions) == [1, 2, 3]
    assert measured.plan is not None
    assert (measured.plan.epoch_seconds, measured.plan.trial_overhead_seconds) == (10, 5)


def test_a_first_trial_that_ends_after_one_report_still_sizes_the_budget() -> None:
    study = Study(config(budget=BudgetSpec(time_ratio=4), max_resource=1), slots=2)
    done = trial(0, COMPLETED, (1, 0.5, 11.0), started=1.0)
    decision = study.decide(obs(12, 2, done))
    assert decision.deadline == 4 * 10


def test_a_first_trial_that_dies_before_reporting_ends_the_study() -> None:
    study = Study(config(budget=BudgetSpec(time_ratio=4)), slots=2)
    final = study.decide(obs(5, 2, trial(0, FAILED, started=1.0))).finalize
    assert final is not None and not final.succeeded and final.best is None


def test_a_budget_below_one_training_is_a_study_error() -> None:
    study = Study(config(budget=BudgetSpec(train_time=90.0, time_ratio=1.0)), slots=1)
    with pytest.raises(StudyError, match="smallest workable budget is 100s"):
        study.decide(obs(0, 1))


def test_too_many_failed_trials_end_the_study() -> None:
    study = Study(config(max_failed_trials=2), slots=3)
    failed = [trial(i, FAILED, started=0) for i in range(2)]
    decision = study.decide(obs(20, 2, *failed, trial(2, RUNNING, (1, 0.3, 15.0))))
    assert [a for a in decision.actions if isinstance(a, StopTrial)] == [
        StopTrial(2, "too many failed trials")
    ]
    final = decision.finalize
    assert final is not None and not final.succeeded and "2 trials failed" in final.reason


def test_the_best_comes_from_the_trials_that_trained_furthest() -> None:
    study = Study(config(), slots=3)
    deep = trial(0, COMPLETED, (1, 0.5, 10.0), (3, 0.6, 30.0), (9, 0.7, 90.0))
    shallow_but_high = trial(1, PRUNED, (1, 0.95, 11.0))
    also_deep = trial(2, COMPLETED, (1, 0.4, 12.0), (3, 0.5, 32.0), (9, 0.72, 95.0))
    best = study.best([deep, shallow_but_high, also_deep])
    assert best is not None and (best.index, best.value, best.resource) == (2, 0.72, 9)
    best_min = Study(config("min"), slots=3).best([deep, shallow_but_high, also_deep])
    assert best_min is not None and best_min.index == 0


def test_nan_reports_never_make_the_best() -> None:
    study = Study(config(), slots=2)
    assert study.best([trial(0, COMPLETED, (9, math.nan, 90.0))]) is None


@pytest.mark.parametrize(("mode", "broken"), [("max", math.nan), ("max", math.inf), ("min", -math.inf)])
def test_a_value_that_is_not_finite_at_the_top_does_not_hide_a_finite_best(mode: Mode, broken: float) -> None:
    # Trial 0 is the only one at R, and its value there is broken: the best is the best of the
    # others at the highest level they reached, not "no result".
    study = Study(config(mode), slots=3)
    diverged = trial(0, COMPLETED, (1, 0.5, 10.0), (3, 0.6, 30.0), (9, broken, 90.0))
    at_three = trial(1, COMPLETED, (1, 0.4, 11.0), (3, 0.55, 31.0))
    at_one = trial(2, PRUNED, (1, 0.3, 12.0))
    best = study.best([diverged, at_three, at_one])
    assert best is not None and (best.index, best.value, best.resource) == (1, 0.55, 3)
    # The decision reports the same best, and finalizes with it at the deadline.
    decision = study.decide(obs(400, 0, diverged, at_three, at_one))
    final = decision.finalize
    assert final is not None and final.succeeded and final.best == best


def test_a_pruned_trials_reports_after_the_report_that_pruned_it_do_not_count() -> None:
    study = Study(config(), slots=2)
    leader = trial(0, RUNNING, (1, 0.9, 10.0), (3, 0.91, 30.0))
    # Trial 1 is pruned by its report at rung 0 (0.5 behind 0.9), then sent two more while it was
    # being stopped, the last at R and better than anything else.
    late = trial(1, PRUNED, (1, 0.5, 11.0), (3, 0.95, 31.0), (9, 0.99, 91.0))
    best = study.best([leader, late])
    assert best is not None and (best.index, best.resource) == (0, 3)
    assert [len(t.reports) for t in study.counting([leader, late])] == [2, 1]
    decision = study.decide(obs(95, 0, leader, late))
    assert decision.best == best
    assert not [a for a in decision.actions if isinstance(a, PruneTrial)]  # already pruned
    # A trial that completed keeps its reports even if a late report of another trial, with an
    # earlier timestamp, now makes the replay prune it at rung 0.
    completed = replace(late, status=COMPLETED)
    best = study.best([leader, completed])
    assert best is not None and (best.index, best.resource, best.value) == (1, 9, 0.99)


@pytest.mark.parametrize(
    ("report", "highest", "reason"),
    [
        (Report(0, 0.5, 1.0), 0.0, "resource 0 is not above 0"),
        (Report(-2, 0.5, 1.0), 0.0, "resource -2 is not above 0"),
        (Report(10, 0.5, 1.0), 0.0, "resource 10 is beyond the maximum resource 9"),
        (Report(math.inf, 0.5, 1.0), 0.0, "resource inf is not a finite number"),
        (Report(math.nan, 0.5, 1.0), 0.0, "resource nan is not a finite number"),
        (Report(2, 0.5, 1.0), 3.0, "resource 2 is below 3, reported before"),
        (Report(2, 0.5, math.nan), 0.0, "time nan is not a finite number"),
        (Report(3, 0.5, 1.0), 3.0, None),  # the same resource again: allowed
        (Report(9, math.nan, 1.0), 0.0, None),  # a value that is not finite counts, as the worst
        (Report(0.5, -math.inf, 1.0), 0.0, None),
    ],
)
def test_which_reports_count(report: Report, highest: float, reason: str | None) -> None:
    assert report_refusal(report, 9, highest) == reason


def test_refused_reports_neither_prune_nor_make_the_best() -> None:
    study = Study(config(), slots=3)
    # Trial 1 claims resource 27 (beyond R = 9) and -1: neither counts, so it stands at rung 0.
    honest = trial(0, RUNNING, (1, 0.6, 10.0), (3, 0.7, 30.0))
    boastful = trial(1, RUNNING, (1, 0.65, 11.0), (27, 0.99, 12.0), (-1, 0.99, 13.0))
    # Trial 2's resource falls back to 1 after 3 (a trainer that restarted from scratch).
    restarted = trial(2, RUNNING, (1, 0.2, 14.0), (3, 0.5, 33.0), (1, 0.99, 40.0))
    counted, refused = screen_reports(boastful.reports, 9)
    assert [r.resource for r in counted] == [1]
    assert [why for _, why in refused] == [
        "resource 27 is beyond the maximum resource 9",
        "resource -1 is not above 0",
    ]
    assert [r.resource for r in study.screen(restarted).reports] == [1, 3]
    best = study.best([honest, boastful, restarted])
    assert best is not None and (best.index, best.resource) == (0, 3)
    # Had trial 1's report at 27 counted, it would be recorded at rung 1 (3) and above trial 0.
    decisions = study.rung_decisions([honest, boastful, restarted])
    assert [d.rung for d in decisions[1]] == [0]


def test_decide_is_pure() -> None:
    study = Study(config(), slots=2)
    o = obs(11, 1, trial(0, RUNNING, (1, 0.8, 10.0)), trial(1, RUNNING, (1, 0.6, 11.0)))
    assert study.decide(o).actions == study.decide(o).actions


# --- whole studies on the virtual clock -------------------------------------------------------


def objective(params: dict[str, Any], epoch: int) -> float:
    """Higher is better; best near lr = 0.01, saturating with epochs."""
    quality = 1 - abs(math.log10(params["lr"]) + 2) / 3
    return quality * (1 - math.exp(-epoch / 3))


@pytest.mark.parametrize("sampler", ["random", "qmc", "tpe", "gp"])
@pytest.mark.parametrize("slots", [1, 4])
@pytest.mark.parametrize("seed", range(2))
def test_simulated_studies_finish_inside_their_budget(slots: int, seed: int, sampler: SamplerName) -> None:
    cfg = config(seed=seed, max_resource=27, sampler=sampler)
    cfg = with_budget(cfg, train_time=270.0, time_ratio=4.0)
    result = simulate(cfg, slots, objective, epoch_seconds=10.0)
    assert result.deadline == 1080
    assert result.finished_at <= 1080
    assert result.finalize.best is not None
    assert all(not t.status.active for t in result.trials)
    # ASHA pruned something, and the best trained to R.
    assert any(t.status is PRUNED for t in result.trials)
    assert result.finalize.best.resource == 27


def test_more_gpus_run_more_trials_in_the_same_budget() -> None:
    cfg = with_budget(config(max_resource=27), train_time=270.0, time_ratio=4.0)
    counts = [len(simulate(cfg, slots, objective, epoch_seconds=10.0).trials) for slots in (1, 2, 4)]
    assert counts[0] < counts[1] < counts[2]


def test_the_stop_decisions_match_a_replay_of_the_reports() -> None:
    cfg = with_budget(config(max_resource=27), train_time=270.0, time_ratio=4.0)
    result = simulate(cfg, 4, objective, epoch_seconds=lambda p: 5.0 + p["bs"] / 16)
    study = Study(cfg, 4)
    replay = study.rung_decisions([t.view() for t in result.trials])
    for t in result.trials:
        pruned_by_replay = bool(replay.get(t.index)) and not replay[t.index][-1].promoted
        assert (t.status is PRUNED) == pruned_by_replay, t.index


def test_a_simulated_study_with_a_measured_budget() -> None:
    cfg = with_budget(config(max_resource=9), train_time=None, time_ratio=3.0)
    result = simulate(cfg, 2, objective, epoch_seconds=10.0, start_seconds=2.0)
    # Trial 0 measured (12 - 2) s for epoch 1: 90 s a training, 270 s budget.
    assert result.deadline == 270
    assert result.finished_at <= 270
    assert len(result.trials) > 2
    assert isinstance(result.finalize, Finalize)


def test_slower_measured_epochs_never_fail_a_running_study() -> None:
    # 90 s a training planned into 108 s (ratio 1.2): the plan holds one trial, and the idle slot
    # gets a second, since an average trial (23 s) fits beside it. Trials then measure 11 s an
    # epoch, so one training (99 s) no longer fits 90% of the budget: the study goes on.
    study = Study(config(budget=BudgetSpec(train_time=90.0, time_ratio=1.2)), slots=2)
    assert starts(study.decide(obs(0, 2)).actions) == [0, 1]
    slow = trial(0, RUNNING, (1, 0.5, 11.0), (2, 0.6, 22.0))
    decision = study.decide(obs(22, 1, slow, trial(1, PRUNED, (1, 0.4, 11.0))))
    assert decision.finalize is None
    final = study.decide(obs(108, 1, slow)).finalize
    assert final is not None and final.reason == "deadline" and final.best is not None


def test_time_left_after_the_planned_trials_goes_to_more_trials() -> None:
    study = Study(config(), slots=1)  # 10 s an epoch, R = 9, rungs 1 and 3: 23.3 s an average trial
    plan = study.decide(obs(0, 1)).plan
    assert plan is not None
    n = plan.planned_trials
    # Every planned trial was pruned at its first rung (11 s each): far cheaper than planned.
    ended = [trial(i, PRUNED, (1, 0.1 * i, 11.0 * (i + 1)), started=11.0 * i) for i in range(n)]
    more = study.decide(obs(11 * n, 1, *ended))
    assert starts(more.actions) == [n] and more.finalize is None
    # Once the time left cannot hold an average trial, the study ends.
    done = study.decide(obs(340, 1, *ended))
    assert done.finalize is not None and done.finalize.reason == "all planned trials finished"


def test_a_deadline_without_train_time_fills_every_slot_at_once() -> None:
    study = Study(config(budget=BudgetSpec(deadline=600.0)), slots=4)
    assert starts(study.decide(obs(0, 4)).actions) == [0, 1, 2, 3]


def test_a_time_ratio_below_one_training_is_refused_before_any_trial() -> None:
    study = Study(config(budget=BudgetSpec(time_ratio=1.0)), slots=2)
    with pytest.raises(StudyError, match=r"smallest workable ratio is 1\.11"):
        study.decide(obs(0, 2))


# --- the promote variant and the final training ------------------------------------------------

PAUSED = TrialPhase.PAUSED


def test_promote_starts_trials_that_pause_at_the_first_rung() -> None:
    study = Study(config(asha_variant="promote"), slots=2)
    assert [a.stop_at for a in study.decide(obs(0, 2)).actions if isinstance(a, StartTrial)] == [1, 1]
    assert all(
        a.stop_at is None
        for a in Study(config(), slots=2).decide(obs(0, 2)).actions
        if isinstance(a, StartTrial)
    )


def test_promote_with_a_measured_budget_times_two_reports_of_trial_0() -> None:
    study = Study(config(asha_variant="promote", budget=BudgetSpec(time_ratio=4)), slots=2)  # rungs 1, 3
    first = study.decide(obs(0, 2))
    # Trial 0 goes on past rung 1 to rung 3, so its reports separate start-up from epochs.
    assert [(a.index, a.stop_at) for a in first.actions if isinstance(a, StartTrial)] == [(0, 3)]
    # Started at 0, 20 s of start-up, 2 s an epoch: one training is 20 + 9 x 2 = 38 s, budget 152 s.
    reports = (1, 0.5, 22.0), (2, 0.6, 24.0), (3, 0.7, 26.0)
    measured = study.decide(obs(27, 1, trial(0, PAUSED, *reports)))
    assert measured.deadline == 4 * 38
    assert measured.plan is not None
    assert (measured.plan.epoch_seconds, measured.plan.trial_overhead_seconds) == (2, 20)
    # The next trials pause at the first rung again.
    assert {a.stop_at for a in measured.actions if isinstance(a, StartTrial)} == {1}


def test_each_trial_counts_once_in_the_measured_epoch_time() -> None:
    study = Study(config(), slots=4)
    # Trial 1 trained far at 14 s an epoch; trials 2-4 reported twice each at 7 s an epoch.
    long_run = trial(1, *[(e, 0.5, 14.0 * e) for e in range(1, 10)])
    short = [trial(i, PAUSED, (1, 0.5, 7.0), (2, 0.5, 14.0)) for i in (2, 3, 4)]
    measured = study.measured_times([long_run, *short])
    assert measured is not None and measured[0] == 7.0  # pooled, trial 1's 8 rates would give 14


def test_promote_resumes_the_top_third_of_a_rung_from_where_it_paused() -> None:
    study = Study(config(asha_variant="promote"), slots=1)  # rungs 1, 3; R = 9
    paused = [trial(i, PAUSED, (1, v, 10.0 + i)) for i, v in enumerate([0.5, 0.9, 0.7])]
    decision = study.decide(obs(20, 1, *paused))
    # 3 values at rung 0, eta 3: the best one (trial 1) goes on to rung 1 (3 epochs).
    resumes = [a for a in decision.actions if isinstance(a, ResumeTrial)]
    assert resumes == [ResumeTrial(1, study.params_for(1), 1, 3)]
    assert starts(decision.actions) == []  # the only slot went to the promotion
    # Once promoted (it recorded rung 1), trial 1 is not promoted again from rung 0.
    promoted = trial(1, PAUSED, (1, 0.9, 11.0), (3, 0.95, 40.0))
    again = study.decide(obs(41, 1, paused[0], promoted, paused[2]))
    assert not [a for a in again.actions if isinstance(a, ResumeTrial) and a.start_from == 1]


def test_promote_prefers_the_highest_rung_and_never_prunes() -> None:
    study = Study(config(asha_variant="promote"), slots=1)
    low = [trial(i, PAUSED, (1, 0.1 * i, float(i))) for i in range(6)]  # 6 at rung 0: 2 promotable
    high = [
        trial(6 + i, PAUSED, (1, 0.95, 10.0 + i), (3, v, 20.0 + i)) for i, v in enumerate([0.6, 0.8, 0.7])
    ]
    decision = study.decide(obs(30, 1, *low, *high))
    resumes = [a for a in decision.actions if isinstance(a, ResumeTrial)]
    assert resumes == [ResumeTrial(7, study.params_for(7), 3, 9)]
    assert not [a for a in decision.actions if isinstance(a, PruneTrial)]


@pytest.mark.parametrize("slots", [1, 4])
def test_simulated_promote_studies_finish_inside_their_budget_and_resume_where_they_paused(
    slots: int,
) -> None:
    cfg = with_budget(config(max_resource=27, asha_variant="promote"), train_time=270.0, time_ratio=4.0)
    result = simulate(cfg, slots, objective, epoch_seconds=10.0)
    assert result.finished_at <= 1080
    resumed = [t for t in result.trials if t.runs > 1]
    assert resumed, "some trials were promoted"
    for t in result.trials:
        # Every resource reported once: a resumed run continues from its rung, it does not restart.
        resources = [r.resource for r in t.reports]
        assert resources == list(range(1, len(resources) + 1)), t.index
    assert result.finalize.best is not None and result.finalize.best.resource == 27


def test_final_training_uses_the_best_trial_when_it_already_reached_r() -> None:
    study = Study(config(final_training=True, budget=BudgetSpec(train_time=90.0, time_ratio=1.2)), slots=1)
    done = trial(0, COMPLETED, (9, 0.8, 90.0))
    final = study.decide(obs(95, 1, done)).finalize
    assert final is not None and final.final == 0 and final.succeeded


def test_final_training_resumes_the_best_to_r_after_the_deadline() -> None:
    study = Study(config(final_training=True), slots=2)
    best = trial(0, RUNNING, (1, 0.8, 10.0), (3, 0.9, 30.0))
    other = trial(1, PRUNED, (1, 0.5, 12.0))
    at_deadline = study.decide(obs(360, 0, best, other))
    # The best is still running: stop it first, and no finalize yet.
    assert [a for a in at_deadline.actions if isinstance(a, StopTrial)] == [StopTrial(0, "deadline")]
    assert at_deadline.finalize is None and not [a for a in at_deadline.actions if isinstance(a, ResumeTrial)]
    stopped = replace(best, status=TrialPhase.STOPPED)
    resume = study.decide(obs(361, 2, stopped, other)).actions
    assert resume == [ResumeTrial(0, study.params_for(0), 3, 9, final=True)]
    # The final run is past the deadline and still goes on; then it finalizes with its own result.
    running = replace(stopped, status=RUNNING)
    assert study.decide(Observation(0.0, 500.0, 1, (running, other), final_index=0)).actions == []
    finished = trial(0, COMPLETED, (1, 0.8, 10.0), (3, 0.9, 30.0), (9, 0.97, 600.0))
    final = study.decide(Observation(0.0, 601.0, 2, (finished, other), final_index=0)).finalize
    assert final is not None and final.final == 0 and final.best is not None and final.best.value == 0.97


def test_a_final_training_that_fails_says_so() -> None:
    study = Study(config(final_training=True), slots=1)
    failed = trial(0, FAILED, (1, 0.8, 10.0), (3, 0.9, 30.0))
    final = study.decide(Observation(0.0, 400.0, 1, (failed,), final_index=0)).finalize
    assert final is not None and not final.succeeded and final.final is None


def test_simulated_final_training_trains_the_best_to_r() -> None:
    cfg = with_budget(
        config(max_resource=27, asha_variant="promote", final_training=True), train_time=270.0, time_ratio=2.0
    )
    result = simulate(cfg, 2, objective, epoch_seconds=10.0)
    final = result.finalize
    assert final.final is not None and final.best is not None and final.best.resource == 27
    trained = next(t for t in result.trials if t.index == final.final)
    assert max(r.resource for r in trained.reports) == 27
