"""The Gaussian-process model of the gp sampler: copula, kernel, fit, posterior, expected improvement."""

from __future__ import annotations

import math
import statistics
from statistics import NormalDist

import numpy as np
import pytest

from hpo_operator import gp
from hpo_operator import sampler as sampler_module
from hpo_operator.sampler import Observed, Sampler, min_observations, startup_trials
from hpo_operator.space import parse_space
from hpo_operator.trials import Report


def test_normal_scores_keep_the_order_and_share_ties() -> None:
    y = gp.normal_scores([3.0, -1.0, 1e9, 3.0, 0.5])
    assert y[2] == max(y) and y[1] == min(y)  # the order, whatever the range
    assert y[0] == y[3]  # ties share their mean rank
    assert abs(float(np.mean(gp.normal_scores([5.0, 1.0, 2.0, 1e6])))) < 1e-9  # symmetric around 0
    assert y[4] < y[0]


def test_the_kernel_is_one_at_zero_distance_and_falls_with_it() -> None:
    a = np.array([[0.5, 0.0]])
    b = np.array([[0.5, 0.0], [0.6, 0.0], [0.9, 0.0]])
    k = gp.matern52(a, b, (0, 0), np.array([0.2, 1.0]))[0]
    assert k[0] == pytest.approx(1.0)
    assert 1.0 > k[1] > k[2] > 0.0


def test_a_categorical_dimension_counts_equal_or_different_only() -> None:
    # 3 categories: unit values 0.1 and 0.2 are category 0, 0.5 is 1 and 0.9 is 2.
    a = np.array([[0.1]])
    k = gp.matern52(a, np.array([[0.2], [0.5], [0.9]]), (3,), np.array([1.0]))[0]
    assert k[0] == pytest.approx(1.0)
    assert k[1] == pytest.approx(k[2])
    assert k[1] < 1.0


def test_the_posterior_interpolates_and_is_unsure_far_from_the_data() -> None:
    xs = np.linspace(0.0, 0.5, 12)
    points = np.column_stack([xs, np.ones_like(xs)])
    y = gp.normal_scores(np.sin(6 * xs))
    model = gp.fit(points, y, (0,))
    mu, sd = model.predict(points)
    assert np.max(np.abs(mu - y)) < 0.3
    _, sd_far = model.predict(np.array([[0.95, 1.0]]))
    assert sd_far[0] > 3 * float(np.max(sd))


def test_the_fidelity_scale_is_long_when_low_fidelity_predicts_the_full_one() -> None:
    xs = np.linspace(0.0, 1.0, 16)
    same = np.array([[x, f] for x in xs for f in (0.0, 0.5, 1.0)])
    flipped_values = [math.sin(6 * x) * (1 if f == 1.0 else -1) for x in xs for f in (0.0, 0.5, 1.0)]
    agree = gp.fit(same, gp.normal_scores([math.sin(6 * x) for x, _ in same]), (0,))
    disagree = gp.fit(same, gp.normal_scores(flipped_values), (0,))
    assert agree.scales[-1] > disagree.scales[-1]


def test_a_believed_point_lowers_the_uncertainty_where_it_is() -> None:
    xs = np.linspace(0.0, 0.4, 8)
    model = gp.fit(np.column_stack([xs, np.ones_like(xs)]), gp.normal_scores(list(xs)), (0,))
    pending = np.array([[0.8, 1.0]])
    _, before = model.predict(pending)
    mu_before, _ = model.predict(pending)
    believed = model.with_believed(pending)
    mu_after, after = believed.predict(pending)
    assert after[0] < 0.5 * before[0]
    assert mu_after[0] == pytest.approx(mu_before[0], abs=0.05)  # it believes its own mean
    assert model.with_believed(np.empty((0, 2))) is model


@pytest.mark.parametrize("mu,sd,best", [(0.0, 1.0, 0.0), (1.0, 0.5, 0.2), (-2.0, 0.3, 1.0), (0.3, 2.0, -1.0)])
def test_expected_improvement_matches_its_closed_form(mu: float, sd: float, best: float) -> None:
    n = NormalDist()
    z = (mu - best) / sd
    expected = sd * (z * n.cdf(z) + n.pdf(z))
    got = gp.expected_improvement(np.array([mu]), np.array([sd]), best)[0]
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-9)


SPACE_2D = parse_space(
    {"x": {"param_type": "uniform", "range": [0, 1]}, "y": {"param_type": "uniform", "range": [0, 1]}}
)


def _history(n: int, fidelity_flip: bool = False) -> list[Observed]:
    """n random trials reporting at 1, 3 and 9; the full value peaks at (0.8, 0.2)."""
    sampler = Sampler(SPACE_2D, "random", 11, "max")
    out = []
    for i in range(1, n + 1):
        p = sampler.propose(i, [], (), 9)
        v = -((p["x"] - 0.8) ** 2 + (p["y"] - 0.2) ** 2)
        low = -v if fidelity_flip else v
        out.append(Observed(p, (Report(1, low, i), Report(3, low, i + 0.5), Report(9, v, i + 0.9))))
    return out


# No rungs: a study with one level (R), whose results all sit at the first rung.
@pytest.mark.parametrize("rungs", [(1, 3), ()])
def test_gp_proposals_land_near_the_optimum(rungs: tuple[float, ...]) -> None:
    tried = _history(40)

    def distances(kind: str) -> list[float]:
        s = Sampler(SPACE_2D, kind, 0, "max")  # type: ignore[arg-type]
        props = [s.propose(i, tried, rungs, 9) for i in range(100, 140)]
        return [math.hypot(p["x"] - 0.8, p["y"] - 0.2) for p in props]

    near, rnd = statistics.median(distances("gp")), statistics.median(distances("random"))
    assert near < 0.3 * rnd, (near, rnd)


def test_gp_spreads_proposals_around_pending_trials() -> None:
    tried = _history(30)
    s = Sampler(SPACE_2D, "gp", 0, "max")
    first = s.propose(50, tried, (1, 3), 9)
    # The same proposal again while it is pending (started, no report) is not made twice.
    pending = [*tried, Observed(first, ())]
    second = Sampler(SPACE_2D, "gp", 0, "max").propose(50, pending, (1, 3), 9)
    assert second != first


def test_gp_waits_for_enough_reported_trials() -> None:
    s = Sampler(SPACE_2D, "gp", 0, "max")
    few, many = _history(min_observations(SPACE_2D) - 1), _history(30)
    indices = range(startup_trials(SPACE_2D), startup_trials(SPACE_2D) + 40)
    # Too few reports: the quasi-random sequence (bar the share of random proposals), not the model.
    assert sum(s.propose(i, few, (1, 3), 9) == s.quasi_random(i) for i in indices) >= 30
    assert sum(s.propose(i, many, (1, 3), 9) == s.quasi_random(i) for i in indices) == 0


def test_gp_proposes_as_tpe_until_enough_reported_trials_per_dimension() -> None:
    needed = sampler_module.GP_POINTS_PER_DIMENSION * len(SPACE_2D)
    indices = range(100, 120)

    def proposals(kind: str, tried: list[Observed]) -> list[dict[str, float]]:
        s = Sampler(SPACE_2D, kind, 4, "max")  # type: ignore[arg-type]
        return [s.propose(i, tried, (1, 3), 9) for i in indices]

    fewer = _history(needed - 1)
    assert proposals("gp", fewer) == proposals("tpe", fewer)
    enough = _history(needed)
    assert proposals("gp", enough) != proposals("tpe", enough)


def test_level_scores_rank_each_level_on_its_own() -> None:
    values = [0.1, 0.5, 0.3, 0.97, 0.99, 0.98]  # the full-fidelity values all above the rest
    levels = [0, 0, 0, 2, 2, 2]
    scores = gp.level_scores(values, levels)
    assert scores[:3].tolist() == pytest.approx(gp.normal_scores(values[:3]).tolist())
    assert scores[3:].tolist() == pytest.approx(gp.normal_scores(values[3:]).tolist())
    # The best of each level scores alike, however far apart their values are.
    assert scores[1] == pytest.approx(scores[4])


DIGITS_SPACE = parse_space(
    {
        "learning_parameters.learning_rate": {"param_type": "qloguniform", "range": [0.001, 0.3, 0.001]},
        "learning_parameters.batch_size": {"param_type": "qloguniform", "range": [16, 128, 16]},
    }
)
# The first 25 trials of a real `hpo run` of examples/demo (seed 1, 2 workers): batch size, learning
# rate, validation accuracy after each epoch (rungs at 1 and 2 epochs, R = 4).
DIGITS_TRIALS: list[tuple[int, float, tuple[float, ...]]] = [
    (48, 0.017, (0.2830, 0.9066, 0.9753, 0.9753)),
    (112, 0.053, (0.1016, 0.0989, 0.4753, 0.9341)),
    (16, 0.01, (0.8626, 0.9670, 0.9808, 0.9780)),
    (80, 0.201, (0.3626, 0.6951)),
    (64, 0.046, (0.0989,)),
    (16, 0.006, (0.7940, 0.9615, 0.9698, 0.9780)),
    (16, 0.002, (0.6319, 0.7418)),
    (16, 0.017, (0.9148, 0.9670, 0.9780, 0.9780)),
    (16, 0.022, (0.9231, 0.9533, 0.9835, 0.9780)),
    (32, 0.002, (0.1896,)),
    (32, 0.001, (0.1071,)),
    (32, 0.225, (0.5989, 0.8764)),
    (48, 0.001, (0.0989,)),
    (32, 0.297, (0.7692, 0.9176, 0.9725, 0.9808)),
    (64, 0.001, (0.0989,)),
    (32, 0.011, (0.4973, 0.9396, 0.9560, 0.9780)),
    (16, 0.3, (0.8242, 0.9478, 0.9698, 0.9698)),
    (16, 0.298, (0.8654, 0.9533, 0.9780, 0.9780)),
    (64, 0.3, (0.2665,)),
    (64, 0.294, (0.3984,)),
    (128, 0.001, (0.1016,)),
    (64, 0.298, (0.2500,)),
    (96, 0.001, (0.1016,)),
    (64, 0.299, (0.3132,)),
    (112, 0.001, (0.1016,)),
]


def test_gp_does_not_go_back_to_where_trials_were_pruned_at_the_first_rung() -> None:
    tried = [
        Observed(
            {"learning_parameters.batch_size": bs, "learning_parameters.learning_rate": lr},
            tuple(Report(epoch, v, i + epoch / 10) for epoch, v in enumerate(values, start=1)),
            i,
        )
        for i, (bs, lr, values) in enumerate(DIGITS_TRIALS)
    ]
    units = np.array([[p.to_unit(t.params[p.name]) for p in DIGITS_SPACE.params] for t in tried])
    s = Sampler(DIGITS_SPACE, "gp", 1, "max")
    model_made = 0
    for i in range(len(tried), len(tried) + 12):
        if s._rng(i).random() < sampler_module.RANDOM_FRACTION:
            continue  # a random proposal may land anywhere
        model_made += 1
        proposal = s.propose(i, tried, (1, 2), 4)
        u = np.array([p.to_unit(proposal[p.name]) for p in DIGITS_SPACE.params])
        nearest = tried[int(np.argmin(np.linalg.norm(units - u, axis=1)))]
        # Under expected improvement at full fidelity, these went to (64, ~0.3) and (80-128, 0.001),
        # next to trials that were each pruned at the first rung.
        assert len(nearest.reports) > 1, (proposal, nearest.params)
    assert model_made >= 8
