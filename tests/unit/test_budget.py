"""Auto-config: plans fit their budget, grow with budget and GPUs, and refuse impossible budgets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpo_operator.budget import (
    HEADROOM,
    BudgetTooSmall,
    expected_runs,
    expected_trial_resource,
    make_plan,
    predicted_seconds,
)


def test_expected_trial_resource_by_hand() -> None:
    # Levels 1, 3, 9, R=10 with eta 3: 1 + 2/3 + 6/9 + 1/27.
    assert expected_trial_resource((1, 3, 9), 10, 3) == pytest.approx(1 + 2 / 3 + 6 / 9 + 1 / 27)
    # No rungs: every trial trains to R.
    assert expected_trial_resource((), 5, 3) == 5


def test_otx_default_plan_on_one_and_four_gpus() -> None:
    one = make_plan(budget_seconds=2400, slots=1, epoch_seconds=60, max_resource=10)
    four = make_plan(budget_seconds=2400, slots=4, epoch_seconds=60, max_resource=10)
    assert (one.eta, one.min_resource, one.rungs) == (3, 1, (1, 3, 9))
    assert (one.planned_trials, one.parallelism) == (11, 1)
    assert (four.planned_trials, four.parallelism) == (44, 4)
    assert one.predicted_seconds <= HEADROOM * 2400 and four.predicted_seconds <= HEADROOM * 2400


def test_the_plan_is_the_largest_that_fits() -> None:
    plan = make_plan(budget_seconds=3000, slots=2, epoch_seconds=10, max_resource=27, eta=3)
    per_trial = expected_trial_resource(plan.rungs, 27, 3)
    assert predicted_seconds(plan.planned_trials, 2, 10, per_trial, 27) <= HEADROOM * 3000
    assert predicted_seconds(plan.planned_trials + 1, 2, 10, per_trial, 27) > HEADROOM * 3000


def test_a_budget_below_one_training_says_so_and_names_the_smallest() -> None:
    with pytest.raises(BudgetTooSmall) as err:
        make_plan(budget_seconds=500, slots=4, epoch_seconds=60, max_resource=10)
    assert err.value.smallest_budget == pytest.approx(600 / HEADROOM)
    assert "too small for even one full training (600s)" in str(err.value)
    assert "smallest workable budget is 667s" in str(err.value)
    # The smallest workable budget does work.
    assert (
        make_plan(
            budget_seconds=err.value.smallest_budget, slots=4, epoch_seconds=60, max_resource=10
        ).planned_trials
        == 1
    )


def test_user_given_eta_and_r_are_kept() -> None:
    plan = make_plan(budget_seconds=10_000, slots=1, epoch_seconds=1, max_resource=81, min_resource=3, eta=3)
    assert (plan.eta, plan.min_resource, plan.rungs) == (3, 3, (3, 9, 27))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"budget_seconds": 0},
        {"epoch_seconds": 0},
        {"slots": 0},
        {"max_resource": 0},
        {"min_resource": 20},
    ],
)
def test_impossible_inputs(kwargs: dict[str, float]) -> None:
    args: dict[str, float] = {
        "budget_seconds": 100,
        "slots": 1,
        "epoch_seconds": 1,
        "max_resource": 10,
    } | kwargs
    with pytest.raises(ValueError):
        make_plan(**args)  # type: ignore[arg-type]


def test_status_keys() -> None:
    status = make_plan(budget_seconds=2400, slots=1, epoch_seconds=60, max_resource=10).to_status()
    assert {"eta", "minimumResource", "maximumResource", "rungs", "plannedTrials", "parallelism"} <= set(
        status
    )
    assert {"predictedSeconds", "budgetSeconds", "predictedGpuSeconds"} <= set(status)


budgets = st.floats(min_value=1, max_value=1e6)
epochs = st.floats(min_value=0.01, max_value=1e4)
resources = st.integers(min_value=1, max_value=200)
slot_counts = st.integers(min_value=1, max_value=64)
etas = st.integers(min_value=2, max_value=5)


@settings(max_examples=300, deadline=None)
@given(budget=budgets, slots=slot_counts, epoch=epochs, big_r=resources, eta=etas)
def test_plans_never_predict_a_finish_past_the_budget(
    budget: float, slots: int, epoch: float, big_r: int, eta: int
) -> None:
    try:
        plan = make_plan(budget_seconds=budget, slots=slots, epoch_seconds=epoch, max_resource=big_r, eta=eta)
    except BudgetTooSmall:
        assert big_r * epoch > HEADROOM * budget
        return
    assert plan.predicted_seconds <= budget
    assert plan.max_resource * plan.epoch_seconds <= budget  # the longest chain fits
    assert 1 <= plan.parallelism <= slots
    assert plan.planned_trials >= 1


@settings(max_examples=200, deadline=None)
@given(
    budget=budgets,
    slots=slot_counts,
    epoch=epochs,
    big_r=resources,
    factor=st.floats(1.0, 10.0),
    more=st.integers(0, 16),
)
def test_more_budget_or_more_gpus_never_plans_fewer_trials(
    budget: float, slots: int, epoch: float, big_r: int, factor: float, more: int
) -> None:
    try:
        base = make_plan(budget_seconds=budget, slots=slots, epoch_seconds=epoch, max_resource=big_r)
    except BudgetTooSmall:
        return
    bigger = make_plan(budget_seconds=budget * factor, slots=slots, epoch_seconds=epoch, max_resource=big_r)
    wider = make_plan(budget_seconds=budget, slots=slots + more, epoch_seconds=epoch, max_resource=big_r)
    assert bigger.planned_trials >= base.planned_trials
    assert wider.planned_trials >= base.planned_trials


def test_a_bigger_budget_runs_more_trials() -> None:
    small = make_plan(budget_seconds=2400, slots=1, epoch_seconds=60, max_resource=10)
    large = make_plan(budget_seconds=4800, slots=1, epoch_seconds=60, max_resource=10)
    assert large.planned_trials > small.planned_trials


def test_faster_measured_epochs_replan_to_more_trials() -> None:
    estimated = make_plan(budget_seconds=2400, slots=2, epoch_seconds=60, max_resource=10)
    measured = make_plan(budget_seconds=2400, slots=2, epoch_seconds=30, max_resource=10)
    assert measured.planned_trials > estimated.planned_trials


def test_the_promote_rule_pays_start_up_once_per_run() -> None:
    assert expected_runs((1, 3, 9), 3) == pytest.approx(1 + 1 / 3 + 1 / 9 + 1 / 27)
    assert expected_runs((), 3) == 1
    kw = {"budget_seconds": 3600, "slots": 2, "epoch_seconds": 10, "max_resource": 27, "eta": 3}
    stop = make_plan(**kw, trial_overhead=60)
    promote = make_plan(**kw, trial_overhead=60, promote=True)
    assert promote.planned_trials < stop.planned_trials
    assert promote.predicted_seconds <= 0.9 * 3600
    # Without start-up the two rules cost the same epochs.
    assert make_plan(**kw, promote=True).planned_trials == make_plan(**kw).planned_trials
