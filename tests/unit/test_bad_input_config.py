"""Broken hpo_config.yaml files, generated: a ConfigError naming the key, and `hpo validate` exits 2
with the problems listed and no traceback."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpo_operator.cli import main
from hpo_operator.config import ConfigError, config_from_mapping

JSON = dict[str, Any]

VALID: JSON = {
    "metric": "mAP",
    "mode": "max",
    "search_algorithm": "asha",
    "maximum_resource": 10,
    "minimum_resource": 1,
    "reduction_factor": 3,
    "hp_space": {
        "learning_parameters.learning_rate": {"param_type": "qloguniform", "range": [0.0007, 0.07, 0.0001]},
        "learning_parameters.batch_size": {"param_type": "quniform", "range": [32, 128, 2]},
    },
}

UNICODE = st.text(alphabet=st.characters(min_codepoint=0x80, max_codepoint=0x2FFF), min_size=1, max_size=6)
NAME = UNICODE.filter(str.strip)  # a blank name ('\x85', NEL, is blank) gets its own problem
NOT_A_NUMBER = st.one_of(
    st.text(min_size=1, max_size=6).filter(lambda t: not t.strip().lstrip("-").replace(".", "").isdigit()),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), min_size=1, max_size=2),
    st.booleans(),
)
NON_POSITIVE = st.one_of(st.integers(max_value=0), st.floats(max_value=0, allow_nan=False))
NON_FINITE = st.sampled_from([float("inf"), float("-inf"), float("nan")])


def dump_key(key: str) -> str:
    return yaml.safe_dump({key: 0}, allow_unicode=True)


@st.composite
def broken_configs(draw: st.DrawFn) -> tuple[JSON, str]:
    """(a broken hpo_config mapping, the key its error must name)."""
    data = copy.deepcopy(VALID)
    kind = draw(st.integers(0, 12))
    if kind == 0:
        key = draw(st.sampled_from(["maximum_resource", "minimum_resource", "reduction_factor", "seed"]))
        data[key] = draw(NOT_A_NUMBER)
    elif kind == 1:
        key = draw(st.sampled_from(["maximum_resource", "minimum_resource"]))
        data[key] = draw(st.one_of(NON_POSITIVE, NON_FINITE))
    elif kind == 2:
        key = "reduction_factor"
        data[key] = draw(st.integers(max_value=1))
    elif kind == 3:
        key = "minimum_resource"
        data[key] = draw(st.integers(11, 10**12))  # above maximum_resource, 10
    elif kind == 4:
        key = draw(st.sampled_from(["mode", "search_algorithm"]))
        data[key] = draw(st.one_of(UNICODE, st.sampled_from(["MAX", "", "hyperband"]), st.integers()))
    elif kind == 5:
        # A key PyYAML writes back unchanged: it dumps a lone NEL ('\x85') as a quoted line break,
        # which reads back as a space.
        key = draw(UNICODE.filter(lambda k: k not in VALID and yaml.safe_load(dump_key(k)) == {k: 0}))
        data[key] = draw(st.integers())
    elif kind == 6:
        key = "hp_space"
        data.pop("hp_space")
    elif kind == 7:
        key = "hp_space"
        data["hp_space"] = draw(
            st.one_of(st.just({}), st.none(), st.lists(st.integers(), max_size=2), UNICODE)
        )
    elif kind == 8:
        key = "hp_space"
        name = draw(st.sampled_from(["", " ", "\t"]))
        data["hp_space"] = {name: {"param_type": "uniform", "range": [0, 1]}}
    elif kind == 9:
        name = draw(NAME)
        key = f"hp_space.{name}"
        data["hp_space"] = {
            name: {"param_type": draw(st.sampled_from(["normal", "", "Uniform"])), "range": [0, 1]}
        }
    elif kind == 10:
        name = draw(NAME)
        key = f"hp_space.{name}"
        bad = draw(
            st.sampled_from([
                ("uniform", [1, 0]), ("uniform", [0]), ("uniform", [0, float("inf")]), ("loguniform", [0, 1]),
                ("loguniform", [-1, 1]), ("quniform", [0, 10, 0]), ("quniform", [0, 10, 20]),
                ("qloguniform", [0.1, 1, -0.1]), ("loguniform", [0.1, 1, 1]), ("choice", []),
                ("uniform", [-1e308, float("nan")]), ("quniform", [0, 1e308, -1]),
                ("uniform", [-1e308, 1e308]), ("quniform", [0, 1e300, 1e-300]), ("choice", [float("nan"), 1]),
                ("quniform", [0, 1000000, 1e-9]), ("choice", [b"binary"]),
            ])
        )  # fmt: skip
        data["hp_space"] = {name: {"param_type": bad[0], "range": bad[1]}}
    elif kind == 12:
        key, value = draw(
            st.sampled_from([
                ("goal", float("nan")), ("goal", float("-inf")), ("goal", "high"), ("goal_resource", 0),
                ("goal_resource", 11), ("max_trials", 0), ("num_trials", -1), ("max_trials", 1.5),
            ])
        )  # fmt: skip
        data[key] = value
        if key == "goal_resource" and draw(st.booleans()):
            data["goal"] = 0.9
    else:
        name = draw(NAME)
        key = f"hp_space.{name}"
        data["hp_space"] = {
            name: draw(st.one_of(st.none(), st.integers(), st.lists(st.integers(), max_size=2)))
        }
    return data, key


@settings(max_examples=400, deadline=None)
@given(broken_configs())
def test_every_broken_config_is_refused_naming_its_key(case: tuple[JSON, str]) -> None:
    data, key = case
    try:
        config_from_mapping(data)
    except ConfigError as err:
        assert any(key in p for p in err.problems), (key, err.problems)
        return
    raise AssertionError(f"accepted: {data}")


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.none(), st.integers(), st.text(max_size=10), st.lists(st.integers(), max_size=3)))
def test_a_file_that_is_not_a_mapping_is_refused(data: Any) -> None:
    try:
        config_from_mapping(data)
    except ConfigError as err:
        assert err.problems == [f"must be a mapping of keys, got {type(data).__name__}"]
        return
    raise AssertionError(f"accepted: {data!r}")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=broken_configs())
def test_hpo_validate_exits_2_with_the_problem_and_no_traceback(
    case: tuple[JSON, str], tmp_path: Path
) -> None:
    data, key = case
    path = tmp_path / "hpo_config.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2, (result.output, result.exception)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert key.split(".")[0] in result.output, result.output


def test_a_key_given_twice_in_the_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "hpo_config.yaml"
    path.write_text(
        "hp_space:\n"
        "  lr: {param_type: uniform, range: [0, 1]}\n"
        "  lr: {param_type: loguniform, range: [0.001, 0.1]}\n"
    )
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2 and "duplicate key 'lr'" in result.output and "line 3" in result.output
