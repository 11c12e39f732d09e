"""OpenVINO Training Extensions' hpo_config.yaml files, as OTX wrote them (tests/data/otx/), and every
OTX key: each file loads with OTX's meaning, keys with no use here are named in one warning, a typo
is refused, and R is never guessed."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from hpo_operator.cli import main
from hpo_operator.config import (
    ConfigError,
    StudyConfig,
    config_from_mapping,
    ignored_warning,
    load_config,
    study_config_from_spec,
)
from hpo_operator.space import Param, parse_space
from hpo_operator.study import Study

DATA = Path(__file__).resolve().parents[1] / "data" / "otx"
FILES = sorted(DATA.glob("*.yaml"))
UNIFORM = {"x": {"param_type": "uniform", "range": [0, 1]}}


def load(name: str) -> StudyConfig:
    return load_config(DATA / name, require_max_resource=False)[0]


def hpo(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hpo_config.yaml"
    path.write_text(text)
    return path


# --- every file loads -------------------------------------------------------------------------


def test_the_test_data_covers_every_task_and_both_space_forms() -> None:
    names = {f.name for f in FILES}
    for task in ("classification", "detection", "instance-segmentation", "rotated-detection", "segmentation"):
        assert any(n.startswith(task) for n in names), task
    assert "anomaly-stfpm.yaml" in names and {"keyed-form-1x.yaml", "keyed-form-2x.yaml"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_each_otx_file_loads_and_names_its_source(path: Path) -> None:
    assert path.read_text().startswith("# OpenVINO Training Extensions")
    config, raw = load_config(path, require_max_resource=False)
    assert config.space.names() == list((raw.get("hp_space") or raw["search_space"]).keys())
    result = hpo("validate", path)
    assert result.exit_code == 0, result.output
    assert f"{path}: valid" in result.stdout


def test_what_each_file_sets_is_read_with_otxs_meaning() -> None:
    smbo = load("classification-smbo.yaml")  # OTX 0.x: smbo, early_stop: median_stop
    assert (smbo.metric, smbo.sampler, smbo.max_resource_given) == ("mAP", "gp", False)
    lite = load("segmentation-lite-hrnet.yaml")  # max_iterations: OTX 0.x's name of R
    assert (lite.metric, lite.max_resource, lite.sampler) == ("mDice", 30, "gp")
    anomaly = load("anomaly-stfpm.yaml")
    assert (anomaly.metric, anomaly.mode) == ("image_F1Score", "max")
    for name in ("keyed-form-1x.yaml", "keyed-form-2x.yaml"):
        keyed = load(name)
        assert (keyed.max_resource, keyed.min_resource, keyed.reduction_factor) == (64, 1, 4)
        assert keyed.parallel_trials == 1  # num_workers
        hp2 = keyed.space.params[1]
        assert (hp2.type, hp2.low, hp2.high, hp2.step, hp2.log_base, hp2.integer) == (
            "qloguniform", 100, 1000, 2, 10, True,
        )  # fmt: skip
    assert load("keyed-form-1x.yaml").space == load("keyed-form-2x.yaml").space


# --- the values OTX would sample ----------------------------------------------------------------
# OTX (hpo/search_space.py) draws u uniformly in [log_b(min), log_b(max)] for a log type, takes b**u,
# and for a quantised type rounds to the grid through min: round((x - min % step) / step) * step +
# min % step. Below, that rule in decimal arithmetic, at the same position t in [0, 1] of the range.


def otx_value(param: Param, t: float, base: float) -> float:
    if param.log:
        lower, upper = math.log(param.low, base), math.log(param.high, base)
        x = base ** (lower + t * (upper - lower))
    else:
        x = param.low + t * (param.high - param.low)
    if param.step is None:
        return x
    step, low = Decimal(repr(param.step)), Decimal(repr(param.low))
    gap = low % step
    return float(((Decimal(x) - gap) / step).to_integral_value() * step + gap)


NUMERIC = [
    (f.name, i)
    for f in FILES
    for i, p in enumerate(load_config(f, False)[0].space.params)
    if p.type != "choice"
]


def position(param: Param, value: float) -> float:
    """Where ``value`` lies in [0, 1] of the parameter's range, on its scale (log for log types)."""
    if param.log:
        return math.log(value / param.low) / math.log(param.high / param.low)
    return (value - param.low) / (param.high - param.low)


@pytest.mark.parametrize(("name", "index"), NUMERIC, ids=[f"{n}-{i}" for n, i in NUMERIC])
def test_otx_samples_the_values_of_the_parsed_range_and_no_other(name: str, index: int) -> None:
    param = load(name).space.params[index]
    for i in range(2001):  # every value OTX draws is one of ours, whatever the log base
        t = i / 2000
        otx = otx_value(param, t, 2.0)
        assert otx == pytest.approx(otx_value(param, t, 10.0), rel=1e-9)
        if param.step is None:
            assert param.low * (1 - 1e-12) <= otx <= param.high * (1 + 1e-12)
            if param.log:  # the same point of the log scale
                assert param.from_unit(t) == pytest.approx(otx, rel=1e-9)
            continue
        if otx > param.high:  # OTX's rounding passed max, which is off the grid: here the top point
            assert not param.contains(param.high) and otx - param.step < param.high
            continue
        k = param.nearest_grid_index(otx)
        assert param.grid_value(k) == pytest.approx(otx, rel=1e-9, abs=1e-15)
        if param.log:  # qloguniform rounds the same log-uniform draw to the same grid point
            assert param.from_unit(t) == param.grid_value(k)
    if param.step is not None:  # and every grid point of ours is one OTX draws
        for k in sorted(
            {*range(min(param.grid_size, 300)), *range(max(0, param.grid_size - 300), param.grid_size)}
        ):
            value = param.grid_value(k)
            assert otx_value(param, position(param, value), 2.0) == pytest.approx(value, rel=1e-9)


def test_otx_passes_an_off_grid_max_where_here_the_values_stay_inside() -> None:
    lr = load("instance-segmentation-maskrcnn.yaml").space.params[0]  # [0.0001, 0.01], step 0.001
    assert lr.grid_value(0) == 0.0001 and lr.grid_value(lr.grid_size - 1) == 0.0091
    assert otx_value(lr, 1.0, 2.0) == pytest.approx(0.0101)  # one grid point past max
    assert lr.from_unit(0.9999) == 0.0091 and not lr.contains(0.0101)


# --- the two forms of a parameter ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("ptype", "keyed", "ranged"),
    [
        ("uniform", {"min": 0.1, "max": 2}, [0.1, 2]),
        ("quniform", {"min": 0, "max": 10, "step": 2}, [0, 10, 2]),
        ("loguniform", {"min": 0.001, "max": 0.1}, [0.001, 0.1]),
        ("loguniform", {"min": 0.001, "max": 0.1, "log_base": 2}, [0.001, 0.1, 2]),
        ("qloguniform", {"min": 32, "max": 128, "step": 2}, [32, 128, 2]),
        ("qloguniform", {"min": 32, "max": 128, "step": 2, "log_base": 10}, [32, 128, 2, 10]),
        ("choice", {"choice_list": ["sgd", "adam"]}, ["sgd", "adam"]),
    ],
)
def test_the_keyed_form_means_the_range_form(ptype: str, keyed: dict[str, Any], ranged: list[Any]) -> None:
    expected = parse_space({"p": {"param_type": ptype, "range": ranged}})
    for type_key in ("param_type", "type"):  # OTX 1.x, 2.x
        assert parse_space({"p": {type_key: ptype, **keyed}}) == expected
    assert expected.params[0].range_values() == ranged


def test_with_range_the_other_value_keys_are_ignored_as_otx_does() -> None:
    notes: list[str] = []
    space = parse_space(
        {
            "a": {"param_type": "uniform", "range": [0, 1], "min": 5, "max": 9},
            "b": {"type": "uniform", "min": 0, "max": 1, "step": 0.5, "choice_list": [1]},
        },
        notes,
    )
    assert (space.params[0].low, space.params[0].high) == (0, 1)
    assert notes == [
        "hp_space.a: min, max (range is used)",
        "hp_space.b: step, choice_list (not used by uniform)",
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"type": "quniform", "min": 0, "max": 1},
            "quniform needs range, or min and max and step; missing step",
        ),
        ({"param_type": "choice"}, "choice needs range, or choice_list; missing choice_list"),
        ({"type": "choice", "choice_list": "a,b"}, "choice_list must be a list"),
        ({"type": "uniform", "min": 0, "max": "one"}, "max must be a finite number"),
        ({"type": "loguniform", "min": 1, "max": 10, "log_base": 1}, "log_base (1) must be greater than 1"),
        ({"type": "uniform", "min": 2, "max": 1}, "min (2) must be smaller than max (1)"),
        (
            {"type": "uniform", "min": 0, "max": 1, "lgo_base": 2},
            "unknown key 'lgo_base' (did you mean log_base?)",
        ),
        ({"param_type": "uniform", "type": "uniform", "range": [0, 1]}, "give param_type or type, not both"),
    ],
)
def test_keyed_form_problems_name_the_key(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_mapping({"maximum_resource": 9, "hp_space": {"lr": spec}})
    assert any(p.startswith("hp_space.lr: ") and message in p for p in err.value.problems), err.value.problems


# --- keys OTX reads -----------------------------------------------------------------------------


def test_keys_with_no_use_here_are_named_in_one_warning(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "early_stop: median_stop\nasynchronous_bracket: false\nsubset_ratio: 0.5\nasynchronous_sha: false\n"
        "hp_space:\n  x: {param_type: uniform, range: [0, 1], step: 0.1}\n",
    )
    for args in (
        ("validate", path),
        ("sample", path, "-n", "1"),
        ("plan", path, "--max-resource", "9", "--train-time", "9m"),
    ):
        result = hpo(*args)
        assert result.exit_code == 0, result.output
        warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
        assert len(warnings) == 1, result.stderr
        for key in (
            "early_stop",
            "asynchronous_bracket",
            "subset_ratio",
            "asynchronous_sha",
            "hp_space.x: step",
        ):
            assert key in warnings[0]
        assert "ignored" in warnings[0]


def test_a_file_of_honoured_keys_gets_no_warning(tmp_path: Path) -> None:
    config = config_from_mapping({"maximum_resource": 9, "asynchronous_sha": True, "hp_space": UNIFORM})
    assert ignored_warning(config) is None
    result = hpo(
        "validate", write(tmp_path, "maximum_resource: 9\nhp_space: {x: {type: uniform, min: 0, max: 1}}\n")
    )
    assert result.exit_code == 0 and result.stderr == ""


@pytest.mark.parametrize(
    ("key", "closest"),
    [
        ("maximum_resourse", "maximum_resource"),
        ("hp_spaces", "hp_space"),
        ("prior_hyperparameters", "prior_hyper_parameters"),
        ("early_stopping", "early_stop"),
    ],
)
def test_a_key_otx_does_not_know_is_an_error_naming_the_closest(
    tmp_path: Path, key: str, closest: str
) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_mapping({key: 1, "maximum_resource": 9, "hp_space": UNIFORM})
    assert err.value.problems == [f"{key}: unknown key (did you mean {closest}?)"]
    result = hpo(
        "validate", write(tmp_path, f"{key}: 1\nhp_space: {{x: {{type: uniform, min: 0, max: 1}}}}\n")
    )
    assert result.exit_code == 2 and f"did you mean {closest}?" in result.stderr


def test_older_and_newer_names_of_a_setting() -> None:
    config = config_from_mapping(
        {"search_space": UNIFORM, "metric_name": "val/acc", "max_iterations": 27, "min_iterations": 3}
    )
    assert (config.metric, config.max_resource, config.min_resource) == ("val/acc", 27, 3)
    with pytest.raises(ConfigError) as err:
        config_from_mapping({"hp_space": UNIFORM, "maximum_resource": 9, "max_iterations": 30})
    assert err.value.problems == [
        "maximum_resource, max_iterations: two names of one setting (maximum_resource); give one"
    ]
    with pytest.raises(ConfigError, match=r"max_iterations: Input should be greater than 0"):
        config_from_mapping({"hp_space": UNIFORM, "max_iterations": -1})
    with pytest.raises(ConfigError, match=r"min_iterations \(9\) must not exceed max_iterations \(3\)"):
        config_from_mapping({"hp_space": UNIFORM, "max_iterations": 3, "min_iterations": 9})


def test_smbo_selects_a_model_based_sampler() -> None:
    base = {"hp_space": UNIFORM, "maximum_resource": 9}
    assert config_from_mapping({**base, "search_algorithm": "smbo"}).sampler == "gp"
    assert config_from_mapping({**base, "search_algorithm": "smbo", "sampler": "tpe"}).sampler == "tpe"
    assert config_from_mapping({**base, "search_algorithm": "asha", "sampler": "qmc"}).sampler == "qmc"
    with pytest.raises(ConfigError, match="smbo is model-based: sampler must be gp or tpe, got random"):
        config_from_mapping({**base, "search_algorithm": "smbo", "sampler": "random"})


def test_expected_time_ratio_and_num_workers_are_honoured_and_a_flag_wins(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "maximum_resource: 10\nexpected_time_ratio: 2\nnum_workers: 2\n"
        "hp_space: {x: {type: uniform, min: 0, max: 1}}\n",
    )
    config = load_config(path)[0]
    assert (config.budget.time_ratio, config.parallel_trials) == (2, 2)
    plan = json.loads(hpo("plan", path, "--train-time", "10m", "--json").stdout)
    assert (plan["budgetSeconds"], plan["parallelism"]) == (1200, 2)
    flags = json.loads(
        hpo("plan", path, "--train-time", "10m", "--time-ratio", "3", "--gpus", "4", "--json").stdout
    )
    assert (flags["budgetSeconds"], flags["parallelism"]) == (1800, 4)
    spec = yaml.safe_load(hpo("manifest", path, "--name", "s", "--image", "i").stdout)["spec"]
    assert (spec["budget"]["timeRatio"], spec["parallelTrials"]) == (2, 2)
    spec = yaml.safe_load(
        hpo(
            "manifest", path, "--name", "s", "--image", "i", "--time-ratio", "3", "--parallel-trials", "auto"
        ).stdout
    )["spec"]
    assert (spec["budget"]["timeRatio"], spec["parallelTrials"]) == (3, "auto")
    summary = hpo("validate", path).stdout
    assert "time ratio: 2 (expected_time_ratio; --time-ratio or --budget overrides)" in summary
    assert (
        "trials at once: at most 2 (num_workers; --gpus, --cpu-slots and --parallel-trials override)"
        in summary
    )
    assert "up to R = 10 (maximum_resource; --max-resource overrides)" in summary


@pytest.mark.parametrize(
    ("key", "value"),
    [("expected_time_ratio", 0), ("expected_time_ratio", 5000), ("num_workers", 0), ("num_workers", 10**6)],
)
def test_honoured_keys_are_checked(key: str, value: int) -> None:
    with pytest.raises(ConfigError, match=key):
        config_from_mapping({"hp_space": UNIFORM, "maximum_resource": 9, key: value})


# --- prior configurations -----------------------------------------------------------------------

SPACE = {
    "lr": {"param_type": "qloguniform", "range": [0.0001, 0.1, 0.0001]},
    "bs": {"type": "choice", "choice_list": [16, 32, 64]},
}


def test_prior_configurations_are_the_first_trials_in_order_then_the_sampler() -> None:
    priors = [{"bs": 32, "lr": 0.01}, {"lr": 0.001, "bs": 64}]
    config = config_from_mapping({"hp_space": SPACE, "maximum_resource": 9, "prior_hyper_parameters": priors})
    assert config.priors == ({"lr": 0.01, "bs": 32}, {"lr": 0.001, "bs": 64})  # the space's order
    study = Study(config, slots=4)
    assert [study.params_for(i) for i in range(2)] == list(config.priors)
    third = study.params_for(2)
    assert third not in config.priors and all(p.contains(third[p.name]) for p in config.space.params)
    assert config.space.initial() not in [study.params_for(i) for i in range(3)]  # no extra defaults trial
    one = config_from_mapping(
        {"hp_space": SPACE, "maximum_resource": 9, "prior_hyper_parameters": {"lr": 0.01, "bs": 16}}
    )
    assert Study(one, slots=1).params_for(0) == {"lr": 0.01, "bs": 16}


@pytest.mark.parametrize(
    ("priors", "message"),
    [
        ({"lr": 0.01}, "prior_hyper_parameters: no value for bs"),
        (
            [{"lr": 0.01, "bs": 16, "bss": 1}],
            "prior_hyper_parameters[0]: 'bss' is not a parameter of the search space (did you mean bs?)",
        ),
        (
            [{"lr": 0.01, "bs": 16}, {"lr": 0.5, "bs": 16}],
            "prior_hyper_parameters[1].lr: 0.5 is not a value of qloguniform",
        ),
        ([{"lr": 0.01, "bs": 24}], "prior_hyper_parameters[0].bs: 24 is not a value of choice"),
        ([[0.01, 16]], "prior_hyper_parameters[0]: must map parameter names to values"),
        ("lr=0.01", "a configuration (parameter names to values) or a list of them"),
        ([{"lr": 0.01, "bs": 16}] * 1001, "1,001 configurations, at most 1,000"),
    ],
)
def test_a_prior_configuration_gives_every_parameter_a_value_of_its_range(priors: Any, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_mapping({"hp_space": SPACE, "maximum_resource": 9, "prior_hyper_parameters": priors})
    assert any(message in p for p in err.value.problems), err.value.problems


def test_prior_configurations_reach_the_spec_through_hpo_manifest(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        yaml.safe_dump(
            {"hp_space": SPACE, "prior_hyper_parameters": [{"lr": 0.01, "bs": 32}, {"lr": 0.002, "bs": 16}]}
        ),
    )
    result = hpo("manifest", path, "--max-resource", "12", "--name", "s", "--image", "i")
    assert result.exit_code == 0, result.output
    spec = yaml.safe_load(result.stdout)["spec"]
    assert spec["priorHyperparameters"] == [{"lr": 0.01, "bs": 32}, {"lr": 0.002, "bs": 16}]
    assert spec["hpSpace"]["bs"] == {
        "paramType": "choice",
        "range": [16, 32, 64],
    }  # the keyed form, as a range
    assert spec["maximumResource"] == 12
    config = study_config_from_spec(spec)
    assert config.priors == load_config(path, require_max_resource=False)[0].priors
    assert (
        "first trials: 2 prior configuration(s) (prior_hyper_parameters), then the sampler"
        in hpo("validate", path).stdout
    )
    with pytest.raises(ConfigError, match=r"spec\.priorHyperparameters\[0\]\.bs: 8 is not a value of choice"):
        study_config_from_spec({**spec, "priorHyperparameters": [{"lr": 0.01, "bs": 8}]})


def test_without_priors_trial_zero_takes_the_defaults_and_validate_says_so(tmp_path: Path) -> None:
    config = replace(load("classification-efficientnet_b0.yaml"), max_resource=10)
    assert config.priors == () and Study(config, slots=1).params_for(0) == config.space.initial()
    summary = hpo("validate", DATA / "classification-efficientnet_b0.yaml").stdout
    assert "first trial: the defaults (each parameter's default, else the middle of its range)" in summary


# --- R is never guessed -------------------------------------------------------------------------


def test_plan_manifest_and_run_exit_2_naming_the_flag_and_the_key_without_r(tmp_path: Path) -> None:
    path = DATA / "detection-yolox.yaml"  # no maximum_resource, as every OTX file
    for args in (
        ("plan", path, "--train-time", "10m"),
        ("manifest", path, "--name", "s", "--image", "i"),
        ("run", path, "--budget", "1m", "--gpus", "0", "--out", tmp_path / "out", "--", "true"),
    ):
        result = hpo(*args)
        assert result.exit_code == 2, (args[0], result.output)
        assert "--max-resource" in result.stderr and "maximum_resource" in result.stderr, result.stderr
        assert result.stdout == "" and not (tmp_path / "out").exists()
    validate = hpo("validate", path)
    assert validate.exit_code == 0
    assert "R is not set: hpo plan, manifest and run need --max-resource R" in validate.stdout
    planned = json.loads(hpo("plan", path, "--max-resource", "12", "--train-time", "12m", "--json").stdout)
    assert planned["maximumResource"] == 12


def test_a_spec_without_maximum_resource_is_refused_naming_it() -> None:
    spec = {"hpSpace": {"x": {"paramType": "uniform", "range": [0, 1]}}, "trialTemplate": {"spec": {}}}
    with pytest.raises(ConfigError) as err:
        study_config_from_spec(spec)
    assert err.value.problems == [
        "spec.maximumResource: required: R, the epochs (or steps) of one full training "
        "(hpo manifest writes it from --max-resource or the config's maximum_resource)"
    ]
    assert study_config_from_spec({**spec, "maximumResource": 5}).max_resource == 5
    with pytest.raises(ConfigError) as both:
        study_config_from_spec({**spec, "gpusPerTrial": "one"})
    assert any(p.startswith("spec.maximumResource: required") for p in both.value.problems)
