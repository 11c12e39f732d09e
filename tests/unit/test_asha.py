"""ASHA's stop rule against hand-worked cases, for both modes."""

from __future__ import annotations

import math

import pytest

from hpo_operator.asha import RungRecord, replay_stop, rung_records, rung_resources, tie_note
from hpo_operator.config import Mode
from hpo_operator.trials import Report


@pytest.mark.parametrize(
    ("r", "eta", "big_r", "rungs"),
    [
        (1, 3, 30, (1, 3, 9, 27)),
        (1, 3, 27, (1, 3, 9)),  # R itself is the end, not a rung
        (1, 2, 10, (1, 2, 4, 8)),
        (2, 3, 10, (2, 6)),
        (0.5, 2, 3, (0.5, 1, 2)),
        (5, 3, 5, ()),
    ],
)
def test_rungs_lie_at_r_eta_k_below_r(r: float, eta: int, big_r: float, rungs: tuple[float, ...]) -> None:
    assert rung_resources(r, eta, big_r) == rungs


@pytest.mark.parametrize(("r", "eta", "big_r"), [(0, 3, 10), (1, 1, 10), (1, 3, 0)])
def test_rung_inputs_are_checked(r: float, eta: int, big_r: float) -> None:
    with pytest.raises(ValueError):
        rung_resources(r, eta, big_r)


def rec(trial: int, value: float, time: float, rung: int = 0) -> RungRecord:
    return RungRecord(trial=trial, rung=rung, resource=float(rung), value=value, time=time)


def outcomes(records: list[RungRecord], eta: int = 3, mode: Mode = "max") -> dict[int, bool]:
    """trial -> whether its last decision let it continue."""
    return {t: ds[-1].promoted for t, ds in replay_stop(records, eta, mode).items()}


def test_the_first_trial_at_an_empty_rung_continues() -> None:
    assert outcomes([rec(0, 0.1, 1.0)]) == {0: True}


def test_with_fewer_than_eta_values_only_the_best_continues() -> None:
    # eta 3: trial 1 arrives second and is worse -> keep max(1, 2 // 3) = 1, it is rank 2.
    assert outcomes([rec(0, 0.5, 1.0), rec(1, 0.4, 2.0)]) == {0: True, 1: False}
    assert outcomes([rec(0, 0.5, 1.0), rec(1, 0.6, 2.0)]) == {0: True, 1: True}


def test_top_one_over_eta_of_what_is_recorded_so_far() -> None:
    # Six trials arrive in order; at the 6th, keep = 6 // 3 = 2.
    values = [0.1, 0.2, 0.3, 0.4, 0.5, 0.35]
    records = [rec(i, v, float(i)) for i, v in enumerate(values)]
    got = outcomes(records)
    # 0: alone -> on. 1: best of 2 -> on. 2: best of 3 (keep 1) -> on. 3: best of 4 -> on.
    # 4: best of 5 -> on. 5: 0.35 is rank 3 of 6, keep 2 -> pruned.
    assert got == {0: True, 1: True, 2: True, 3: True, 4: True, 5: False}
    decision = replay_stop(records, 3, "max")[5][-1]
    assert (decision.rank, decision.competitors, decision.keep, decision.cutoff) == (3, 6, 2, 0.4)


def test_arrival_order_not_list_order_decides() -> None:
    # The same records listed differently give the same decisions: time orders them.
    records = [rec(1, 0.4, 2.0), rec(0, 0.5, 1.0)]
    assert outcomes(records) == outcomes(list(reversed(records))) == {0: True, 1: False}


@pytest.mark.parametrize("mode", ["max", "min"])
def test_mode_decides_what_is_better(mode: Mode) -> None:
    got = outcomes([rec(0, 0.5, 1.0), rec(1, 0.4, 2.0)], mode=mode)
    assert got[1] is (mode == "min")


def test_min_mode_cutoff_is_in_the_users_units() -> None:
    records = [rec(i, v, float(i)) for i, v in enumerate([5.0, 4.0, 3.0, 6.0])]
    decision = replay_stop(records, 2, "min")[3][-1]
    # keep = 4 // 2 = 2 of {5, 4, 3, 6}: the best two (lowest) are 3 and 4; cutoff 4.0.
    assert (decision.promoted, decision.cutoff) == (False, 4.0)


def test_ties_go_to_the_value_recorded_first() -> None:
    got = outcomes([rec(0, 0.5, 1.0), rec(1, 0.5, 2.0)])
    assert got == {0: True, 1: False}
    # Same timestamp: the lower trial index counts as first.
    assert outcomes([rec(7, 0.5, 1.0), rec(3, 0.5, 1.0)]) == {3: True, 7: False}
    # The pruned trial's message says why a value equal to the cut-off did not continue.
    loser = replay_stop([rec(0, 0.5, 1.0), rec(1, 0.5, 2.0)], eta=2, mode="max")[1][-1]
    assert loser.value == loser.cutoff and "tie" in tie_note(loser.value, loser.cutoff)
    assert tie_note(0.4, 0.5) == ""


def test_nan_is_the_worst_value() -> None:
    got = outcomes([rec(0, math.nan, 1.0), rec(1, 0.0, 2.0), rec(2, math.nan, 3.0)], eta=2)
    assert got == {0: True, 1: True, 2: False}


@pytest.mark.parametrize(("mode", "broken"), [("max", math.inf), ("min", -math.inf), ("max", -math.inf)])
def test_an_infinite_value_is_the_worst_in_either_mode(mode: Mode, broken: float) -> None:
    # Without the rule an infinite accuracy (or a loss of minus infinity) would rank first and
    # push a finite value out; as the worst, it is the one pruned.
    got = outcomes([rec(0, 0.5, 1.0), rec(1, broken, 2.0)], eta=2, mode=mode)
    assert got == {0: True, 1: False}
    pruned = replay_stop([rec(0, 0.5, 1.0), rec(1, broken, 2.0)], eta=2, mode=mode)[1][-1]
    assert pruned.rank == 2 and pruned.cutoff == 0.5


def test_a_pruned_trial_is_not_recorded_at_higher_rungs() -> None:
    # Trial 1 is pruned at rung 0 but (a late report) also reached rung 1; that record is ignored
    # and does not count against trial 0 at rung 1.
    records = [rec(0, 0.9, 1.0), rec(1, 0.1, 2.0), rec(1, 0.99, 3.0, rung=1), rec(0, 0.5, 4.0, rung=1)]
    decisions = replay_stop(records, 3, "max")
    assert [d.rung for d in decisions[1]] == [0]
    assert decisions[0][-1].rung == 1 and decisions[0][-1].competitors == 1 and decisions[0][-1].promoted


def test_a_pruned_value_still_raises_the_bar() -> None:
    # Trial 1 (0.8) is pruned behind 0.9; it is recorded, so with three values keep is 1 and
    # trial 2's 0.85 (rank 2) is pruned too.
    got = outcomes([rec(0, 0.9, 1.0), rec(1, 0.8, 2.0), rec(2, 0.85, 3.0)])
    assert got == {0: True, 1: False, 2: False}


def test_rung_records_take_the_first_report_reaching_each_rung() -> None:
    reports = [Report(1, 0.1, 10.0), Report(2, 0.2, 20.0), Report(5, 0.5, 50.0), Report(9, 0.9, 90.0)]
    recs = rung_records(4, reports, (1, 3, 9))
    assert [(r.rung, r.resource, r.value, r.time) for r in recs] == [
        (0, 1, 0.1, 10.0),
        (1, 3, 0.5, 50.0),
        (2, 9, 0.9, 90.0),
    ]
    assert rung_records(4, [Report(0.5, 0.1, 1.0)], (1, 3)) == []
    # A report that jumps past two rungs records the trial at both.
    assert [r.rung for r in rung_records(4, [Report(4, 0.4, 1.0)], (1, 3, 9))] == [0, 1]


def test_replay_is_deterministic_and_idempotent() -> None:
    records = [rec(i % 17, (i * 7919 % 101) / 101, float(i // 3), rung=0) for i in range(17)]
    assert replay_stop(records, 3, "max") == replay_stop(list(reversed(records)), 3, "max")


def test_an_extended_replay_equals_a_full_replay() -> None:
    from hpo_operator.asha import StopReplay

    records = [rec(i % 23, ((i * 37) % 29) / 29, float(i), rung=i % 2) for i in range(60)]
    replay = StopReplay(3, "max")
    for n in range(0, 61, 7):
        assert replay.update(records[:n]) == replay_stop(records[:n], 3, "max")
    # A record that arrives out of order (earlier than what was replayed) forces a full replay.
    late = rec(99, 0.99, -1.0)
    assert replay.update([*records, late]) == replay_stop([*records, late], 3, "max")
