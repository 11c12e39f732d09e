"""Hostile inputs: validation is the one gate, and whatever passes it runs.

Generated configs and specs (hostile numbers, types, nesting) either raise ConfigError with a short
message, or give a config whose every sampled value is JSON (no NaN, no infinity) and a value of
its space, and whose plan and (for specs) first reconcile run. A corpus of hostile files goes
through the real command line in tests/integration/test_fuzz_inputs_cli.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpo_operator.budget import BudgetTooSmall, make_plan
from hpo_operator.config import (
    MAX_PROBLEM_CHARS,
    MAX_PROBLEMS,
    ConfigError,
    StudyConfig,
    config_from_mapping,
    load_config,
    study_config_from_spec,
)
from hpo_operator.kube.reconcile import reconcile
from hpo_operator.kube.writes import World
from hpo_operator.sampler import SAMPLERS, Sampler

JSON = dict[str, Any]

# --- generated inputs ----------------------------------------------------------------------------


def one_in(draw: st.DrawFn, n: int) -> bool:
    """True about once in ``n`` draws. Hypothesis leans to the ends of a range and to small values,
    so the rare case is a stretch in the middle of the range."""
    return 500 <= draw(st.integers(0, 999)) < 500 + 1000 // n


# Numbers at and beyond the edges of the limits, and numbers inside them (near their edges too).
HOSTILE_NUMBERS = st.one_of(
    st.sampled_from([
        1e300, -1e308, 1e308, 1.7976931348623157e308, 2**53, 10**15 + 1, 1e16, 10**19, 10**400,
        float("nan"), float("inf"), float("-inf"),
    ]),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True),
)  # fmt: skip
GOOD_NUMBERS = st.one_of(
    st.integers(-100, 100),
    st.floats(min_value=-10, max_value=10),
    st.sampled_from([0, -0.0, 5e-324, 1e-300, 2.2250738585072014e-308, 1e-15, 1e-12, 1e15, -1e15, 10**15]),
    st.floats(min_value=-1e15, max_value=1e15, allow_subnormal=True),
)
OTHER = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=8),
    st.sampled_from(["1e-4", "1.0e-4", ".nan", "0x10", "2020-01-01"]),
    st.binary(max_size=4),
    st.dates(),
    st.datetimes(),
    st.just((1, 2)),
    st.just({1, 2}),
)


@st.composite
def numbers(draw: st.DrawFn) -> Any:
    return draw(HOSTILE_NUMBERS if one_in(draw, 10) else GOOD_NUMBERS)


@st.composite
def leaves(draw: st.DrawFn) -> Any:
    if one_in(draw, 10):
        return draw(st.one_of(HOSTILE_NUMBERS, OTHER))
    return draw(st.one_of(GOOD_NUMBERS, st.text(max_size=8), st.booleans(), st.none()))


@st.composite
def keys(draw: st.DrawFn) -> Any:
    return (
        draw(st.one_of(st.integers(0, 3), st.dates(), st.none()))
        if one_in(draw, 10)
        else draw(st.text(max_size=3))
    )


VALUE = st.recursive(
    leaves(),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys(), inner, max_size=3)),
    max_leaves=8,
)
RANGE_LENGTHS = {"uniform": (2, 2), "quniform": (3, 3), "loguniform": (2, 3), "qloguniform": (3, 4)}


@st.composite
def parameters(draw: st.DrawFn, type_key: str) -> JSON:
    """Mostly well-formed parameters whose numbers and values are hostile; sometimes malformed ones."""
    ptype = draw(st.sampled_from(["uniform", "quniform", "loguniform", "qloguniform", "choice"]))
    spec: JSON = {type_key: draw(OTHER) if one_in(draw, 8) else ptype}
    if one_in(draw, 8):
        spec["range"] = draw(st.one_of(leaves(), st.lists(VALUE, max_size=5)))
    elif ptype == "choice":
        spec["range"] = draw(st.lists(VALUE, min_size=1, max_size=4))
    else:
        low, high = RANGE_LENGTHS[ptype]
        values = draw(st.lists(numbers(), min_size=low, max_size=high))
        if not one_in(draw, 4) and not any(isinstance(v, float) and math.isnan(v) for v in values[:2]):
            values[:2] = sorted(values[:2])
        spec["range"] = values
    if one_in(draw, 3):
        own = spec["range"] if isinstance(spec["range"], list) and spec["range"] else [0]
        spec["default"] = draw(st.one_of(st.sampled_from(own), numbers(), VALUE))
    return spec


@st.composite
def spaces(draw: st.DrawFn, type_key: str) -> Any:
    if one_in(draw, 8):  # not a mapping of good names
        names = st.one_of(st.text(max_size=6), st.sampled_from(["", " ", "x" * 200]), st.integers())
        return draw(st.one_of(st.dictionaries(names, parameters(type_key), max_size=3), VALUE))
    return draw(
        st.dictionaries(
            st.text("abcxyz_.", min_size=1, max_size=6), parameters(type_key), min_size=1, max_size=3
        )
    )


HOSTILE_SETTING = st.one_of(HOSTILE_NUMBERS, OTHER, GOOD_NUMBERS, st.text(min_size=200, max_size=300))
# Valid values of the settings, so that a hostile one usually comes alone.
SETTINGS: dict[str, st.SearchStrategy[Any]] = {
    "maximum_resource": st.one_of(st.integers(1, 100), st.floats(0.5, 1e6)),
    "minimum_resource": st.one_of(st.just(1), st.floats(0.001, 1)),
    "reduction_factor": st.integers(2, 100),
    "seed": st.integers(-(2**63) + 1, 2**63 - 1),
    "metric": st.sampled_from(["accuracy", "loss", "mAP"]),
}


def settings_of(draw: st.DrawFn, names: dict[str, str]) -> JSON:
    out: JSON = {}
    for key, name in names.items():
        if one_in(draw, 10):
            out[name] = draw(HOSTILE_SETTING)
        elif one_in(draw, 2):
            out[name] = draw(SETTINGS[key])
    return out


@st.composite
def configs(draw: st.DrawFn) -> JSON:
    return {"hp_space": draw(spaces("param_type")), **settings_of(draw, {k: k for k in SETTINGS})}


SPEC_NAMES = {
    "maximum_resource": "maximumResource",
    "minimum_resource": "minimumResource",
    "reduction_factor": "reductionFactor",
    "seed": "seed",
    "metric": "metric",
}


@st.composite
def specs(draw: st.DrawFn) -> JSON:
    budget: JSON = {"deadline": "30s"}
    if one_in(draw, 8):
        budget = {"timeRatio": draw(HOSTILE_SETTING), "trainTime": draw(st.sampled_from(["10m", "400d"]))}
    elif one_in(draw, 8):
        budget = {"deadline": draw(st.one_of(st.sampled_from(["1e300", "366d", "1h"]), OTHER))}
    spec: JSON = {
        "hpSpace": draw(spaces("paramType")),
        "budget": budget,
        "trialTemplate": {"spec": {"containers": [{"name": "t", "command": ["python"]}]}},
        **settings_of(draw, SPEC_NAMES),
    }
    if one_in(draw, 8):
        spec["trialTemplate"]["spec"]["x"] = draw(VALUE)
    for key in ("gpusPerTrial", "parallelTrials", "maxFailedTrials"):
        if one_in(draw, 8):
            spec[key] = draw(st.one_of(HOSTILE_SETTING, st.integers(0, 20)))
    return spec


def assert_short(err: ConfigError) -> None:
    assert err.problems and len(err.problems) <= MAX_PROBLEMS + 1
    assert all(0 < len(p) <= MAX_PROBLEM_CHARS for p in err.problems)
    assert len(str(err)) <= (MAX_PROBLEMS + 1) * (MAX_PROBLEM_CHARS + 2) + 100


def assert_runs(config: StudyConfig) -> None:
    """Every way a configuration is drawn gives JSON values of the space; the plan can be made."""
    space = config.space
    rng = random.Random(config.seed)
    drawn = [space.initial(), *(space.sample(rng) for _ in range(8))]
    drawn += [space.from_unit([u] * len(space)) for u in (0.0, 0.3, 0.5, math.nextafter(1.0, 0.0))]
    for kind in SAMPLERS:
        drawn.append(Sampler(space, kind, config.seed, config.mode).propose(3, [], (1, 3), 9))
    for params in drawn:
        json.dumps(params, allow_nan=False)
        for p in space.params:
            assert p.contains(params[p.name]), (p, params[p.name])
            assert 0.0 <= p.to_unit(params[p.name]) <= 1.0
    with contextlib.suppress(BudgetTooSmall):
        make_plan(
            budget_seconds=3600,
            slots=2,
            epoch_seconds=60 / config.max_resource,
            max_resource=config.max_resource,
            min_resource=config.min_resource,
            eta=config.reduction_factor,
        )


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_a_generated_config_is_refused_or_every_sample_is_json(data: JSON) -> None:
    try:
        config = config_from_mapping(data)
    except ConfigError as err:
        assert_short(err)
        return
    assert_runs(config)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs())
def test_a_generated_spec_is_refused_or_reconciled_into_json(spec: JSON) -> None:
    study = {
        "apiVersion": "hpo.dev/v1alpha1",
        "kind": "HPOStudy",
        "metadata": {"name": "s", "namespace": "n", "uid": "u", "generation": 1},
        "spec": spec,
    }
    try:
        config = study_config_from_spec(spec)
    except ConfigError as err:
        assert_short(err)
        outcome = reconcile(World(study=study), now=1000.0)
        assert outcome.status is not None and outcome.status["phase"] == "Failed"
        return
    assert_runs(config)
    outcome = reconcile(World(study=study), now=1000.0)
    # Every object the operator would write is JSON the API accepts: no NaN, no infinity.
    for write in outcome.writes:
        json.dumps(dataclasses.asdict(write), allow_nan=False)
    json.dumps(outcome.status, allow_nan=False)


@st.composite
def well_formed(draw: st.DrawFn) -> JSON:
    """A numeric parameter of the right shape (sorted bounds, a positive step, positive bounds for the
    log types) with numbers anywhere inside the limits, subnormal and 1e15 included."""
    ptype = draw(st.sampled_from(["uniform", "quniform", "loguniform", "qloguniform"]))
    log = ptype.endswith("loguniform")
    bound = st.floats(min_value=5e-324, max_value=1e15) if log else GOOD_NUMBERS
    low, high = sorted([draw(bound), draw(bound)])
    values: list[Any] = [low, high]
    if ptype in ("quniform", "qloguniform"):
        span = float(high) - float(low)
        values.append(draw(st.one_of(st.floats(min_value=5e-324, max_value=max(span, 5e-324)), GOOD_NUMBERS)))
    if log and draw(st.booleans()):
        values.append(draw(st.one_of(st.just(10), st.floats(min_value=1.0, max_value=1e15))))
    spec: JSON = {"param_type": ptype, "range": values}
    if draw(st.booleans()):
        spec["default"] = draw(st.one_of(st.sampled_from(values[:2]), bound))
    return spec


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(well_formed(), min_size=1, max_size=3))
def test_well_formed_ranges_anywhere_inside_the_limits_run(specs: list[JSON]) -> None:
    try:
        config = config_from_mapping(
            {"maximum_resource": 9, "hp_space": {f"p{i}": spec for i, spec in enumerate(specs)}}
        )
    except ConfigError as err:
        assert_short(err)
        return
    assert_runs(config)


YAML_TOKENS = [
    "hp_space:", "\n", "  ", "x:", "{param_type: uniform, range: [0, 1]}", "{param_type: choice, range: [",
    "]}", "[", "]", "{", "}", ",", "&a", "*a", "*b", "&b", "!!binary aGk=", "!!set", "!!omap", ".nan",
    ".inf", "-.inf", "1.0e+308", "-1.0e+308", "1" * 120, "2020-13-45", "2020-01-01", "<<:", "? ", "- ",
    "'", '"', "\\x00", "#", "---", "~", "true", "!!python/object:os.system", "\t", "\ufeff", "é",
]  # fmt: skip


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(YAML_TOKENS), max_size=40), st.binary(max_size=3))
def test_any_yaml_text_is_refused_or_loaded(tmp_path: Path, tokens: list[str], tail: bytes) -> None:
    path = tmp_path / "hpo_config.yaml"
    path.write_bytes("".join(tokens).encode() + tail)
    try:
        config, _ = load_config(path)
    except ConfigError as err:
        assert_short(err)
        return
    assert_runs(config)


def test_dates_and_binary_are_json_values_nowhere() -> None:
    """The in-process twin of the corpus: each non-JSON value is refused naming its parameter."""
    for value in (datetime.date(2020, 1, 1), b"x", {1, 2}, (1, 2), float("nan"), {1: "a"}):
        with pytest.raises(ConfigError, match=r"hp_space\.p: choice values must be JSON values"):
            config_from_mapping({"hp_space": {"p": {"param_type": "choice", "range": ["ok", value]}}})
