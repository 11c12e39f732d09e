"""The five parameter types: grid membership, bounds, distributions, and every validation error."""

from __future__ import annotations

import datetime
import json
import math
import random
from collections import Counter
from typing import Any

import pytest

from hpo_operator.space import Param, SearchSpace, SpaceError, parse_space, quote

N = 20_000


def one(spec: dict[str, Any], name: str = "p") -> Param:
    return parse_space({name: spec}).params[0]


def draws(param: Param, n: int = N, seed: int = 1) -> list[Any]:
    rng = random.Random(seed)
    return [param.sample(rng) for _ in range(n)]


def test_uniform_is_uniform_in_bounds() -> None:
    p = one({"param_type": "uniform", "range": [2.0, 6.0]})
    xs = draws(p)
    assert all(2.0 <= x <= 6.0 for x in xs)
    # Each quarter of the range holds a quarter of the draws (binomial sd ~0.3%).
    quarters = Counter(min(int((x - 2.0) / 1.0), 3) for x in xs)
    assert all(abs(quarters[q] / N - 0.25) < 0.02 for q in range(4))


def test_quniform_is_uniform_over_the_grid_without_float_noise() -> None:
    p = one({"param_type": "quniform", "range": [0.001, 0.01, 0.001]})
    xs = draws(p)
    expected = {0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008, 0.009, 0.01}
    assert set(xs) == expected  # exact decimal values, endpoints included
    counts = Counter(xs)
    assert all(abs(c / N - 0.1) < 0.015 for c in counts.values())


def test_quantised_values_start_on_the_grid_from_min() -> None:
    p = one({"param_type": "quniform", "range": [0.0007, 0.0015, 0.0001]})
    assert p.grid_value(3) == 0.001  # 0.0007 + 3*0.0001, not 0.0010000000000000002
    assert sorted(set(draws(p, 2000))) == [
        0.0007,
        0.0008,
        0.0009,
        0.001,
        0.0011,
        0.0012,
        0.0013,
        0.0014,
        0.0015,
    ]


def test_quniform_grid_stops_inside_max() -> None:
    p = one({"param_type": "quniform", "range": [0, 10, 3]})
    assert sorted(set(draws(p, 2000))) == [0, 3, 6, 9]


def test_integer_bounds_and_step_give_ints() -> None:
    p = one({"param_type": "qloguniform", "range": [32, 128, 2]})
    xs = draws(p)
    assert all(type(x) is int and x % 2 == 0 and 32 <= x <= 128 for x in xs)
    assert min(xs) == 32 and max(xs) == 128


def test_float_step_gives_floats() -> None:
    p = one({"param_type": "quniform", "range": [1, 5, 0.5]})
    assert all(type(x) is float for x in draws(p, 100))


@pytest.mark.parametrize("ptype", ["loguniform", "qloguniform"])
def test_log_types_are_uniform_in_log_space(ptype: str) -> None:
    spec_range: list[float] = [1e-4, 1e-1] if ptype == "loguniform" else [1e-4, 1e-1, 1e-5]
    p = one({"param_type": ptype, "range": spec_range})
    xs = draws(p)
    assert all(1e-4 <= x <= 1e-1 for x in xs)
    # Each decade holds a third of the draws; a linear sampler would put ~90% in the last one.
    decades = Counter(min(int(math.log10(x / 1e-4)), 2) for x in xs)
    assert all(abs(decades[d] / N - 1 / 3) < 0.03 for d in range(3)), decades


def test_log_base_does_not_change_the_distribution() -> None:
    a = one({"param_type": "loguniform", "range": [1.0, 100.0, 2]})
    b = one({"param_type": "loguniform", "range": [1.0, 100.0]})
    assert draws(a, 50) == draws(b, 50)


def test_qloguniform_values_lie_on_the_grid() -> None:
    p = one({"param_type": "qloguniform", "range": [0.0007, 0.07, 0.0001]})
    for x in draws(p, 5000):
        assert p.contains(x)
        assert repr(x) == repr(round(x, 4))  # no float noise


def test_choice_draws_each_value_equally_and_keeps_types() -> None:
    p = one({"param_type": "choice", "range": ["adam", 3, True, None, {"a": 1}]})
    counts = Counter(repr(x) for x in draws(p))
    assert set(counts) == {"'adam'", "3", "True", "None", "{'a': 1}"}
    assert all(abs(c / N - 0.2) < 0.02 for c in counts.values())


def test_sampling_is_seeded() -> None:
    space = parse_space(
        {"a": {"param_type": "uniform", "range": [0, 1]}, "b": {"param_type": "choice", "range": [1, 2]}}
    )
    assert space.sample(random.Random(7)) == space.sample(random.Random(7))
    assert space.sample(random.Random(7)) != space.sample(random.Random(8))


def test_initial_is_the_default_or_the_middle() -> None:
    space = parse_space(
        {
            "lr": {"param_type": "qloguniform", "range": [0.0007, 0.07, 0.0001]},
            "bs": {"param_type": "qloguniform", "range": [32, 128, 2]},
            "u": {"param_type": "uniform", "range": [0, 1]},
            "q": {"param_type": "quniform", "range": [0, 10, 4]},
            "c": {"param_type": "choice", "range": ["x", "y"]},
            "d": {"param_type": "uniform", "range": [0, 1], "default": 0.25},
        }
    )
    assert space.initial() == {"lr": 0.007, "bs": 64, "u": 0.5, "q": 4, "c": "x", "d": 0.25}


def test_dotted_names_are_kept() -> None:
    space = parse_space({"learning_parameters.learning_rate": {"param_type": "uniform", "range": [0, 1]}})
    assert space.names() == ["learning_parameters.learning_rate"]
    assert isinstance(space, SearchSpace)


BAD = [
    ({"param_type": "normal", "range": [0, 1]}, "unknown param_type 'normal'"),
    ({"range": [0, 1]}, "param_type is missing"),
    ({"param_type": "uniform", "range": [0, 1, 2]}, "uniform range needs 2 values, got 3"),
    ({"param_type": "quniform", "range": [0, 1]}, "quniform range needs 3 values, got 2"),
    ({"param_type": "loguniform", "range": [1]}, "loguniform range needs 2 or 3 values, got 1"),
    ({"param_type": "qloguniform", "range": [1, 2, 0.1, 10, 3]}, "qloguniform range needs 3 or 4 values"),
    ({"param_type": "uniform", "range": [1, 1]}, "min (1) must be smaller than max (1)"),
    ({"param_type": "uniform", "range": [2, 1]}, "min (2) must be smaller than max (1)"),
    ({"param_type": "quniform", "range": [0, 1, 0]}, "step (0) must be positive"),
    ({"param_type": "quniform", "range": [0, 1, -0.1]}, "step (-0.1) must be positive"),
    ({"param_type": "quniform", "range": [0, 1, 2]}, "step (2) is larger than max - min"),
    ({"param_type": "loguniform", "range": [0, 1]}, "loguniform bounds must be positive"),
    ({"param_type": "qloguniform", "range": [-1, 1, 0.5]}, "qloguniform bounds must be positive"),
    ({"param_type": "loguniform", "range": [1, 10, 1]}, "log_base (1) must be greater than 1"),
    ({"param_type": "qloguniform", "range": [1, 10, 1, 0.5]}, "log_base (0.5) must be greater than 1"),
    ({"param_type": "choice", "range": []}, "choice needs at least one value"),
    ({"param_type": "uniform", "range": "0..1"}, "range must be a list"),
    ({"param_type": "uniform", "range": [0, "one"]}, "range values must be finite numbers"),
    ({"param_type": "uniform", "range": [0, float("inf")]}, "range values must be finite numbers"),
    ({"param_type": "uniform", "range": [0, True]}, "range values must be finite numbers"),
    ({"param_type": "uniform", "range": [0, 1], "scale": 2}, "unknown key 'scale'"),
    ({"param_type": "quniform", "range": [0, 1, 0.5], "default": 0.3}, "default 0.3 is not a value of"),
    ({"param_type": "choice", "range": [1, 2], "default": 3}, "default 3 is not a value of"),
    ("uniform", "must be a mapping"),
]


@pytest.mark.parametrize(("spec", "message"), BAD, ids=[m for _, m in BAD])
def test_each_bad_parameter_gets_an_error_naming_it(spec: Any, message: str) -> None:
    with pytest.raises(SpaceError) as err:
        parse_space({"learning_rate": spec})
    assert len(err.value.problems) >= 1
    assert err.value.problems[0].startswith("hp_space.learning_rate: ")
    assert message in err.value.problems[0]


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(SpaceError) as err:
        parse_space(
            {
                "a": {"param_type": "loguniform", "range": [0, 1, 1]},
                "b": {"param_type": "choice", "range": []},
                "c": {"param_type": "uniform", "range": [0, 1]},
            }
        )
    problems = err.value.problems
    assert len(problems) == 3
    assert sum(p.startswith("hp_space.a:") for p in problems) == 2
    assert any(p.startswith("hp_space.b:") for p in problems)


@pytest.mark.parametrize("raw", [{}, None, [1, 2], "x"])
def test_an_empty_or_malformed_space_is_an_error(raw: Any) -> None:
    with pytest.raises(SpaceError, match="hp_space: must be a non-empty mapping"):
        parse_space(raw)


def test_empty_parameter_names_are_rejected() -> None:
    with pytest.raises(SpaceError, match="non-empty strings"):
        parse_space({" ": {"param_type": "uniform", "range": [0, 1]}})


# --- limits: every accepted space samples finite JSON values ---------------------------------------

LIMITS = [
    ({"param_type": "uniform", "range": [-1e308, 1e308]}, "-1e+308 exceeds 1e+15 in magnitude"),
    ({"param_type": "uniform", "range": [0, 10**400]}, "exceeds 1e+15 in magnitude"),
    ({"param_type": "uniform", "range": [0, 10**16]}, "10000000000000000 exceeds 1e+15"),
    ({"param_type": "loguniform", "range": [1e-300, 1.7976931348623157e308]}, "exceeds 1e+15"),
    ({"param_type": "quniform", "range": [0, 1e300, 1e-300]}, "1e+300 exceeds 1e+15"),
    ({"param_type": "quniform", "range": [0, 1000000, 1e-9]}, "step (1e-09) is too fine for bounds"),
    ({"param_type": "qloguniform", "range": [1e-9, 1e6, 1e-9]}, "use a step of at least 1e-06"),
    ({"param_type": "uniform", "range": [0, "1e-4"]}, "write 1.0e-4, not 1e-4"),
    ({"param_type": "uniform", "range": [0, 1], "default": 10**5000}, "is not a value of uniform [0, 1]"),
    ({"param_type": "choice", "range": [float("nan"), 1]}, "value 0: nan is not finite"),
    ({"param_type": "choice", "range": [1, float("inf")]}, "value 1: inf is not finite"),
    ({"param_type": "choice", "range": [datetime.date(2020, 1, 1)]}, "(date) is not a JSON value"),
    ({"param_type": "choice", "range": [b"\x00"]}, "(bytes) is not a JSON value"),
    ({"param_type": "choice", "range": [(1, 2)]}, "(tuple) is not a JSON value"),
    ({"param_type": "choice", "range": [{1: "a"}]}, "a mapping key is not a string: 1"),
    ({"param_type": "choice", "range": [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]}, "nested more than 16"),
    ({"param_type": "choice", "range": list(range(10_001))}, "choice has 10,001 values, at most 10,000"),
    ({"param_type": "choice", "range": ["x" * 70_000]}, "at most 65,536"),
    ({"param_type": "uniform", "paramType": "uniform", "range": [0, 1]}, "param_type or paramType, not both"),
]


@pytest.mark.parametrize(("spec", "message"), LIMITS, ids=[m for _, m in LIMITS])
def test_values_beyond_the_limits_are_refused_naming_the_parameter(
    spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(SpaceError) as err:
        parse_space({"learning_rate": spec})
    assert len(err.value.problems) == 1, err.value.problems
    assert err.value.problems[0].startswith(("hp_space.learning_rate: ", "hp_space: "))
    assert message in err.value.problems[0]
    assert len(err.value.problems[0]) < 400


def test_the_largest_bounds_and_the_finest_grid_still_sample_on_the_grid() -> None:
    space = parse_space(
        {
            "wide": {"param_type": "quniform", "range": [-(10**15), 10**15, 2000]},
            "fine": {"param_type": "quniform", "range": [0.0, 1e15, 1000.0]},
            "big": {"param_type": "qloguniform", "range": [1.125, 70368744177677.0, 71.0]},
            "tiny": {"param_type": "loguniform", "range": [5e-324, 1e-300]},
            "span": {"param_type": "uniform", "range": [-1e15, 1e15]},
        }
    )
    assert space.params[0].grid_size == 10**12 + 1
    rng = random.Random(3)
    configs = [space.initial(), *(space.sample(rng) for _ in range(300))]
    configs += [space.from_unit([u] * len(space)) for u in (0.0, 0.5, math.nextafter(1.0, 0.0))]
    for config in configs:
        json.dumps(config, allow_nan=False)
        for p in space.params:
            assert p.contains(config[p.name]), (p.name, config[p.name])
    # The geometric middle of subnormal bounds: their product underflows to 0.
    assert 5e-324 <= space.initial()["tiny"] <= 1e-300


def test_parameters_beyond_the_limit_are_refused_at_once() -> None:
    with pytest.raises(SpaceError, match=r"hp_space: 1,001 parameters, at most 1,000"):
        parse_space({f"p{i}": None for i in range(1001)})
    assert (
        len(parse_space({f"p{i}": {"param_type": "uniform", "range": [0, 1]} for i in range(1000)})) == 1000
    )


def test_messages_quote_values_briefly() -> None:
    assert len(quote("x" * 10**6)) < 80
    assert len(quote(list(range(10**5)))) < 80
    assert "digits" in quote(10**5000)  # repr() would raise: more than 4,300 digits
    with pytest.raises(SpaceError) as err:
        parse_space({"n" * 10_000: {"param_type": "normal" * 10_000, "range": [0, 1]}})
    assert len(err.value.problems[0]) < 300


def test_choice_values_are_walked_within_a_bound() -> None:
    """A value that holds itself, or one list many times over (10^13 parts once expanded), ends
    the walk with a message instead of running on."""
    itself: list[Any] = []
    itself.append(itself)
    wide: list[Any] = [1] * 10
    for _ in range(12):
        wide = [wide] * 10
    for value, message in ((itself, "nested more than 16 levels deep"), (wide, "more than 100,000 values")):
        with pytest.raises(SpaceError) as err:
            parse_space({"c": {"param_type": "choice", "range": [value]}})
        assert message in err.value.problems[0]
