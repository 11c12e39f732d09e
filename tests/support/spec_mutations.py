"""Broken HPOStudy specs: mutations that break one field of a valid spec, and a seeded generator of them.

tests/unit/test_bad_input_specs.py draws them with Hypothesis; the e2e tests apply a seeded handful to
the cluster (``broken_specs``).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Iterator
from typing import Any

JSON = dict[str, Any]
Mutation = Callable[[JSON, random.Random], str]  # breaks the spec in place; returns the field's path

VALID: JSON = {
    "metric": "accuracy",
    "mode": "max",
    "hpSpace": {
        "lr": {"paramType": "loguniform", "range": [0.0001, 0.1]},
        "bs": {"paramType": "quniform", "range": [16, 64, 2]},
        "opt": {"paramType": "choice", "range": ["sgd", "adam"]},
    },
    "minimumResource": 1,
    "maximumResource": 9,
    "budget": {"deadline": "30s"},
    "trialTemplate": {"spec": {"containers": [{"name": "t", "command": ["python"]}]}},
}

WRONG_TYPES: list[Any] = [[1, 2], {"a": 1}, "ten", "", "∞", True, None]
UNICODE = ["é", "名前", "🙂", "ℵ0", "\u200b"]


def _param(spec: JSON, rng: random.Random) -> str:
    if not isinstance(spec.get("hpSpace"), dict) or "lr" not in spec["hpSpace"]:
        spec["hpSpace"] = copy.deepcopy(VALID["hpSpace"])  # an earlier mutation took it away
    names: list[str] = sorted(spec["hpSpace"])
    return rng.choice(names)


def wrong_type_number(spec: JSON, rng: random.Random) -> str:
    key = rng.choice(["maximumResource", "minimumResource", "reductionFactor", "seed", "gpusPerTrial"])
    spec[key] = rng.choice([v for v in WRONG_TYPES if v is not None or key in ("seed", "gpusPerTrial")])
    return f"spec.{key}"


def out_of_range_number(spec: JSON, rng: random.Random) -> str:
    key, bad = rng.choice([
        ("maximumResource", rng.choice([0, -1, -(10**9), -0.5])),
        ("minimumResource", rng.choice([0, -3])),
        ("reductionFactor", rng.choice([1, 0, -2])),
        ("gpusPerTrial", rng.choice([-1, -(10**6)])),
        ("maxFailedTrials", rng.choice([0, -1])),
        ("parallelTrials", rng.choice([0, -4])),
    ])  # fmt: skip
    spec[key] = bad
    return f"spec.{key}"


def minimum_above_maximum(spec: JSON, rng: random.Random) -> str:
    if not isinstance(spec.get("maximumResource"), int) or spec["maximumResource"] < 1:
        spec["maximumResource"] = 9  # an earlier mutation broke it
    spec["minimumResource"] = spec["maximumResource"] + rng.randint(1, 10**6)
    return "spec.minimumResource"


def bad_mode(spec: JSON, rng: random.Random) -> str:
    spec["mode"] = rng.choice(["MAX", "maximize", "", *UNICODE])
    return "spec.mode"


def bad_duration(spec: JSON, rng: random.Random) -> str:
    key = rng.choice(["deadline", "trainTime"])
    spec["budget"] = {key: rng.choice(["soon", "0s", "-5m", "1e400", "10 parsecs", "", *UNICODE])}
    return f"spec.budget.{key}"


def unknown_key(spec: JSON, rng: random.Random) -> str:
    key = rng.choice(["maxResource", "hp_space", "parallel", *UNICODE])
    spec[key] = 1
    return key


def missing_field(spec: JSON, rng: random.Random) -> str:
    key = rng.choice(["hpSpace", "trialTemplate"])
    spec.pop(key, None)
    return f"spec.{key}"


def empty_space(spec: JSON, rng: random.Random) -> str:
    spec["hpSpace"] = {}
    return "spec.hpSpace"


def empty_or_odd_name(spec: JSON, rng: random.Random) -> str:
    spec["hpSpace"] = {rng.choice(["", " "]): {"paramType": "uniform", "range": [0, 1]}}
    return "spec.hpSpace"


def bad_range(spec: JSON, rng: random.Random) -> str:
    name = _param(spec, rng)
    kind = spec["hpSpace"][name]["paramType"]
    ranges: dict[str, list[list[Any]]] = {
        "loguniform": [[0, 0.1], [-1, 1], [0.1, 0.001], [0.1], [0.001, 0.1, 1]],
        "quniform": [[64, 16, 2], [16, 64, 0], [16, 64, -2], [16, 64, 1000], [16], []],
        "choice": [[]],
    }
    spec["hpSpace"][name]["range"] = rng.choice(ranges.get(kind, [[]]))
    return f"spec.hpSpace.{name}"


def bad_param_type(spec: JSON, rng: random.Random) -> str:
    name = _param(spec, rng)
    spec["hpSpace"][name]["paramType"] = rng.choice(["normal", "Uniform", "", *UNICODE])
    return f"spec.hpSpace.{name}"


def bad_default(spec: JSON, rng: random.Random) -> str:
    _param(spec, rng)
    spec["hpSpace"]["lr"]["default"] = rng.choice([5, -1, "fast", 1e9])
    return "spec.hpSpace.lr"


def hostile_range(spec: JSON, rng: random.Random) -> str:
    """Numbers JSON cannot carry, or whose arithmetic overflows or whose grid is not representable."""
    spec["hpSpace"] = (
        copy.deepcopy(VALID["hpSpace"]) if not isinstance(spec.get("hpSpace"), dict) else spec["hpSpace"]
    )
    name = rng.choice(["u", "q", "c"])
    spec["hpSpace"][name] = rng.choice([
        {"paramType": "uniform", "range": [-1e308, 1e308]},
        {"paramType": "uniform", "range": [0, float("nan")]},
        {"paramType": "quniform", "range": [0, 1e300, 1e-300]},
        {"paramType": "quniform", "range": [0, 10**400, 1]},
        {"paramType": "loguniform", "range": [1e-300, 1.7976931348623157e308]},
        {"paramType": "choice", "range": [float("inf"), 1]},
        {"paramType": "choice", "range": list(range(20_000))},
    ])  # fmt: skip
    return f"spec.hpSpace.{name}"


def hostile_resource(spec: JSON, rng: random.Random) -> str:
    key, value = rng.choice([
        ("minimumResource", 1e-300), ("maximumResource", 1e300), ("reductionFactor", 10**30),
        ("seed", 10**5000), ("parallelTrials", 10**6),
    ])  # fmt: skip
    spec[key] = value
    return f"spec.{key}"


def bad_stop_condition(spec: JSON, rng: random.Random) -> str:
    """A goal that is not a finite number, a goal resource beyond R or without a goal, a trial limit
    below 1 or beyond int64."""
    if not isinstance(spec.get("maximumResource"), int) or spec["maximumResource"] < 1:
        spec["maximumResource"] = 9  # an earlier mutation broke it
    key, bad = rng.choice([
        ("goal", float("nan")), ("goal", float("inf")), ("goal", "high"), ("goal", True),
        ("goalResource", 0), ("goalResource", -1), ("goalResource", spec["maximumResource"] + 1),
        ("maxTrials", 0), ("maxTrials", -3), ("maxTrials", 2.5), ("maxTrials", 10**30),
    ])  # fmt: skip
    spec[key] = bad
    if key == "goalResource" and rng.random() < 0.5:
        spec["goal"] = 0.9
    return f"spec.{key}"


MUTATIONS: list[Mutation] = [
    wrong_type_number, out_of_range_number, minimum_above_maximum, bad_mode, bad_duration, unknown_key,
    missing_field, empty_space, empty_or_odd_name, bad_range, bad_param_type, bad_default, hostile_range,
    hostile_resource, bad_stop_condition,
]  # fmt: skip
# The mutations the CRD's schema lets through (well-typed): the operator itself must refuse them.
SCHEMA_VALID: list[Mutation] = [
    minimum_above_maximum,
    bad_duration,
    empty_or_odd_name,
    bad_range,
    bad_default,
]


def broken(valid: JSON, mutation: Mutation, rng: random.Random) -> tuple[JSON, str]:
    spec = copy.deepcopy(valid)
    field = mutation(spec, rng)
    return spec, field


def broken_specs(valid: JSON, seed: int, count: int) -> Iterator[JSON]:
    """``count`` broken copies of ``valid``, from a seeded generator: mostly well-typed breakage that
    only the operator can refuse, and some that the API server's schema refuses first."""
    rng = random.Random(seed)
    for i in range(count):
        mutation = rng.choice(SCHEMA_VALID if i % 4 else MUTATIONS)
        yield broken(valid, mutation, rng)[0]
