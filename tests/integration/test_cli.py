"""The `hpo` command line through its real entry point: exit codes, messages, outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hpo_operator.config import load_config, study_config_from_spec

ROOT = Path(__file__).resolve().parents[2]
OTX = ROOT / "examples" / "otx-classification" / "hpo_config.yaml"
R10 = ("--max-resource", "10")  # OTX's file leaves R to the trainer: plan, manifest and run need it


def hpo(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hpo_operator", *map(str, args)], capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def bad_config(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "mode: best\n"
        "hp_space:\n"
        "  lr: {param_type: loguniform, range: [0, 0.1]}\n"
        "  bs: {param_type: quniform, range: [32, 128]}\n"
    )
    return path


def test_validate_summarises_a_good_file() -> None:
    result = hpo("validate", OTX)
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout
    assert "learning_parameters.learning_rate: qloguniform [0.0007, 0.07, step 0.0001]" in result.stdout


def test_validate_lists_every_problem_with_exit_2(bad_config: Path) -> None:
    result = hpo("validate", bad_config)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "3 problem(s)" in result.stderr
    assert "mode: input should be 'max' or 'min', got 'best'" in result.stderr
    assert "hp_space.lr: loguniform bounds must be positive" in result.stderr
    assert "hp_space.bs: quniform range needs 3 values, got 2" in result.stderr


def test_other_commands_give_one_line_reasons(bad_config: Path, tmp_path: Path) -> None:
    for args in (("sample", bad_config), ("plan", bad_config, "--train-time", "10m")):
        result = hpo(*args)
        assert result.returncode == 2
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    missing = hpo("validate", tmp_path / "nope.yaml")
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_sample_prints_seeded_json_lines_inside_the_space() -> None:
    first = hpo("sample", OTX, "-n", "50", "--seed", "3")
    again = hpo("sample", OTX, "-n", "50", "--seed", "3")
    assert first.returncode == 0 and first.stdout == again.stdout
    config, _ = load_config(OTX, require_max_resource=False)
    rows = [json.loads(line) for line in first.stdout.splitlines()]
    assert len(rows) == 50
    for row in rows:
        for p in config.space.params:
            assert p.contains(row[p.name]), (p.name, row[p.name])
    assert hpo("sample", OTX, "-n", "50", "--seed", "4").stdout != first.stdout


def test_plan_json_for_the_otx_default() -> None:
    one = json.loads(hpo("plan", OTX, *R10, "--train-time", "10m", "--json").stdout)
    four = json.loads(
        hpo("plan", OTX, *R10, "--train-time", "10m", "--time-ratio", "4", "--gpus", "4", "--json").stdout
    )
    for plan in (one, four):
        assert {"eta", "minimumResource", "maximumResource", "rungs", "plannedTrials", "parallelism"} <= set(
            plan
        )
        assert plan["predictedSeconds"] <= plan["budgetSeconds"] == 2400
    assert (one["plannedTrials"], one["parallelism"]) == (11, 1)
    assert (four["plannedTrials"], four["parallelism"]) == (44, 4)


def test_plan_text_and_a_budget_too_small() -> None:
    text = hpo("plan", OTX, *R10, "--train-time", "10m", "--budget", "1h")
    assert text.returncode == 0 and "budget: 1h" in text.stdout and "rungs: 1, 3, 9" in text.stdout
    small = hpo("plan", OTX, *R10, "--train-time", "10m", "--budget", "5m")
    assert small.returncode == 2
    assert "smallest workable budget is 667s" in small.stderr
    both = hpo("plan", OTX, *R10, "--train-time", "10m", "--budget", "1h", "--time-ratio", "2")
    assert both.returncode == 2 and "either --budget or --time-ratio" in both.stderr
    nott = hpo("plan", OTX, *R10)
    assert nott.returncode == 2 and "--train-time" in nott.stderr


def test_bad_flag_values_exit_2() -> None:
    result = hpo("plan", OTX, *R10, "--train-time", "soon")
    assert result.returncode == 2 and "cannot read duration 'soon'" in result.stderr


def test_manifest_is_an_hpostudy_the_operator_accepts() -> None:
    command = "python -m hpo_trial.train --dataset digits"
    result = hpo(
        "manifest", OTX, *R10, "--name", "cls", "--namespace", "ml", "--image", "reg/trial:1",
        "--command", command, "--train-time", "20m", "--gpus-per-trial", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc = yaml.safe_load(result.stdout)
    assert doc["apiVersion"] == "hpo.dev/v1alpha1" and doc["kind"] == "HPOStudy"
    assert doc["metadata"] == {"name": "cls", "namespace": "ml"}
    spec = doc["spec"]
    assert spec["budget"] == {"timeRatio": 4.0, "trainTime": "20m"}
    assert spec["gpusPerTrial"] == 2
    container = spec["trialTemplate"]["spec"]["containers"][0]
    assert container["image"] == "reg/trial:1"
    assert container["command"] == ["python", "-m", "hpo_trial.train", "--dataset", "digits"]
    config = study_config_from_spec(spec)
    assert config.space == load_config(OTX, require_max_resource=False)[0].space


def test_manifest_with_a_deadline() -> None:
    doc = yaml.safe_load(hpo("manifest", OTX, *R10, "--name", "x", "--image", "i", "--budget", "2h").stdout)
    assert doc["spec"]["budget"] == {"deadline": "2h"}
    assert study_config_from_spec(doc["spec"]).budget.seconds() == 7200


def test_manifest_with_the_promote_variant_and_final_training(tmp_path: Path) -> None:
    path = tmp_path / "promote.yaml"
    path.write_text(
        "maximum_resource: 9\nasha: {variant: promote}\n"
        "hp_space:\n  x: {param_type: uniform, range: [0, 1]}\n"
    )
    result = hpo("manifest", path, "--name", "x", "--image", "i")
    assert result.returncode == 2 and "--checkpoint-claim NAME" in result.stderr
    args = ("manifest", path, "--name", "x", "--image", "i", "--final-training", "--checkpoint-size", "5Gi")
    doc = yaml.safe_load(hpo(*args, "--storage-class", "nfs").stdout)
    spec = doc["spec"]
    assert spec["asha"] == {"variant": "promote"} and spec["finalTraining"] == {"enabled": True}
    assert spec["checkpoints"] == {"size": "5Gi", "storageClassName": "nfs"}
    config = study_config_from_spec(spec)
    assert (config.asha_variant, config.final_training, config.sampler) == ("promote", True, "gp")
    claim = yaml.safe_load(hpo(*args[:-2], "--checkpoint-claim", "shared").stdout)["spec"]["checkpoints"]
    assert claim == {"claimName": "shared"}


def test_manifest_of_a_file_that_names_the_type_param_type_or_paramtype(tmp_path: Path) -> None:
    path = tmp_path / "camel.yaml"
    path.write_text(
        "maximum_resource: 9\n"
        "hp_space:\n"
        "  lr: {paramType: loguniform, range: [0.001, 0.1], default: 0.01}\n"
        "  opt: {param_type: choice, range: [sgd, adam]}\n"
    )
    result = hpo("manifest", path, "--name", "x", "--image", "i")
    assert result.returncode == 0, result.stderr
    space = yaml.safe_load(result.stdout)["spec"]["hpSpace"]
    assert space == {
        "lr": {"paramType": "loguniform", "range": [0.001, 0.1], "default": 0.01},
        "opt": {"paramType": "choice", "range": ["sgd", "adam"]},
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--time-ratio", "nan"), "error: --time-ratio: must be positive and at most 1000, got nan"),
        (("--time-ratio", "1e300"), "error: --time-ratio: must be positive and at most 1000, got 1e+300"),
        (("--max-resource", "inf"), "error: --max-resource: must lie between 0.001 and 1e+09, got inf"),
        (("--max-resource", "0.5"), "error: --max-resource (0.5) is below the config's minimum_resource (1)"),
    ],
)
def test_flag_numbers_beyond_the_limits_exit_2_in_one_line(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "minimum_resource: 1\nmaximum_resource: 9\nhp_space:\n  x: {param_type: uniform, range: [0, 1]}\n"
    )
    for command in (("plan", path, "--train-time", "10m"), ("manifest", path, "--name", "x", "--image", "i")):
        result = hpo(*command, *args)
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr == message + "\n"
