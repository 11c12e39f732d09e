"""Samplers: unit-cube mapping per parameter type, Latin hypercube strata, TPE proposals."""

from __future__ import annotations

import math
import random
import statistics
from typing import Any

import numpy as np
import pytest

from hpo_operator import sampler as sampler_module
from hpo_operator.sampler import (
    DATA_MIN_POINTS,
    GAMMA,
    LOCAL_MIN_STEP,
    LOCAL_MIN_TRIALS,
    LOCAL_SCALE,
    LOCAL_TOP,
    MIN_BANDWIDTH,
    QMC_BLOCK,
    SAMPLE_WIDEN,
    Observed,
    Sampler,
    _Parzen,
    latin_hypercube_point,
    neighbour_gaps,
    startup_trials,
)
from hpo_operator.space import SearchSpace, parse_space
from hpo_operator.trials import Report

ALL_TYPES = parse_space(
    {
        "u": {"param_type": "uniform", "range": [-1.0, 3.0]},
        "q": {"param_type": "quniform", "range": [0.0007, 0.0015, 0.0001]},
        "lu": {"param_type": "loguniform", "range": [1e-5, 1e-1]},
        "qlu": {"param_type": "qloguniform", "range": [32, 128, 2]},
        "c": {"param_type": "choice", "range": ["sgd", "adam", 3]},
    }
)


@pytest.mark.parametrize("param", ALL_TYPES.params, ids=lambda p: p.type)
def test_every_unit_point_maps_to_a_value_of_the_space(param: Any) -> None:
    for i in range(1001):
        value = param.from_unit(i / 1000)
        assert param.contains(value), (param.name, value)
        assert 0.0 <= param.to_unit(value) <= 1.0
        # The round trip lands in the same grid cell / choice / value.
        assert param.from_unit(param.to_unit(value)) == pytest.approx(value)


def test_log_types_map_the_unit_interval_on_a_log_scale() -> None:
    lu = ALL_TYPES.params[2]
    assert lu.from_unit(0.5) == pytest.approx(math.sqrt(1e-5 * 1e-1))


def test_latin_hypercube_blocks_cover_every_stratum_once() -> None:
    for block in range(3):
        points = [latin_hypercube_point(3, block * QMC_BLOCK + i, seed=5) for i in range(QMC_BLOCK)]
        for d in range(3):
            assert sorted(int(p[d] * QMC_BLOCK) for p in points) == list(range(QMC_BLOCK))
    assert latin_hypercube_point(3, 7, seed=5) == latin_hypercube_point(3, 7, seed=5)
    assert latin_hypercube_point(3, 7, seed=5) != latin_hypercube_point(3, 7, seed=6)


def test_trial_zero_gets_the_defaults_for_every_sampler() -> None:
    for kind in ("random", "qmc", "tpe", "gp"):
        assert Sampler(ALL_TYPES, kind, 0, "max").propose(0, [], (1, 3), 9) == ALL_TYPES.initial()  # type: ignore[arg-type]


def test_prior_configurations_come_first_for_every_sampler_and_are_then_not_repeated() -> None:
    priors = [ALL_TYPES.from_unit([0.1] * 5), ALL_TYPES.from_unit([0.9] * 5)]
    for kind in ("random", "qmc", "tpe", "gp"):
        sampler = Sampler(ALL_TYPES, kind, 0, "max", priors)  # type: ignore[arg-type]
        assert [sampler.propose(i, [], (1, 3), 9) for i in range(2)] == priors
        tried = [Observed(p, (Report(1, 0.5, float(i)),), i) for i, p in enumerate(priors)]
        later = [sampler.propose(i, tried, (1, 3), 9) for i in range(2, 8)]
        assert all(p not in priors for p in later)
        assert ALL_TYPES.initial() not in later[:1]  # the defaults are not slipped in after the priors


@pytest.mark.parametrize("kind", ["random", "qmc", "tpe", "gp"])
def test_proposals_are_deterministic_and_valid(kind: Any) -> None:
    tried = history(ALL_TYPES, 40, lambda p: -abs(p["u"] - 2.0))
    a = Sampler(ALL_TYPES, kind, 3, "max")
    b = Sampler(ALL_TYPES, kind, 3, "max")
    for index in range(1, 60):
        proposal = a.propose(index, tried, (1, 3), 9)
        assert proposal == b.propose(index, tried, (1, 3), 9)
        assert all(p.contains(proposal[p.name]) for p in ALL_TYPES.params)


def history(space: SearchSpace, n: int, value: Any, seed: int = 11) -> list[Observed]:
    """n random trials that each reported at resources 1, 3 and 9 (the rungs and R)."""
    sampler = Sampler(space, "random", seed, "max")
    out = []
    for i in range(1, n + 1):
        params = sampler.propose(i, [], (), 9)
        v = value(params)
        out.append(
            Observed(params, (Report(1, v - 0.2, i), Report(3, v - 0.1, i + 0.5), Report(9, v, i + 0.9)))
        )
    return out


def test_tpe_proposes_near_the_good_region() -> None:
    space = parse_space(
        {"x": {"param_type": "uniform", "range": [0, 1]}, "y": {"param_type": "uniform", "range": [0, 1]}}
    )
    tried = history(space, 80, lambda p: -((p["x"] - 0.8) ** 2 + (p["y"] - 0.2) ** 2))

    def distances(kind: Any) -> list[float]:
        s = Sampler(space, kind, 0, "max")
        props = [s.propose(i, tried, (1, 3), 9) for i in range(100, 200)]
        return [math.hypot(p["x"] - 0.8, p["y"] - 0.2) for p in props]

    tpe, rnd = statistics.median(distances("tpe")), statistics.median(distances("random"))
    assert tpe < 0.5 * rnd, (tpe, rnd)


def test_tpe_respects_min_mode() -> None:
    space = parse_space({"x": {"param_type": "uniform", "range": [0, 1]}})
    tried = history(space, 60, lambda p: p["x"])  # higher x, higher value: min mode wants low x
    for mode, near in (("min", 0.0), ("max", 1.0)):
        s = Sampler(space, "tpe", 0, mode)  # type: ignore[arg-type]
        xs = [s.propose(i, tried, (1, 3), 9)["x"] for i in range(100, 160)]
        assert statistics.median(abs(x - near) for x in xs) < 0.25, (mode, statistics.median(xs))


def test_tpe_ranks_trials_by_the_rung_they_reached_first() -> None:
    space = parse_space({"x": {"param_type": "uniform", "range": [0, 1]}})
    tried = []
    for i in range(1, 41):
        x = i / 41
        # Trials with x > 0.7 reached R with a mediocre value; the others were pruned at rung 1
        # with higher (but not comparable) values.
        reports = (
            (Report(1, 0.9, i), Report(3, 0.5, i + 0.5), Report(9, 0.5, i + 0.9))
            if x > 0.7
            else (Report(1, 0.9, i),)
        )
        tried.append(Observed({"x": x}, reports))
    s = Sampler(space, "tpe", 0, "max")
    xs = [s.propose(i, tried, (1, 3), 9)["x"] for i in range(100, 160)]
    assert statistics.median(xs) > 0.7


def test_the_start_is_quasi_random() -> None:
    space = parse_space({"x": {"param_type": "uniform", "range": [0, 1]}})
    s = Sampler(space, "tpe", 0, "max")
    n = startup_trials(space)
    assert n >= 5
    # Before the model takes over, proposals equal the Latin hypercube's.
    assert [s.propose(i, [], (), 9) for i in range(1, n)] == [s.quasi_random(i) for i in range(1, n)]


@pytest.mark.parametrize("kind", ["qmc", "tpe", "gp"])  # plain random sampling may repeat
def test_no_duplicates_while_the_space_has_unused_values(kind: Any) -> None:
    space = parse_space({"c": {"param_type": "choice", "range": ["a", "b", "c", "d"]}})
    s = Sampler(space, kind, 0, "max")
    tried = [Observed({"c": v}, (Report(9, 0.5, 1.0),)) for v in ("a", "b", "c")]
    for index in range(1, 30):
        assert s.propose(index, tried, (1, 3), 9) == {"c": "d"}
    # Exhausted: a repeat is allowed rather than failing.
    full = [*tried, Observed({"c": "d"}, ())]
    assert s.propose(5, full, (1, 3), 9)["c"] in "abcd"


def test_what_a_trial_gave_is_re_derived_when_its_reports_grow() -> None:
    """With indices the sampler keeps each trial's standing; a new report must still count."""
    space = parse_space({"x": {"param_type": "uniform", "range": [0, 1]}})
    # At rung 1 the higher x, the better; then the trials of x < 0.3 reach R and count as best.
    pruned = [Observed({"x": i / 41}, (Report(1, i / 41, i),), i) for i in range(1, 41)]
    cached = Sampler(space, "tpe", 0, "max")
    before = [cached.propose(i, pruned, (1, 3), 9) for i in range(100, 130)]
    grown = [
        Observed(t.params, (*t.reports, Report(3, 0.5, 50), Report(9, 0.5, 51)), t.index)
        if t.params["x"] < 0.3
        else t
        for t in pruned
    ]
    after = [cached.propose(i, grown, (1, 3), 9) for i in range(100, 130)]
    fresh = Sampler(space, "tpe", 0, "max")
    assert after == [fresh.propose(i, grown, (1, 3), 9) for i in range(100, 130)]
    assert statistics.median(p["x"] for p in before) > 0.7
    assert statistics.median(p["x"] for p in after) < 0.3


def test_proposals_do_not_depend_on_whether_trials_carry_an_index() -> None:
    tried = history(ALL_TYPES, 40, lambda p: -abs(p["u"] - 2.0))
    indexed = [Observed(t.params, t.reports, i) for i, t in enumerate(tried)]
    s = Sampler(ALL_TYPES, "tpe", 7, "max")
    for index in range(41, 80):
        assert s.propose(index, indexed, (1, 3), 9) == Sampler(ALL_TYPES, "tpe", 7, "max").propose(
            index, tried, (1, 3), 9
        )


def test_each_kernel_is_as_wide_as_the_gaps_to_its_neighbours() -> None:
    points = np.array([[0.6, 0.5], [0.1, 0.0], [0.2, 1.0]])
    # x: 0.1 | 0.2 | 0.6 between the ends 0 and 1; y: 0.0 | 0.5 | 1.0.
    assert np.allclose(neighbour_gaps(points), [[0.4, 0.5], [0.1, 0.5], [0.4, 0.5]])


def test_kernels_narrow_where_good_trials_gather_and_stay_wide_around_a_lone_one() -> None:
    space = parse_space(
        {"x": {"param_type": "uniform", "range": [0, 1]}, "y": {"param_type": "uniform", "range": [0, 1]}}
    )
    n = DATA_MIN_POINTS
    # Gathered in x around 0.3, spread evenly in y; one more point far off at x = 0.9.
    points = [[0.3 + 0.002 * i, (i + 0.5) / n] for i in range(n)] + [[0.9, 0.5]]
    density = _Parzen(space, points)
    x_widths, y_widths = density.bandwidths[:, 0], density.bandwidths[:, 1]
    assert max(x_widths[1 : n - 1]) == MIN_BANDWIDTH  # inside the cluster: the floor
    assert x_widths[n] > 0.5 * (0.9 - 0.3)  # the lone point
    assert min(y_widths[:n]) > 0.04  # y is spread: gaps of 1/n
    assert density.widen == SAMPLE_WIDEN
    # Too few points for their gaps to tell: the same wide kernel everywhere, not widened.
    few = _Parzen(space, points[: n - 1])
    assert few.widen == 1.0 and float(few.bandwidths.min()) == float(few.bandwidths.max()) > 0.15


def test_candidates_are_drawn_wider_than_the_density_scores() -> None:
    space = parse_space({"x": {"param_type": "uniform", "range": [0, 1]}})
    density = _Parzen(space, [[0.5]] * DATA_MIN_POINTS)
    rng = random.Random(0)
    draws = [density._around(rng, 0, 0.5, MIN_BANDWIDTH) for _ in range(4000)]
    assert 0.9 * SAMPLE_WIDEN * MIN_BANDWIDTH < statistics.stdev(draws) < 1.1 * SAMPLE_WIDEN * MIN_BANDWIDTH


def _bowl_history(n: int) -> list[Observed]:
    space = parse_space(
        {"x": {"param_type": "uniform", "range": [0, 1]}, "y": {"param_type": "uniform", "range": [0, 1]}}
    )
    return history(space, n, lambda p: -((p["x"] - 0.8) ** 2 + (p["y"] - 0.2) ** 2))


def test_local_steps_start_once_enough_trials_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    space = parse_space(
        {"x": {"param_type": "uniform", "range": [0, 1]}, "y": {"param_type": "uniform", "range": [0, 1]}}
    )
    monkeypatch.setattr(sampler_module, "RANDOM_FRACTION", 0.0)
    tried = _bowl_history(LOCAL_MIN_TRIALS)
    best = sorted(tried, key=lambda t: -t.reports[-1].value)[:LOCAL_TOP]
    good = np.array(
        [[t.params["x"], t.params["y"]] for t in sorted(tried, key=lambda t: -t.reports[-1].value)]
    )[: math.ceil(GAMMA * len(tried))]
    steps = np.maximum(LOCAL_SCALE * good.std(axis=0), LOCAL_MIN_STEP)

    def proposals(trials: list[Observed], share: float) -> list[dict[str, Any]]:
        monkeypatch.setattr(sampler_module, "LOCAL_FRACTION", share)
        s = Sampler(space, "tpe", 0, "max")
        return [s.propose(i, trials, (1, 3), 9) for i in range(100, 160)]

    # Every proposal a local step: within four steps of one of the best trials in each dimension.
    for p in proposals(tried, 1.0):
        assert any(
            abs(p["x"] - b.params["x"]) < 4 * steps[0] and abs(p["y"] - b.params["y"]) < 4 * steps[1]
            for b in best
        ), p
    # One trial fewer: no local step, and the draw that decides on one is not even made.
    fewer = tried[:-1]
    assert proposals(fewer, 1.0) == proposals(fewer, 0.0)
    assert proposals(tried, 1.0) != proposals(tried, 0.0)


@pytest.mark.parametrize("kind", ["qmc", "tpe", "gp"])
def test_proposals_with_local_steps_are_deterministic_valid_and_new(kind: Any) -> None:
    tried = history(ALL_TYPES, LOCAL_MIN_TRIALS + 20, lambda p: -abs(p["u"] - 2.0) - p["lu"])
    seen = {repr(sorted(t.params.items())) for t in tried}
    a = Sampler(ALL_TYPES, kind, 5, "max")
    for index in range(200, 260):
        proposal = a.propose(index, tried, (1, 3), 9)
        assert proposal == Sampler(ALL_TYPES, kind, 5, "max").propose(index, tried, (1, 3), 9)
        assert all(p.contains(proposal[p.name]) for p in ALL_TYPES.params)
        assert repr(sorted(proposal.items())) not in seen


@pytest.mark.parametrize("kind", ["qmc", "tpe", "gp"])
def test_a_value_that_came_back_from_json_as_an_integer_still_counts_as_tried(kind: Any) -> None:
    # x = 0.0 proposed, stored, and read back from the API as 0: the sampler must not propose it again.
    space = parse_space({"x": {"param_type": "quniform", "range": [0.0, 2.0, 1.0]}})
    tried = [Observed({"x": 0}, (Report(9, 0.9, 1.0),)), Observed({"x": 1}, (Report(9, 0.1, 2.0),))]
    s = Sampler(space, kind, 0, "max")
    for index in range(2, 30):
        assert float(s.propose(index, tried, (1, 3), 9)["x"]) == 2.0
