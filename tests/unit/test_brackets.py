"""Hyperband brackets over ASHA's rungs: which rungs each has, which trial joins which, how each
ranks only its own trials, how many the budget fits, and the settings that ask for them.

The hand-worked case throughout: eta 3, r 1, R 27, so rungs 1, 3, 9 and at most four brackets.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hpo_operator.asha import RungRecord, replay_stop, rung_records
from hpo_operator.brackets import (
    Brackets,
    bracket_cost,
    bracket_need,
    bracket_weights,
    brackets_that_fit,
    deal,
)
from hpo_operator.budget import HEADROOM, fit_brackets, make_plan
from hpo_operator.cli import main
from hpo_operator.config import (
    BudgetSpec,
    ConfigError,
    StudyConfig,
    config_from_mapping,
    ignored_warning,
    study_config_from_spec,
)
from hpo_operator.kube.crd import study_crd
from hpo_operator.kube.reconcile import reconcile
from hpo_operator.result import PlanStatus
from hpo_operator.simulate import simulate
from hpo_operator.study import Observation, PruneTrial, StartTrial, Study, TrialView
from hpo_operator.trials import Report, TrialPhase
from tests.support.kube_world import T0, study, world

RUNGS: tuple[float, ...] = (1, 3, 9)
R = 27


def test_each_bracket_starts_at_its_rung_and_has_the_rungs_above() -> None:
    brackets = Brackets.of(1, 3, R, count=4)
    assert brackets.rungs == RUNGS
    assert [brackets.rungs_of(b) for b in range(4)] == [(1, 3, 9), (3, 9), (9,), ()]
    assert [brackets.first_level(b) for b in range(4)] == [1, 3, 9, 27]  # the last: straight to R
    with pytest.raises(ValueError, match="need 1 to 4"):
        Brackets.of(1, 3, R, count=5)


def test_costs_needs_and_shares_by_hand() -> None:
    # E_0 = 1 + (3-1)/3 + (9-3)/9 + (27-9)/27 = 3; E_1 = 3 + 6/3 + 18/9 = 7; E_2 = 9 + 18/3 = 15.
    costs = [bracket_cost(RUNGS, R, 3, b) for b in range(4)]
    assert costs == pytest.approx([3, 7, 15, 27])
    # A bracket's share must take 3^rungs trials to its first rung: 27 x 3, 9 x 7, 3 x 15, 1 x 27.
    assert [bracket_need(RUNGS, R, 3, b) for b in range(4)] == pytest.approx([81, 63, 45, 27])
    # Equal budget per bracket: trials in proportion to 1/3 : 1/7 : 1/15 = 35 : 15 : 7.
    assert bracket_weights(RUNGS, R, 3, 3) == pytest.approx((35 / 57, 15 / 57, 7 / 57))
    assert bracket_weights(RUNGS, R, 3, 1) == (1.0,)


def test_the_order_trials_join_brackets_by_hand() -> None:
    # Credits from 0, weights 35/57, 15/57, 7/57 (~.614, .263, .123); trial 0 joins bracket 0:
    # 1: credits (.228, .526, .246) -> 1;  2: (.842, -.211, .368) -> 0;  3: (.456, .053, .491) -> 2;
    # 4: (1.070, .316, -.386) -> 0;  5: (.684, .579, -.263) -> 0;  6: (.298, .842, -.140) -> 1; ...
    weights = bracket_weights(RUNGS, R, 3, 3)
    assert deal(weights, 12, [0.0, 0.0, 0.0]) == [0, 1, 0, 2, 0, 0, 1, 0, 0, 1, 0, 2]
    # Trial 0 joins bracket 0 whatever the credits say.
    assert deal(weights, 1, [0.0, 5.0, 5.0]) == [0]


@pytest.mark.parametrize("seed", [0, 1, 7, 12345])
def test_every_prefix_holds_each_share_to_within_one_trial(seed: int) -> None:
    brackets = Brackets.of(1, 3, R, count=4, seed=seed)
    counts: Counter[int] = Counter()
    for k in range(300):
        counts[brackets.of_trial(k)] += 1
        for b, w in enumerate(brackets.weights):
            assert abs(counts[b] - (k + 1) * w) < 1.5, (k, b, counts)
    assert brackets.of_trial(0) == 0


def test_the_assignment_is_seeded_and_the_same_every_time() -> None:
    first = [Brackets.of(1, 3, R, count=3, seed=3).of_trial(k) for k in range(40)]
    again = Brackets.of(1, 3, R, count=3, seed=3)
    assert [again.of_trial(k) for k in reversed(range(40))][::-1] == first  # any order of asking
    others = {tuple(Brackets.of(1, 3, R, count=3, seed=s).of_trial(k) for k in range(40)) for s in range(6)}
    assert len(others) > 1  # seeds interleave the brackets differently
    assert all(Brackets.of(1, 3, R, count=1, seed=s).of_trial(9) == 0 for s in range(3))


def test_records_start_at_the_brackets_first_rung() -> None:
    reports = [Report(e, 0.1 * e, float(e)) for e in range(1, 28)]
    assert [(r.rung, r.resource, r.bracket) for r in rung_records(5, reports, RUNGS, 0)] == [
        (0, 1, 0),
        (1, 3, 0),
        (2, 9, 0),
    ]
    in_bracket_1 = rung_records(5, reports, RUNGS, 1)
    assert [(r.rung, r.resource, r.bracket) for r in in_bracket_1] == [(1, 3, 1), (2, 9, 1)]
    assert [(r.rung, r.bracket) for r in rung_records(5, reports, RUNGS, 2)] == [(2, 2)]
    assert rung_records(5, reports, RUNGS, 3) == []


def test_each_bracket_ranks_only_its_own_trials() -> None:
    def rec(trial: int, rung: int, value: float, time: float, bracket: int) -> RungRecord:
        return RungRecord(trial, rung, RUNGS[rung], value, time, bracket)

    records = [
        rec(0, 1, 0.9, 1.0, 0),  # bracket 0 at rung 1 (resource 3): first there, continues
        rec(1, 1, 0.5, 2.0, 0),  # second of bracket 0 there and worse: pruned (keep 1 of 2)
        rec(2, 1, 0.1, 3.0, 1),  # bracket 1's first at its first rung: continues though worst of all
        rec(3, 1, 0.2, 4.0, 1),  # bracket 1's second and better than trial 2: continues
        rec(4, 1, 0.05, 5.0, 1),  # bracket 1's third, worst of three: pruned (keep 1)
    ]
    decisions = replay_stop(records, 3, "max")
    continues = {t: ds[-1].promoted for t, ds in decisions.items()}
    assert continues == {0: True, 1: False, 2: True, 3: True, 4: False}
    pruned = decisions[4][-1]
    assert (pruned.rank, pruned.competitors, pruned.keep, pruned.cutoff) == (3, 3, 1, 0.2)
    # Bracket 1's records never raised the bar of bracket 0: 2 of bracket 0 at the rung, keep 1.
    assert (decisions[1][-1].competitors, decisions[1][-1].cutoff) == (2, 0.9)


# --- in the decision core ---------------------------------------------------------------------------


def study_config(brackets: int, **kw: Any) -> StudyConfig:
    base = config_from_mapping(
        {
            "metric": "accuracy",
            "maximum_resource": R,
            "minimum_resource": 1,
            "hp_space": {"x": {"param_type": "uniform", "range": [0, 1]}},
        }
    )
    kw.setdefault("budget", BudgetSpec(time_ratio=5, train_time=270.0))  # 10 s an epoch
    return replace(base, sampler="random", asha_brackets=brackets, **kw)


def test_the_core_prunes_a_trial_against_its_own_bracket_only() -> None:
    # Ratio 5 on 2 slots holds 10 trainings: 3 brackets need 3 x 81 epochs = 9 / 0.9 = 10.
    study = Study(study_config(3), slots=2)
    assert study.brackets.count == 3
    of = {b: [k for k in range(1, 30) if study.brackets.of_trial(k) == b] for b in range(3)}
    b0, b1 = of[0][0], of[1][0]
    # Trial 0 (bracket 0) reported 0.9 at 1 epoch; then a bracket-0 and a bracket-1 trial report
    # worse values at 1 epoch. Only the bracket-0 one is judged there (and pruned, 2nd of 2).
    trials = (
        TrialView(0, TrialPhase.RUNNING, (Report(1, 0.9, 10.0),), 0.0),
        TrialView(b0, TrialPhase.RUNNING, (Report(1, 0.2, 11.0),), 0.0),
        TrialView(b1, TrialPhase.RUNNING, (Report(1, 0.1, 12.0),), 0.0),
    )
    decision = study.decide(Observation(started_at=0.0, now=13.0, free_slots=0, trials=trials))
    pruned = [a for a in decision.actions if isinstance(a, PruneTrial)]
    assert [(a.index, a.rung, a.resource) for a in pruned] == [(b0, 0, 1)]
    assert b1 not in decision.rung_decisions
    # At 3 epochs the bracket-1 trial is its bracket's first at rung 1: it goes on, below trial 0.
    later = (
        TrialView(0, TrialPhase.RUNNING, (Report(1, 0.9, 10.0), Report(3, 0.95, 30.0)), 0.0),
        TrialView(b1, TrialPhase.RUNNING, (Report(1, 0.1, 12.0), Report(3, 0.3, 32.0)), 0.0),
    )
    decision = study.decide(Observation(started_at=0.0, now=33.0, free_slots=0, trials=later))
    assert not [a for a in decision.actions if isinstance(a, PruneTrial)]
    assert decision.rung_decisions[b1][-1].competitors == 1
    assert decision.plan is not None and decision.plan.brackets == 3


def test_the_best_is_compared_across_brackets_at_the_highest_level() -> None:
    study = Study(study_config(3), slots=2)
    b2 = next(k for k in range(1, 30) if study.brackets.of_trial(k) == 2)
    trials = (
        TrialView(0, TrialPhase.COMPLETED, tuple(Report(e, 0.5, 10.0 * e) for e in (1, 3, 9, 27)), 0.0),
        TrialView(b2, TrialPhase.COMPLETED, tuple(Report(e, 0.8, 10.0 * e) for e in (9, 27)), 0.0),
    )
    best = study.best(trials)
    assert best is not None and (best.index, best.value, best.resource) == (b2, 0.8, 27)


def test_a_whole_study_runs_every_bracket_inside_its_budget() -> None:
    config = study_config(4, budget=BudgetSpec(time_ratio=4, train_time=270.0))
    result = simulate(config, 8, lambda p, e: p["x"] * (1 - 1 / (e + 1)), 10.0)
    assert result.plan is not None and result.plan.brackets == 4
    study = Study(config, 8)
    joined = Counter(study.brackets.of_trial(t.index) for t in result.trials)
    assert set(joined) == {0, 1, 2, 3}
    assert result.finished_at <= result.deadline  # type: ignore[operator]
    # No trial of bracket b > 0 was judged below its bracket's first rung.
    for t in result.trials:
        b = study.brackets.of_trial(t.index)
        if t.status is TrialPhase.PRUNED:
            assert max(r.resource for r in t.reports) >= study.brackets.first_level(b)
    assert result.finalize.best is not None and result.finalize.best.resource == R


def test_promote_pauses_each_trial_at_its_brackets_first_rung_and_ranks_it_in_its_bracket() -> None:
    study = Study(study_config(3, asha_variant="promote"), slots=3)
    b1 = [k for k in range(1, 40) if study.brackets.of_trial(k) == 1]
    b2 = next(k for k in range(1, 40) if study.brackets.of_trial(k) == 2)
    # A new trial's first run pauses at its bracket's first rung: 1, 3 or 9 epochs.
    decision = study.decide(Observation(started_at=0.0, now=0.0, free_slots=3))
    stops = {a.index: a.stop_at for a in decision.actions if isinstance(a, StartTrial)}
    assert stops == {k: study.brackets.first_level(study.brackets.of_trial(k)) for k in range(3)}
    assert stops[0] == 1
    # Three bracket-1 trials paused at 3 epochs, next to a bracket-0 trial far better there: the best
    # of bracket 1 is promoted to 9 (1 of 3), judged against its own bracket only.
    paused = [
        TrialView(k, TrialPhase.PAUSED, (Report(3, v, 30.0 + k),), 0.0)
        for k, v in zip(b1[:3], (0.2, 0.4, 0.3), strict=True)
    ]
    best0 = TrialView(0, TrialPhase.PAUSED, (Report(1, 0.9, 10.0), Report(3, 0.99, 29.0)), 0.0)
    assert study.promotable([best0, *paused]) == [(b1[1], 3, 9)]
    # A top-bracket trial has no rung: a bracket-2 trial pauses at 9, alone there, and waits.
    lone = TrialView(b2, TrialPhase.PAUSED, (Report(9, 0.1, 90.0),), 0.0)
    assert study.promotable([lone]) == []


def test_a_whole_promote_study_with_brackets_keeps_its_deadline() -> None:
    config = study_config(4, asha_variant="promote", budget=BudgetSpec(time_ratio=4, train_time=270.0))
    result = simulate(config, 8, lambda p, e: p["x"] * (1 - 1 / (e + 1)), 10.0)
    assert result.plan is not None and result.plan.brackets == 4
    assert result.finished_at <= result.deadline  # type: ignore[operator]
    study = Study(config, 8)
    runs = Counter(study.brackets.of_trial(t.index) for t in result.trials if t.runs > 1)
    assert runs[0] > 0 and runs[1] > 0  # trials of both were promoted
    assert result.finalize.best is not None and result.finalize.best.resource == R


def test_near_the_deadline_a_trial_of_a_later_bracket_is_passed_over_not_waited_for() -> None:
    study = Study(study_config(4, budget=BudgetSpec(time_ratio=4, train_time=270.0)), slots=8)
    assert study.brackets.count == 4
    k = next(j for j in range(1, 60) if study.brackets.of_trial(j) == 3)  # its first level is R
    done = tuple(TrialView(i, TrialPhase.COMPLETED, (), 0.0) for i in range(k))

    def starts(now: float) -> list[int]:
        decision = study.decide(Observation(started_at=0.0, now=now, free_slots=1, trials=done))
        return [a.index for a in decision.actions if isinstance(a, StartTrial)]

    assert starts(100.0) == [k]  # 980 s left: it reaches R (270 s) in time
    # 80 s (8 epochs of 10 s) left: brackets 0 and 1 (first rungs 1 and 3) fit, 2 and 3 do not.
    fitting = next(j for j in range(k, k + 20) if study.brackets.of_trial(j) <= 1)
    assert starts(1000.0) == [fitting]
    assert all(study.brackets.of_trial(j) >= 2 for j in range(k, fitting))
    assert starts(1075.0) == []  # not even the first rung fits


# --- how many brackets the budget fits ------------------------------------------------------------


def test_one_bracket_when_the_budget_is_tight() -> None:
    # 3 brackets need 3 x 81 epochs in the budget's 90%: 10 trainings of 27 epochs.
    assert brackets_that_fit(3, RUNGS, R, 3, HEADROOM * 10 * R) == 3
    assert fit_brackets(3, RUNGS, R, 3, 10.0) == (3, "")
    count, note = fit_brackets(3, RUNGS, R, 3, 9.9)
    assert count == 2 and note.startswith("2 of 3 brackets: 3 need a budget of 10 trainings")
    assert "it holds 9.9" in note
    count, note = fit_brackets(3, RUNGS, R, 3, 4.0)  # 2 would need 6.67
    assert count == 1 and note.startswith("1 of 3 brackets")
    assert fit_brackets(9, RUNGS, R, 3, 1000.0) == (4, "4 of 9 brackets: 3 rungs make at most 4")
    assert fit_brackets(1, RUNGS, R, 3, 1.0) == (1, "")


def test_the_plan_says_how_many_brackets_fit_and_why() -> None:
    tight = make_plan(budget_seconds=4 * 270, slots=1, epoch_seconds=10, max_resource=R, eta=3, brackets=3)
    assert (tight.brackets, tight.brackets_note[:16]) == (1, "1 of 3 brackets:")
    roomy = make_plan(budget_seconds=5 * 270, slots=2, epoch_seconds=10, max_resource=R, eta=3, brackets=3)
    one = make_plan(budget_seconds=5 * 270, slots=2, epoch_seconds=10, max_resource=R, eta=3)
    assert (roomy.brackets, roomy.brackets_note) == (3, "")
    # Later brackets' trials cost more (mean 57/15/... epochs), so fewer of them fit.
    assert roomy.planned_trials < one.planned_trials
    status = roomy.to_status()
    assert status["brackets"] == 3 and "bracketsNote" not in status
    assert PlanStatus.of(tight).brackets_note == tight.brackets_note


def test_the_study_fixes_its_bracket_count_before_any_trial_runs() -> None:
    # Ratio 4 on one slot: 4 trainings, one bracket, and the plan says why.
    study = Study(study_config(3, budget=BudgetSpec(time_ratio=4, train_time=270.0)), slots=1)
    plan = study.plan(())
    assert plan is not None and plan.brackets == 1 and plan.brackets_note.startswith("1 of 3 brackets")
    # A deadline alone: how many trainings it holds is not known when trials start.
    study = Study(study_config(3, budget=BudgetSpec(deadline=3600.0)), slots=8)
    assert study.brackets.count == 1
    plan = study.plan(())
    assert plan is not None and "give trainTime too" in plan.brackets_note
    # A deadline and a train time: 3600 / 270 x 8 trainings, every bracket fits.
    study = Study(study_config(3, budget=BudgetSpec(deadline=3600.0, train_time=270.0)), slots=8)
    assert study.brackets.count == 3
    # A measured budget (time ratio alone): the ratio says how many trainings, before any timing.
    assert Study(study_config(3, budget=BudgetSpec(time_ratio=5)), slots=2).brackets.count == 3


# --- the settings ---------------------------------------------------------------------------------

FILE = {"hp_space": {"x": {"param_type": "uniform", "range": [0, 1]}}, "maximum_resource": 27}


def test_asha_brackets_and_otx_num_brackets_map_to_the_core() -> None:
    assert config_from_mapping(FILE).asha_brackets == 1
    assert config_from_mapping({**FILE, "asha": {"brackets": 3}}).asha_brackets == 3
    otx = config_from_mapping({**FILE, "num_brackets": 2, "asynchronous_bracket": True})
    assert otx.asha_brackets == 2 and ignored_warning(otx) is None
    sync = config_from_mapping({**FILE, "asynchronous_bracket": False})
    assert "asynchronous_bracket (brackets here always run side by side)" in (ignored_warning(sync) or "")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"asha": {"brackets": 0}}, "asha.brackets: Input should be greater than or equal to 1, got 0"),
        ({"asha": {"brackets": 41}}, "asha.brackets: Input should be less than or equal to 40, got 41"),
        ({"asha": {"brackets": "3"}}, "asha.brackets: Input should be a valid integer, got '3'"),
        ({"num_brackets": 0}, "num_brackets: Input should be greater than or equal to 1, got 0"),
        ({"asynchronous_bracket": "yes"}, "asynchronous_bracket: Input should be a valid boolean"),
        (
            {"num_brackets": 2, "asha": {"brackets": 2}},
            "num_brackets, asha.brackets: two names of one setting (brackets); give one",
        ),
    ],
)
def test_bad_bracket_settings_name_what_is_wrong(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_mapping({**FILE, **extra})
    assert any(p.startswith(message) for p in err.value.problems), err.value.problems


SPEC: dict[str, Any] = {
    "metric": "accuracy",
    "hpSpace": {"x": {"paramType": "uniform", "range": [0, 1]}},
    "maximumResource": 27,
    "trialTemplate": {"spec": {"containers": [{"name": "t", "image": "i"}]}},
}


def test_the_spec_takes_asha_brackets() -> None:
    assert study_config_from_spec(SPEC).asha_brackets == 1
    assert study_config_from_spec({**SPEC, "asha": {"brackets": 3}}).asha_brackets == 3
    promote = {**SPEC, "asha": {"variant": "promote", "brackets": 2}, "checkpoints": {"size": "1Gi"}}
    config = study_config_from_spec(promote)
    assert (config.asha_variant, config.asha_brackets) == ("promote", 2)
    with pytest.raises(ConfigError, match=r"asha\.brackets: Input should be greater than or equal to 1"):
        study_config_from_spec({**SPEC, "asha": {"brackets": 0}})
    schema = study_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    brackets = schema["spec"]["properties"]["asha"]["properties"]["brackets"]
    assert (brackets["type"], brackets["minimum"], brackets["maximum"]) == ("integer", 1, 40)
    plan = schema["status"]["properties"]["plan"]["properties"]
    assert plan["brackets"]["type"] == "integer" and plan["bracketsNote"]["type"] == "string"


def test_hpo_plan_says_how_many_brackets_fit(tmp_path: Path) -> None:
    path = tmp_path / "hpo_config.yaml"
    path.write_text("maximum_resource: 27\nnum_brackets: 3\nhp_space: {x: {type: uniform, min: 0, max: 1}}\n")
    tight = CliRunner().invoke(main, ["plan", str(path), "--train-time", "27m", "--gpus", "1"])
    assert tight.exit_code == 0, tight.output
    assert "brackets: 1 (1 of 3 brackets: 3 need a budget of 10 trainings" in tight.output
    roomy = CliRunner().invoke(main, ["plan", str(path), "--train-time", "27m", "--gpus", "4", "--json"])
    assert roomy.exit_code == 0, roomy.output
    assert json.loads(roomy.output)["brackets"] == 3


def test_the_operator_writes_how_many_brackets_run_into_the_studys_status() -> None:
    # R 9, r 1, eta 3: rungs 1 and 3, at most 3 brackets; ratio 10 on 4 GPUs holds 40 trainings.
    roomy = reconcile(world(study(asha={"brackets": 3}), free=4), T0).status
    assert roomy is not None and roomy["plan"]["brackets"] == 3 and "bracketsNote" not in roomy["plan"]
    # One GPU and a ratio of 2: 3 brackets need 3 x 21 epochs (7.8 trainings), 2 need 5.2.
    tight = study(asha={"brackets": 3}, budget={"trainTime": "9s", "timeRatio": 2}, parallelTrials=1)
    status = reconcile(world(tight, free=4), T0).status
    assert status is not None and status["plan"]["brackets"] == 1
    assert status["plan"]["bracketsNote"].startswith("1 of 3 brackets: 3 need a budget of 7.78 trainings")
