"""The goal and the trial limit: the core's decisions, the plan's cap, the whole study on the virtual
clock, and the operator's status (Complete: GoalReached, the plan's maxTrials)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from hpo_operator.cli import main
from hpo_operator.config import (
    BudgetSpec,
    ConfigError,
    Mode,
    StudyConfig,
    config_from_mapping,
    ignored_warning,
    study_config_from_spec,
)
from hpo_operator.kube.reconcile import reconcile
from hpo_operator.kube.writes import CreateTrial, PatchTrialStatus
from hpo_operator.simulate import simulate, with_budget
from hpo_operator.study import (
    GOAL_REACHED,
    Observation,
    ResumeTrial,
    StartTrial,
    StopTrial,
    Study,
    TrialView,
)
from hpo_operator.trials import Report, TrialPhase
from tests.support.kube_world import T0, running, study, trial, world

RUNNING, COMPLETED, PRUNED, PAUSED, STOPPED = (
    TrialPhase.RUNNING,
    TrialPhase.COMPLETED,
    TrialPhase.PRUNED,
    TrialPhase.PAUSED,
    TrialPhase.STOPPED,
)


def config(mode: Mode = "max", **kw: Any) -> StudyConfig:
    """R = 9, rungs 1 and 3; 10 s an epoch and a 360 s budget."""
    base = config_from_mapping(
        {
            "metric": "accuracy",
            "mode": mode,
            "maximum_resource": 9,
            "hp_space": {"lr": {"param_type": "loguniform", "range": [0.0001, 0.1]}},
        }
    )
    budget = kw.pop("budget", BudgetSpec(train_time=90.0))
    return replace(base, budget=budget, sampler="random", **kw)


def obs(now: float, free: int, *trials: TrialView, final: int | None = None) -> Observation:
    return Observation(started_at=0.0, now=now, free_slots=free, trials=trials, final_index=final)


def view(index: int, status: TrialPhase, *reports: tuple[float, float, float]) -> TrialView:
    return TrialView(index, status, tuple(Report(*r) for r in reports), 0.0)


def starts(actions: list[Any]) -> list[int]:
    return [a.index for a in actions if isinstance(a, StartTrial)]


# --- the goal ---------------------------------------------------------------------------------------


def test_a_report_at_r_that_reaches_the_goal_stops_the_running_trials_and_succeeds() -> None:
    study_ = Study(config(goal=0.95), slots=2)
    done = view(0, COMPLETED, (1, 0.6, 10), (3, 0.8, 30), (9, 0.95, 90))
    other = view(1, RUNNING, (1, 0.7, 20))
    decision = study_.decide(obs(91, 1, done, other))
    assert [a for a in decision.actions if isinstance(a, StopTrial)] == [StopTrial(1, "goal reached")]
    assert starts(decision.actions) == []
    final = decision.finalize
    assert final is not None and final.succeeded and final.code == GOAL_REACHED
    assert final.reason == "goal reached: trial 0 reported 0.95 at resource 9"
    assert final.best is not None and final.best.index == 0
    # Just below the goal, the study goes on and starts a trial in the free slot.
    below = view(0, COMPLETED, (1, 0.6, 10), (3, 0.8, 30), (9, 0.949, 90))
    going_on = study_.decide(obs(91, 1, below, other))
    assert going_on.finalize is None and starts(going_on.actions) == [2]


def test_without_a_goal_resource_only_reports_at_r_reach_the_goal() -> None:
    study_ = Study(config(goal=0.9), slots=2)
    early = view(0, RUNNING, (1, 0.95, 10), (3, 0.99, 30))
    assert study_.decide(obs(31, 1, early)).finalize is None


def test_a_goal_at_a_rung_resource_counts_from_that_resource() -> None:
    study_ = Study(config(goal=0.9, goal_resource=3), slots=3)
    a = view(0, RUNNING, (1, 0.95, 10))  # above the goal, but below its resource
    b = view(1, RUNNING, (1, 0.97, 11))
    assert study_.decide(obs(12, 0, a, b)).finalize is None
    a = view(0, RUNNING, (1, 0.95, 10), (3, 0.91, 30))
    decision = study_.decide(obs(31, 1, a, b))
    assert {s.index for s in decision.actions if isinstance(s, StopTrial)} == {0, 1}
    final = decision.finalize
    assert final is not None and final.code == GOAL_REACHED
    assert final.reason == "goal reached: trial 0 reported 0.91 at resource 3"


def test_the_first_report_in_time_to_reach_the_goal_is_named() -> None:
    study_ = Study(config(goal=0.9, goal_resource=1), slots=3)
    later_but_lower_index = view(0, RUNNING, (1, 0.99, 12))
    first = view(1, RUNNING, (1, 0.92, 11))
    final = study_.decide(obs(13, 0, later_but_lower_index, first)).finalize
    assert final is not None and final.reason == "goal reached: trial 1 reported 0.92 at resource 1"


def test_with_mode_min_a_value_at_or_below_the_goal_reaches_it() -> None:
    study_ = Study(config("min", goal=0.1, goal_resource=1), slots=2)
    assert study_.decide(obs(11, 1, view(0, RUNNING, (1, 0.12, 10)))).finalize is None
    for value in (0.1, 0.05):
        final = study_.decide(obs(11, 1, view(0, RUNNING, (1, value, 10)))).finalize
        assert final is not None and final.code == GOAL_REACHED and final.succeeded


def test_a_value_that_is_not_finite_never_reaches_the_goal() -> None:
    study_ = Study(config("min", goal=0.1, goal_resource=1), slots=2)
    assert study_.decide(obs(11, 1, view(0, RUNNING, (1, math.nan, 10)))).finalize is None


def test_a_goal_never_reached_ends_at_the_deadline_as_without_one() -> None:
    study_ = Study(config(goal=0.99), slots=2)
    a = view(0, RUNNING, (1, 0.8, 10), (3, 0.9, 30))
    final = study_.decide(obs(360, 0, a)).finalize
    assert final is not None and final.reason == "deadline" and final.code is None


def test_with_final_training_a_goal_trial_at_r_is_the_model() -> None:
    study_ = Study(config(goal=0.9, final_training=True), slots=2)
    done = view(0, COMPLETED, (9, 0.95, 90))
    final = study_.decide(obs(91, 1, done, view(1, RUNNING, (1, 0.5, 95)))).finalize
    assert final is not None and final.final == 0 and final.code == GOAL_REACHED


def test_with_final_training_a_goal_reached_below_r_trains_the_best_on_and_keeps_the_reason() -> None:
    study_ = Study(config(goal=0.9, goal_resource=3, final_training=True), slots=2)
    best = view(0, RUNNING, (1, 0.8, 10), (3, 0.95, 30))
    stopping = study_.decide(obs(31, 0, best))
    assert [a for a in stopping.actions if isinstance(a, StopTrial)] == [StopTrial(0, "goal reached")]
    assert stopping.finalize is None
    stopped = replace(best, status=STOPPED)
    assert study_.decide(obs(32, 2, stopped)).actions == [
        ResumeTrial(0, study_.params_for(0), 3, 9, final=True)
    ]
    trained = view(0, COMPLETED, (1, 0.8, 10), (3, 0.95, 30), (9, 0.97, 100))
    final = study_.decide(obs(101, 2, trained, final=0)).finalize
    assert final is not None and final.final == 0 and final.code == GOAL_REACHED
    assert final.reason == "goal reached: trial 0 reported 0.95 at resource 3; final training finished"


def objective(params: dict[str, Any], epoch: int) -> float:
    quality = 1 - abs(math.log10(params["lr"]) + 2) / 3
    return quality * (1 - math.exp(-epoch / 3))


def test_a_simulated_study_ends_at_its_goal_well_before_its_deadline() -> None:
    cfg = with_budget(config(max_resource=27, goal=0.5), train_time=270.0, time_ratio=4.0)
    result = simulate(cfg, 4, objective, epoch_seconds=10.0)
    assert result.finalize.code == GOAL_REACHED and result.finalize.reason.startswith("goal reached: trial ")
    assert result.finished_at < 1080 / 2
    assert all(not t.status.active for t in result.trials)
    index = int(result.finalize.reason.split()[3])
    hit = next(t for t in result.trials if t.index == index)
    assert any(r.resource == 27 and r.value >= 0.5 for r in hit.reports)
    # An unreachable goal changes nothing.
    unreachable = simulate(replace(cfg, goal=2.0), 4, objective, epoch_seconds=10.0)
    plain = simulate(replace(cfg, goal=None), 4, objective, epoch_seconds=10.0)
    assert (unreachable.finalize, unreachable.finished_at) == (plain.finalize, plain.finished_at)


# --- the trial limit --------------------------------------------------------------------------------


def test_max_trials_caps_the_plan_and_the_starts() -> None:
    plain = Study(config(), slots=4).decide(obs(0, 4))
    assert plain.plan is not None and plain.plan.planned_trials > 3 and plain.plan.max_trials is None
    capped = Study(config(max_trials=3), slots=4).decide(obs(0, 4))
    assert starts(capped.actions) == [0, 1, 2]
    assert capped.plan is not None and (capped.plan.planned_trials, capped.plan.max_trials) == (3, 3)
    assert capped.plan.to_status()["maxTrials"] == 3
    assert "maxTrials" not in plain.plan.to_status()
    # A limit above what the budget plans leaves the plan as it is.
    loose = Study(config(max_trials=10_000), slots=4).decide(obs(0, 4)).plan
    assert (
        loose is not None and loose.planned_trials == plain.plan.planned_trials and loose.max_trials is None
    )


def test_a_deadline_without_train_time_fills_the_slots_up_to_the_limit() -> None:
    decision = Study(config(budget=BudgetSpec(deadline=600.0), max_trials=2), slots=4).decide(obs(0, 4))
    assert starts(decision.actions) == [0, 1]
    assert decision.plan is not None and decision.plan.planned_trials == 2


def test_once_the_limits_trials_ended_the_study_finishes_before_its_deadline() -> None:
    study_ = Study(config(max_trials=3), slots=1)
    # Cheap trials (pruned at their first rung) leave time that would go to more trials.
    ended = [view(i, PRUNED, (1, 0.1 * i, 11.0 * (i + 1))) for i in range(3)]
    final = study_.decide(obs(40, 1, *ended)).finalize
    assert final is not None and final.reason == "all 3 trials finished" and final.succeeded
    assert starts(study_.decide(obs(40, 1, *ended)).actions) == []
    without = Study(config(), slots=1).decide(obs(40, 1, *ended))
    assert without.finalize is None and starts(without.actions) == [3]
    # While one of them runs, no trial starts in the free slots and the study goes on.
    waiting = study_.decide(obs(40, 3, *ended[:2], view(2, RUNNING, (1, 0.9, 35))))
    assert starts(waiting.actions) == [] and waiting.finalize is None
    assert waiting.message == "all 3 trials started, the trial limit"


def test_max_trials_with_the_promote_variant_promotes_but_starts_no_more() -> None:
    study_ = Study(config(asha_variant="promote", max_trials=3), slots=2)
    paused = [view(i, PAUSED, (1, v, 10.0 + i)) for i, v in enumerate([0.5, 0.9, 0.7])]
    decision = study_.decide(obs(20, 2, *paused))
    assert [a for a in decision.actions if isinstance(a, ResumeTrial)] == [
        ResumeTrial(1, study_.params_for(1), 1, 3)
    ]
    assert starts(decision.actions) == [] and decision.finalize is None
    # No slot for the promotion: the study waits for one rather than finish.
    assert study_.decide(obs(20, 0, *paused)).finalize is None
    # Trial 1 paused at rung 1, alone there: nothing more to promote, and the study is over.
    promoted = view(1, PAUSED, (1, 0.9, 11.0), (3, 0.95, 40.0))
    final = study_.decide(obs(41, 2, paused[0], promoted, paused[2])).finalize
    assert final is not None and final.reason == "all 3 trials finished"
    assert final.best is not None and final.best.index == 1


def test_a_simulated_study_runs_exactly_its_trial_limit() -> None:
    cfg = with_budget(config(max_resource=27, max_trials=5), train_time=270.0, time_ratio=4.0)
    result = simulate(cfg, 2, objective, epoch_seconds=10.0)
    assert sorted(t.index for t in result.trials) == [0, 1, 2, 3, 4]
    assert result.finalize.reason == "all 5 trials finished"
    assert result.deadline is not None and result.finished_at < result.deadline


@pytest.mark.parametrize("variant", ["stop", "promote"])
def test_with_brackets_no_trial_index_reaches_the_limit_and_the_study_ends_at_it(variant: str) -> None:
    # Near the deadline an index whose bracket cannot reach its first rung is passed over: it counts
    # towards the limit like a started one, so the study still ends once no trial runs.
    cfg = with_budget(
        config(max_resource=27, max_trials=7, asha_brackets=3, asha_variant=variant),
        train_time=270.0,
        time_ratio=4.0,
    )
    result = simulate(cfg, 2, objective, epoch_seconds=10.0)
    assert result.plan is not None and result.plan.brackets > 1
    assert sorted(t.index for t in result.trials) == list(range(7))
    assert result.finalize.reason == "all 7 trials finished"
    assert result.deadline is not None and result.finished_at < result.deadline


# --- the operator's status --------------------------------------------------------------------------


def test_the_study_status_says_goal_reached_and_the_running_trials_are_stopped() -> None:
    t0 = trial(0, (1, 0.6, 2), (3, 0.8, 4), (9, 0.95, 10), phase="Completed")
    t1 = trial(1, (1, 0.7, 3))
    outcome = reconcile(world(study(goal=0.9, parallelTrials=2), t0, t1, **running(t1)), T0 + 11)
    status = outcome.status
    assert status is not None and status["phase"] == "Succeeded"
    complete = next(c for c in status["conditions"] if c["type"] == "Complete")
    assert (complete["status"], complete["reason"]) == ("True", GOAL_REACHED)
    assert complete["message"] == "goal reached: trial 0 reported 0.95 at resource 9"
    stops = [w for w in outcome.writes if isinstance(w, PatchTrialStatus) and w.trial == "s-1"]
    assert stops and stops[0].patch["phase"] == "Stopped" and stops[0].patch["reason"] == "GoalReached"
    assert not any(isinstance(w, CreateTrial) for w in outcome.writes)


def test_the_plan_in_the_status_says_the_trial_limit_capped_it() -> None:
    outcome = reconcile(world(study(maxTrials=2), free=4), T0)
    assert outcome.status is not None
    assert (outcome.status["plan"]["plannedTrials"], outcome.status["plan"]["maxTrials"]) == (2, 2)
    created = [w.trial["metadata"]["name"] for w in outcome.writes if isinstance(w, CreateTrial)]
    assert created == ["s-0", "s-1"]


@pytest.mark.parametrize(
    ("spec", "field"),
    [({"maxTrials": 0}, "spec.maxTrials"), ({"goal": math.inf}, "spec.goal")],
)
def test_a_bad_stop_condition_fails_the_study_naming_it(spec: dict[str, Any], field: str) -> None:
    outcome = reconcile(world(study(**spec)), T0)
    assert outcome.status is not None and outcome.status["phase"] == "Failed"
    invalid = next(c for c in outcome.status["conditions"] if c["type"] == "Invalid")
    assert invalid["status"] == "True" and field in invalid["message"]
    assert outcome.writes == []


# --- hpo_config.yaml, the spec and the commands -----------------------------------------------------

SPACE = {"x": {"param_type": "uniform", "range": [0, 1]}}


def file_config(**keys: Any) -> StudyConfig:
    return config_from_mapping({"maximum_resource": 9, "hp_space": SPACE, **keys})


def problems(**keys: Any) -> list[str]:
    with pytest.raises(ConfigError) as err:
        file_config(**keys)
    return err.value.problems


def test_the_file_sets_the_goal_its_resource_and_the_trial_limit() -> None:
    config = file_config(goal=0.9, goal_resource=3, max_trials=20)
    assert (config.goal, config.goal_resource, config.goal_at, config.max_trials) == (0.9, 3, 3, 20)
    assert file_config(goal=1).goal_at == 9  # unset: R
    # OTX's num_trials is the trial limit, and not a key with no use here.
    otx = file_config(num_trials=12)
    assert otx.max_trials == 12 and ignored_warning(otx) is None
    assert problems(num_trials=12, max_trials=3) == [
        "num_trials, max_trials: two names of one setting (max_trials); give one"
    ]


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"goal": math.inf}, "goal: Input should be a finite number"),
        ({"goal": math.nan}, "goal: Input should be a finite number"),
        ({"goal": "high"}, "goal: Input should be a valid number"),
        ({"goal": 0.9, "goal_resource": 0}, "goal_resource: Input should be greater than 0"),
        ({"goal": 0.9, "goal_resource": 12}, "goal_resource (12) must not exceed maximum_resource (9)"),
        ({"goal_resource": 3}, "goal_resource: the resource at which goal counts, but goal is not set"),
        ({"max_trials": 0}, "max_trials: Input should be greater than or equal to 1"),
        ({"num_trials": 0}, "num_trials: Input should be greater than or equal to 1"),
        ({"max_trials": 2.5}, "max_trials: Input should be a valid integer"),
    ],
)
def test_a_bad_goal_or_trial_limit_in_the_file_is_named(keys: dict[str, Any], expected: str) -> None:
    found = problems(**keys)
    assert any(p.startswith(expected) for p in found), found


def spec(**fields: Any) -> dict[str, Any]:
    return {
        "hpSpace": {"x": {"paramType": "uniform", "range": [0, 1]}},
        "maximumResource": 9,
        "trialTemplate": {"spec": {"containers": [{"name": "t"}]}},
        **fields,
    }


def test_the_spec_sets_the_goal_its_resource_and_the_trial_limit() -> None:
    config = study_config_from_spec(spec(goal=0.9, goalResource=3, maxTrials=5))
    assert (config.goal, config.goal_resource, config.max_trials) == (0.9, 3, 5)
    assert study_config_from_spec(spec()).goal is None


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"goal": math.nan}, "spec.goal: Input should be a finite number"),
        ({"goal": True}, "spec.goal: Input should be a valid number"),
        (
            {"goal": 0.9, "goalResource": 10},
            "spec.goalResource (10) must not exceed maximumResource (9)",
        ),
        ({"goalResource": 3}, "spec.goalResource: the resource at which goal counts, but goal is not set"),
        ({"maxTrials": 0}, "spec.maxTrials: Input should be greater than or equal to 1"),
        ({"maxTrials": 10**30}, "spec.maxTrials (1000000000000000000000000000000) must be at most 2^63 - 1"),
    ],
)
def test_a_bad_goal_or_trial_limit_in_the_spec_is_named(fields: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        study_config_from_spec(spec(**fields))
    assert any(p.startswith(expected) for p in err.value.problems), err.value.problems


def hpo(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def test_the_commands_name_a_bad_goal_and_show_the_stop_conditions(tmp_path: Path) -> None:
    path = tmp_path / "hpo_config.yaml"
    path.write_text("goal: .inf\nhp_space: {x: {param_type: uniform, range: [0, 1]}}\n")
    result = hpo("validate", path)
    assert result.exit_code == 2 and "goal: Input should be a finite number" in result.stderr
    path.write_text(
        "metric: acc\ngoal: 0.9\ngoal_resource: 3\nnum_trials: 4\n"
        "hp_space: {x: {param_type: uniform, range: [0, 1]}}\n"
    )
    result = hpo("validate", path)
    assert result.exit_code == 0, result.output
    assert (
        "goal: stop once a trial reports acc >= 0.9 at resource 3 (goal_resource) or beyond" in result.output
    )
    assert "trials: at most 4 (num_trials)" in result.output
    # R from the flag must hold the goal's resource.
    result = hpo("plan", path, "--max-resource", "2", "--train-time", "10m")
    assert result.exit_code == 2 and "below the config's goal_resource (3)" in result.stderr
    result = hpo("plan", path, "--max-resource", "9", "--train-time", "10m", "--gpus", "4", "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert (plan["plannedTrials"], plan["maxTrials"]) == (4, 4)
    result = hpo("manifest", path, "--max-resource", "9", "--name", "s", "--image", "i", "--budget", "1h")
    assert result.exit_code == 0, result.output
    manifest = yaml.safe_load(result.output)["spec"]
    assert (manifest["goal"], manifest["goalResource"], manifest["maxTrials"]) == (0.9, 3, 4)
