"""Which reports the SDK writes to the HPOTrial status (sending.Thinning): every report that may
change a decision, and the others only when they are max_resource / points apart, so a status stays
small whatever the trial's report rate."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence

import pytest

from hpo_trial.sending import DEFAULT_STATUS_POINTS, Thinning, Urgency, status_points_from_env

RUNGS = (1, 3, 9, 27, 81)


def thinned(
    resources: Sequence[float],
    max_resource: float | None,
    *,
    rungs: Sequence[float] = RUNGS,
    points: int = 256,
) -> tuple[list[int], list[bool]]:
    """The indices of the reports written (before the flush), and which reports were urgent."""
    environ = {"HPO_STATUS_POINTS": str(points)}
    if max_resource is not None:
        environ["HPO_MAX_RESOURCE"] = str(max_resource)
    rule = Thinning.from_env(environ)
    urgency = Urgency(rung_levels=rungs, last_resource=max_resource)
    urgent = [urgency(r) for r in resources]
    return [i for i, (r, u) in enumerate(zip(resources, urgent, strict=True)) if rule(r, u)], urgent


@pytest.mark.parametrize("max_resource", [1, 10, 90, 255, 256])
def test_a_report_per_epoch_is_always_written_while_max_resource_is_at_most_points(max_resource: int) -> None:
    epochs = list(range(1, max_resource + 1))
    assert thinned(epochs, max_resource)[0] == list(range(max_resource))
    assert thinned(epochs, max_resource, points=max_resource)[0] == list(range(max_resource))


def test_reports_every_step_write_a_bounded_number_spaced_by_max_resource_over_points() -> None:
    steps = 10_000
    resources = [90 * k / steps for k in range(1, steps + 1)]
    kept, urgent = thinned(resources, 90)
    assert len(kept) + 1 <= 256 + len(RUNGS) + 3  # + 1: the latest, held and written at flush
    assert len(kept) > 250  # the curve keeps its points
    assert {i for i, u in enumerate(urgent) if u} <= set(kept)
    assert sum(urgent) == 2 + len(RUNGS) + 1  # the sizing ones, one per rung, the one at 90
    assert kept[-1] == steps - 1  # the one at the maximum resource
    spacing = 90 / 256
    for before, after in itertools.pairwise(kept):
        assert urgent[after] or resources[after] - resources[before] >= spacing * (1 - 1e-6)


def test_urgent_reports_are_written_however_close_together() -> None:
    rule = Thinning(spacing=10.0)
    assert [rule(r, True) for r in (1.0, 1.1, 1.2)] == [True, True, True]
    assert rule(1.3, False) is False
    assert rule(11.19, False) is False  # spaced from 1.2, the last one written
    assert rule(11.2, False) is True


def test_a_held_report_written_at_a_flush_spaces_the_next_ones() -> None:
    rule = Thinning(spacing=10.0)
    assert rule(1.0, True) and not rule(5.0, False)
    rule.wrote(5.0)
    assert rule(14.0, False) is False
    assert rule(15.0, False) is True


def test_resources_in_small_float_steps_lose_no_point_to_rounding() -> None:
    rule = Thinning(spacing=0.1)
    resources = [k * 0.1 for k in range(1, 101)]  # 0.30000000000000004 and the like
    assert all(rule(r, False) for r in resources)


def test_without_a_maximum_resource_every_report_is_written() -> None:
    for environ in ({}, {"HPO_MAX_RESOURCE": ""}, {"HPO_MAX_RESOURCE": "ten"}, {"HPO_MAX_RESOURCE": "0"}):
        rule = Thinning.from_env(environ)
        assert rule.spacing == 0
        assert all(rule(r, False) for r in (1.0, 1.0, 1.001, 0.5, 2.0))  # even a lower one
    assert thinned([k / 100 for k in range(1, 1001)], None)[0] == list(range(1000))


def test_points_come_from_the_environment_and_bad_values_fall_back(caplog: pytest.LogCaptureFixture) -> None:
    assert status_points_from_env({}) == DEFAULT_STATUS_POINTS == 256
    assert status_points_from_env({"HPO_STATUS_POINTS": " 64 "}) == 64
    assert status_points_from_env({"HPO_STATUS_POINTS": "1e3"}) == 1000
    assert Thinning.from_env({"HPO_MAX_RESOURCE": "90", "HPO_STATUS_POINTS": "30"}).spacing == 3.0
    for raw in ("many", "0", "-3", "2.5", "inf", "nan"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hpo_trial"):
            assert status_points_from_env({"HPO_STATUS_POINTS": raw}) == 256
        assert any(
            "HPO_STATUS_POINTS" in r.getMessage() and repr(raw) in r.getMessage() for r in caplog.records
        )


def test_each_report_is_urgent_once_so_reports_at_the_last_resource_do_not_all_go_out() -> None:
    urgency = Urgency(rung_levels=[3], last_resource=5)
    assert [urgency(r) for r in (1, 2, 3, 3, 4, 5, 5, 5.5)] == [
        True,
        True,
        True,
        False,
        False,
        True,
        False,
        False,
    ]
