"""hpo_config.yaml and HPOStudy spec loading: the OTX files, every documented default, every error."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpo_operator.config import (
    MAX_PROBLEMS,
    NO_MAX_RESOURCE,
    BudgetSpec,
    ConfigError,
    config_from_mapping,
    format_duration,
    load_config,
    parse_duration,
    study_config_from_spec,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "otx-classification"

FLOW_STYLE = """\
metric: accuracy
search_algorithm: asha
hp_space:
  learning_parameters.learning_rate: {param_type: qloguniform, range: [0.0007, 0.07, 0.0001]}
  learning_parameters.batch_size: {param_type: qloguniform, range: [32, 128, 2]}
"""


def test_the_otx_default_file_loads_in_block_and_flow_style(tmp_path: Path) -> None:
    flow = tmp_path / "flow.yaml"
    flow.write_text(FLOW_STYLE)
    block, raw = load_config(EXAMPLES / "hpo_config.yaml", require_max_resource=False)
    same, _ = load_config(flow, require_max_resource=False)
    assert block == same
    assert raw["search_algorithm"] == "asha"
    assert block.metric == "accuracy"
    assert block.space.names() == ["learning_parameters.learning_rate", "learning_parameters.batch_size"]


def test_the_narrow_variant_loads() -> None:
    config, _ = load_config(EXAMPLES / "hpo_config_narrow.yaml", require_max_resource=False)
    lr = config.space.params[0]
    assert (lr.type, lr.low, lr.high, lr.step) == ("quniform", 0.001, 0.01, 0.001)


def test_documented_defaults() -> None:
    config = config_from_mapping(
        {"hp_space": {"x": {"param_type": "uniform", "range": [0, 1]}}}, require_max_resource=False
    )
    assert config.metric == "mAP"
    assert config.mode == "max"
    assert config.max_resource == NO_MAX_RESOURCE and not config.max_resource_given  # R has no default
    assert config.min_resource is None  # auto: one epoch
    assert config.reduction_factor is None  # auto: 3
    assert config.seed == 0
    assert config.budget == BudgetSpec(time_ratio=4.0, train_time=None, deadline=None)
    assert config.parallel_trials is None
    assert config.max_failed_trials is None
    assert config.sampler == "gp"
    assert config.priors == () and config.ignored == ()


def test_a_file_without_r_is_refused_unless_r_comes_later() -> None:
    data = {"hp_space": {"x": {"param_type": "uniform", "range": [0, 1]}}}
    with pytest.raises(ConfigError) as err:
        config_from_mapping(data, "f.yaml")
    assert err.value.problems == [
        "R, the epochs (or steps) of one full training, is not set: give --max-resource R, or "
        "maximum_resource: R in the config"
    ]
    assert config_from_mapping({**data, "maximum_resource": 12}).max_resource == 12


def test_all_problems_of_a_file_are_reported_together() -> None:
    data = {
        "metric": "accuracy",
        "mode": "maximum",
        "search_algorithm": "bohb",
        "colour": "blue",
        "maximum_resource": 5,
        "minimum_resource": 9,
        "hp_space": {"lr": {"param_type": "loguniform", "range": [-1, 1]}},
    }
    with pytest.raises(ConfigError) as err:
        config_from_mapping(data, "my.yaml")
    text = "\n".join(err.value.problems)
    assert "mode: input should be 'max' or 'min', got 'maximum'" in text
    assert "search_algorithm: input should be 'asha' or 'smbo', got 'bohb'" in text
    assert "colour: unknown key" in text
    assert "hp_space.lr: loguniform bounds must be positive" in text
    assert err.value.summary().startswith("my.yaml: ")


def test_min_resource_above_max_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"minimum_resource \(9\) must not exceed maximum_resource \(5\)"):
        config_from_mapping(
            {
                "maximum_resource": 5,
                "minimum_resource": 9,
                "hp_space": {"x": {"param_type": "uniform", "range": [0, 1]}},
            }
        )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], "must be a mapping"),
        ({"metric": "a"}, "hp_space: required"),
        (
            {"hp_space": {"x": {"param_type": "uniform", "range": [0, 1]}}, "reduction_factor": 1},
            "reduction_factor",
        ),
        (
            {"hp_space": {"x": {"param_type": "uniform", "range": [0, 1]}}, "maximum_resource": 0},
            "maximum_resource",
        ),
    ],
)
def test_malformed_files(data: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_mapping(data)


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("hp_space: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("20m", 1200),
        ("1h30m", 5400),
        ("2h", 7200),
        ("1d", 86400),
        ("45", 45),
        (30, 30),
        ("1.5h", 5400),
    ],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["", "20x", "m20", "-5", 0, "1h 2x", "soon", "367d", "8800h", 1e300, 10**400, "inf", "nan", "1e400"],
)
def test_bad_durations(text: str | int) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 59, 60, 3661, 5400)] == ["0s", "59s", "1m", "1h1m1s", "1h30m"]


SPEC: dict[str, Any] = {
    "metric": "accuracy",
    "hpSpace": {"lr": {"paramType": "loguniform", "range": [0.001, 0.1]}},
    "maximumResource": 30,
    "budget": {"timeRatio": 2, "trainTime": "20m"},
    "parallelTrials": 2,
    "trialTemplate": {"spec": {"containers": [{"name": "t", "image": "i"}]}},
}


def test_a_study_spec_becomes_the_same_core_config() -> None:
    config = study_config_from_spec(SPEC)
    assert config.max_resource == 30
    assert config.budget.seconds() == 2 * 1200
    assert config.parallel_trials == 2
    assert config.space.params[0].type == "loguniform"


def test_study_spec_defaults() -> None:
    config = study_config_from_spec({k: v for k, v in SPEC.items() if k not in ("budget", "parallelTrials")})
    assert config.budget == BudgetSpec(time_ratio=4.0)
    assert config.parallel_trials is None


def test_study_spec_errors_name_spec_fields() -> None:
    spec = {**SPEC, "hpSpace": {"lr": {"paramType": "loguniform", "range": [0, 0.1]}}}
    with pytest.raises(ConfigError) as err:
        study_config_from_spec(spec)
    assert err.value.problems == ["spec.hpSpace.lr: loguniform bounds must be positive, got [0, 0.1]"]
    with pytest.raises(ConfigError) as err:
        study_config_from_spec({**SPEC, "parallelTrials": 0, "budget": {"trainTime": "soon"}, "mode": "up"})
    text = "\n".join(err.value.problems)
    assert "spec.parallelTrials" in text and "spec.budget.trainTime" in text and "spec.mode" in text


def test_the_examples_round_trip_through_yaml() -> None:
    config, raw = load_config(EXAMPLES / "hpo_config.yaml", require_max_resource=False)
    again = yaml.safe_load(yaml.safe_dump(raw, sort_keys=False))
    assert config_from_mapping(again, require_max_resource=False) == config


def test_study_spec_type_errors_and_space_errors_come_together() -> None:
    spec = {**SPEC, "gpusPerTrial": "one", "hpSpace": {"lr": {"paramType": "uniform", "range": [1, 0]}}}
    with pytest.raises(ConfigError) as err:
        study_config_from_spec(spec)
    text = "\n".join(err.value.problems)
    assert "spec.gpusPerTrial" in text
    assert "spec.hpSpace.lr: min (1) must be smaller than max (0)" in text


def test_asha_variant_and_final_training_settings() -> None:
    file = {"hp_space": {"x": {"param_type": "uniform", "range": [0, 1]}}, "maximum_resource": 9}
    assert config_from_mapping(file).asha_variant == "stop"
    assert config_from_mapping({**file, "asha": {"variant": "promote"}}).asha_variant == "promote"
    with pytest.raises(ConfigError, match=r"asha\.variant: input should be 'stop' or 'promote', got 'pause'"):
        config_from_mapping({**file, "asha": {"variant": "pause"}})
    # An HPOStudy takes them too, with a volume for the checkpoints.
    with pytest.raises(ConfigError, match=r"spec\.checkpoints: required"):
        study_config_from_spec({**SPEC, "asha": {"variant": "promote"}})
    with pytest.raises(ConfigError, match=r"spec\.checkpoints: required"):
        study_config_from_spec({**SPEC, "finalTraining": {"enabled": True}})
    with pytest.raises(ConfigError, match=r"spec\.checkpoints: claimName .* or size"):
        study_config_from_spec({**SPEC, "asha": {"variant": "promote"}, "checkpoints": {}})
    with pytest.raises(ConfigError, match=r"not both"):
        study_config_from_spec({**SPEC, "checkpoints": {"claimName": "c", "size": "1Gi"}})
    config = study_config_from_spec(
        {
            **SPEC,
            "asha": {"variant": "promote"},
            "finalTraining": {"enabled": True},
            "checkpoints": {"size": "1Gi"},
        }
    )
    assert (config.asha_variant, config.final_training) == ("promote", True)
    assert study_config_from_spec(SPEC).asha_variant == "stop"


# --- limits ---------------------------------------------------------------------------------------

X = {"x": {"param_type": "uniform", "range": [0, 1]}}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"minimum_resource": 1e-300}, "minimum_resource (1e-300) must lie between 0.001 and 1e+09"),
        ({"maximum_resource": 1e300}, "maximum_resource (1e+300) must lie between 0.001 and 1e+09"),
        ({"maximum_resource": 10**400}, "maximum_resource: Input should be a valid number"),
        ({"reduction_factor": 101}, "reduction_factor (101) must be at most 100"),
        (
            {"reduction_factor": 10**5000},
            "reduction_factor (<an integer of about 5000 digits>) must be at most",
        ),
        ({"seed": 2**63}, "seed (9223372036854775808) must lie within"),
        ({"metric": ""}, "metric: 1 to 256 printable characters"),
        ({"metric": "m" * 257}, "metric: 1 to 256 printable characters"),
        ({"metric": "a\x00b"}, "metric: 1 to 256 printable characters, got 'a\\x00b'"),
        ({"minimum_resource": "1e-3"}, "write 1.0e-4, not 1e-4"),
    ],
)
def test_settings_beyond_their_limits_are_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_mapping({"hp_space": X, **settings})
    assert any(message in p for p in err.value.problems), err.value.problems


def test_settings_at_their_limits_are_accepted() -> None:
    config = config_from_mapping(
        {"hp_space": X, "minimum_resource": 0.001, "maximum_resource": 1e9, "reduction_factor": 100,
         "seed": -(2**63) + 1, "metric": "m" * 256}
    )  # fmt: skip
    assert (config.min_resource, config.max_resource, config.reduction_factor) == (0.001, 1e9, 100)


def test_many_problems_are_listed_up_to_a_limit() -> None:
    space = {f"p{i}": {"param_type": "uniform", "range": [1, 0]} for i in range(200)}
    with pytest.raises(ConfigError) as err:
        config_from_mapping({"hp_space": space})
    assert len(err.value.problems) == MAX_PROBLEMS + 1
    assert err.value.problems[-1] == "... and 150 more problems"
    assert len(str(err.value)) < 10_000


def _load(tmp_path: Path, content: str | bytes) -> ConfigError:
    path = tmp_path / "hpo_config.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.source == str(path)
    return err.value


def test_files_beyond_the_reading_limits_are_refused_naming_the_file(tmp_path: Path) -> None:
    assert _load(tmp_path, "#" * (4 * 2**20 + 1)).problems == [
        "larger than 4 MiB, the limit of a config file"
    ]
    assert _load(tmp_path, b"metric: caf\xe9\n").problems == [
        "not UTF-8 text: byte 0xe9 at offset 11 cannot be decoded"
    ]
    assert _load(tmp_path, "hp_space: " + "[" * 40 + "]" * 40 + "\n").problems == [
        "nested more than 32 levels deep (line 1)"
    ]
    assert _load(tmp_path, "seed: " + "7" * 101 + "\n").problems == [
        "not valid YAML: a number of 101 characters (at most 100) (line 1, column 7)"
    ]
    assert (
        _load(tmp_path, "seed: 2020-13-45\n")
        .problems[0]
        .startswith("not valid YAML: not a date: '2020-13-45'")
    )


def test_aliases_count_at_each_use(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    started = time.perf_counter()
    err = _load(tmp_path, "\n".join(lines) + "\nmetric: *a8\n")
    assert err.problems == ["more than 100,000 values, aliases counted at each use (line 5)"]
    assert time.perf_counter() - started < 5  # refused before the 10^9 values are built or printed
    # Aliases and merge keys within the limit are ordinary YAML.
    path = tmp_path / "ok.yaml"
    path.write_text(
        "maximum_resource: 9\n"
        "hp_space:\n  a: &u {param_type: uniform, range: [0, 1]}\n  b: *u\n  c: {<<: *u, default: 0.5}\n"
    )
    config, _ = load_config(path)
    assert [p.name for p in config.space.params] == ["a", "b", "c"] and config.space.initial()["c"] == 0.5


def test_a_mapping_of_many_keys_is_checked_for_duplicates_in_linear_time(tmp_path: Path) -> None:
    # 45,000 keys: pairwise comparison took minutes; a set takes well under a second.
    started = time.perf_counter()
    err = _load(tmp_path, "hp_space: {" + ", ".join(f"p{i}: 0" for i in range(45_000)) + "}\n")
    assert err.problems == ["hp_space: 45,000 parameters, at most 1,000"]
    assert time.perf_counter() - started < 10
    text = "hp_space: {" + ", ".join(f"p{i}: 0" for i in [*range(30_000), 7]) + "}\n"
    column = text.rindex("p7:") + 1
    assert _load(tmp_path, text).problems == [f"not valid YAML: duplicate key 'p7' (line 1, column {column})"]


def test_a_spec_beyond_the_limits_is_refused_naming_the_field() -> None:
    def problems(**changes: Any) -> list[str]:
        with pytest.raises(ConfigError) as err:
            study_config_from_spec({**SPEC, **changes})
        return err.value.problems

    template = {"spec": {"containers": [{"name": "t", "image": "i", "x": float("nan")}]}}
    assert problems(trialTemplate=template) == [
        "spec.trialTemplate.spec.containers[0].x: nan is not a finite number"
    ]
    assert problems(gpusPerTrial=2**63) == [
        "spec.gpusPerTrial: 9223372036854775808 is beyond ±(2^63 - 1), what the API stores"
    ]
    assert problems(parallelTrials=1001) == ["spec.parallelTrials (1001) must be at most 1,000"]
    assert problems(budget={"timeRatio": 1e300, "trainTime": "1h"}) == [
        "spec.budget.timeRatio (1e+300) must be at most 1000"
    ]
    assert problems(minimumResource=1e-300, seed=10**5000) == [
        "spec.minimumResource (1e-300) must lie between 0.001 and 1e+09",
        "spec.seed (<an integer of about 5000 digits>) must lie within ±(2^63 - 1)",
    ]
    deep: Any = 1
    for _ in range(5000):
        deep = [deep]
    assert problems(trialTemplate={"spec": {"x": deep}})[0].endswith("nested more than 32 levels deep")
    started = time.perf_counter()
    many = {f"p{i}": {"paramType": "uniform", "range": [0, 1]} for i in range(100_000)}
    assert problems(hpSpace=many) == ["spec.hpSpace: 100,000 parameters, at most 1,000"]
    assert problems(hpSpace={"c": {"paramType": "choice", "range": list(range(10**6))}}) == [
        "more than 100,000 values"
    ]
    assert time.perf_counter() - started < 10
