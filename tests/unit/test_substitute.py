"""Hyper-parameters in the trial command line (trial_command.py), through hpo run, hpo manifest and
the operator's spec check."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from hpo_operator.cli import main
from hpo_operator.config import MetricsCollector, config_from_mapping, study_config_from_spec
from hpo_operator.space import parse_space
from hpo_operator.trial_command import (
    command_problems,
    describe_collector,
    format_value,
    reference_problems,
    substitute,
    template_problems,
    wrap,
)
from tests.cluster.kubelet import expand

OTX_SPACE = {
    "learning_parameters.learning_rate": {"param_type": "qloguniform", "range": [0.0007, 0.07, 0.0001]},
    "learning_parameters.batch_size": {"param_type": "qloguniform", "range": [32, 128, 2]},
}


def test_values_are_written_as_sampled_without_float_noise() -> None:
    space = parse_space(
        {
            "dropout": {"param_type": "quniform", "range": [0.0, 1.0, 0.1]},
            **OTX_SPACE,
        }
    )
    rng = random.Random(3)
    seen = set()
    for _ in range(200):
        params = space.sample(rng)
        text = format_value(params["dropout"])
        seen.add(text)
        assert len(text) <= 3, text  # 0.3, never 0.30000000000000004
        assert float(text) == params["dropout"]
        lr = format_value(params["learning_parameters.learning_rate"])
        assert float(lr) == params["learning_parameters.learning_rate"] and len(lr) <= 6, lr
        bs = format_value(params["learning_parameters.batch_size"])
        assert bs.isdigit(), bs  # an int, as argparse's type=int wants it
    assert "0.3" in seen
    assert format_value(0.1 + 0.2) == "0.30000000000000004"  # exactly what was sampled, nothing rounded


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("adamw", "adamw"),
        ("two words", "two words"),
        (64, "64"),
        (1e-05, "1e-05"),
        (2.5, "2.5"),
        (True, "true"),
        (None, "null"),
        ([1, 2], "[1,2]"),
        ({"a": 1}, '{"a":1}'),
    ],
)
def test_choices_are_their_json_text_or_the_plain_string(value: Any, text: str) -> None:
    assert format_value(value) == text


def test_substitution_of_dotted_names_and_the_otx_override_form() -> None:
    params = {"learning_parameters.learning_rate": 0.0031, "learning_parameters.batch_size": 64}
    argv = [
        "otx",
        "train",
        "params",
        "--learning_parameters.learning_rate",
        "${learning_parameters.learning_rate}",
        "--learning_parameters.batch_size=${learning_parameters.batch_size}",
        "--tag=lr${learning_parameters.learning_rate}-bs${learning_parameters.batch_size}",
    ]
    assert command_problems(argv, params) == []
    assert [substitute(a, params) for a in argv] == [
        "otx",
        "train",
        "params",
        "--learning_parameters.learning_rate",
        "0.0031",
        "--learning_parameters.batch_size=64",
        "--tag=lr0.0031-bs64",
    ]


def test_escape_and_shell_variables() -> None:
    params = {"x": 0.5}
    # $${ is a literal ${; $HOME and $$ are left to whatever reads the command (a shell).
    arg = "echo $${HOME} $HOME $$ ${x} $${x}"
    assert reference_problems(arg, params, "arg") == []
    assert substitute(arg, params) == "echo ${HOME} $HOME $$ 0.5 ${x}"
    # ${HOME} without the escape is not a parameter: refused rather than passed on.
    problems = reference_problems("echo ${HOME}", params, "argument 2")
    assert len(problems) == 1 and "${HOME} is not a hyper-parameter" in problems[0]
    assert "argument 2" in problems[0] and "(hp_space: x)" in problems[0] and "'$${'" in problems[0]
    problems = reference_problems("--lr ${x", params, "argument 3")
    assert len(problems) == 1 and "without its closing" in problems[0], problems


def test_trial_variables_are_expanded_as_kubernetes_does_and_values_are_not_read_again() -> None:
    environ = {"HPO_TRIAL": "s-3", "HPO_CHECKPOINT_DIR": "/ck/s-3", "HOME": "/root"}
    params = {"tag": "$(HPO_TRIAL)", "x": 1}
    arg = "--dir=$(HPO_CHECKPOINT_DIR)/logs --tag ${tag} $(HOME) $(HPO_UNSET)"
    assert substitute(arg, params, environ) == "--dir=/ck/s-3/logs --tag $(HPO_TRIAL) $(HOME) $(HPO_UNSET)"


def test_kubernetes_reads_the_substituted_values_back_unchanged() -> None:
    """In a pod, Kubernetes expands $(VAR) and $$ in command and args: the values are escaped for
    it, and what the container runs is the value itself."""
    params = {"opt": "a$(HPO_TRIAL)$$b", "x": 0.25}
    env = {"HPO_TRIAL": "s-1", "HPO_CHECKPOINT_DIR": "/ck"}
    arg = "--opt=${opt} --x ${x} --dir $(HPO_CHECKPOINT_DIR) $${HOME}"
    in_pod = substitute(arg, params, kube=True)
    assert expand(in_pod, env) == "--opt=a$(HPO_TRIAL)$$b --x 0.25 --dir /ck ${HOME}"


def test_template_problems_name_the_container_and_the_argument() -> None:
    spec: dict[str, Any] = {
        "hpSpace": {"lr": {}, "bs": {}},
        "trialTemplate": {
            "spec": {
                "containers": [
                    {"name": "trial", "command": ["python", "train.py"], "args": ["--lr", "${lr}", "${lr2}"]},
                    {"name": "side", "command": ["sh", "-c", "echo ${HOME}"]},
                ]
            }
        },
    }
    problems = template_problems(spec)
    assert len(problems) == 2, problems
    assert problems[0].startswith("spec.trialTemplate.spec.containers[0].args[2]: ${lr2}")
    assert problems[1].startswith("spec.trialTemplate.spec.containers[1].command[2]: ${HOME}")
    spec["trialTemplate"]["spec"]["containers"] = [{"name": "trial", "image": "i"}]
    assert template_problems(spec) == []
    spec["metricsCollector"] = {"kind": "stdout"}
    (problem,) = template_problems(spec)
    assert problem.startswith("spec.metricsCollector: the first container") and "command" in problem


def test_the_collector_wraps_the_command() -> None:
    collector = MetricsCollector(kind="file", path="$(HPO_CHECKPOINT_DIR)/m.csv", resource_offset=1)
    argv = wrap(["python", "train.py"], collector, "/usr/bin/python3")
    assert argv == [
        "/usr/bin/python3",
        "-m",
        "hpo_trial.collect",
        "--kind",
        "file",
        "--path",
        "$(HPO_CHECKPOINT_DIR)/m.csv",
        "--resource-offset",
        "1.0",
        "--",
        "python",
        "train.py",
    ]
    assert wrap(["python", "train.py"], None, "python3") == ["python", "train.py"]
    assert "score=<number>" in describe_collector(MetricsCollector(kind="stdout"), "score")


# --- through the command line -------------------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "hpo_config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "metric": "accuracy",
                "maximum_resource": 4,
                "hp_space": OTX_SPACE,
                "metrics_collector": {"kind": "stdout", "resource_key": "iteration"},
            }
        )
    )
    return path


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), env={"CUDA_VISIBLE_DEVICES": ""})


def test_hpo_run_refuses_an_unknown_name_before_any_trial(config: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke(
        "run", str(config), "--budget", "1m", "--out", str(out), "--",
        "python", "train.py", "--lr", "${learning_parameters.learning_rat}",
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "${learning_parameters.learning_rat} is not a hyper-parameter" in result.output
    assert "argument 4" in result.output
    assert not out.exists()


def test_hpo_manifest_checks_the_command_and_carries_the_collector(config: Path) -> None:
    bad = invoke(
        "manifest", str(config), "--name", "s", "--image", "i", "--command", "python t.py --bs ${bs}"
    )
    assert bad.exit_code == 2 and "--command, argument 4: ${bs} is not a hyper-parameter" in bad.output
    good = invoke(
        "manifest", str(config), "--name", "s", "--image", "i", "--budget", "1h",
        "--command", "otx train params --learning_parameters.batch_size ${learning_parameters.batch_size}",
    )  # fmt: skip
    assert good.exit_code == 0, good.output
    doc = yaml.safe_load(good.output)
    spec = doc["spec"]
    assert spec["metricsCollector"] == {"kind": "stdout", "resourceKey": "iteration"}
    assert (
        spec["trialTemplate"]["spec"]["containers"][0]["command"][-1] == "${learning_parameters.batch_size}"
    )
    assert study_config_from_spec(spec).metrics_collector == MetricsCollector(
        kind="stdout", resource_key="iteration"
    )
    assert template_problems(spec) == []


def test_the_config_file_and_the_spec_read_the_same_collector() -> None:
    space = {"x": {"param_type": "uniform", "range": [0, 1]}}
    from_file = config_from_mapping(
        {"hp_space": space, "maximum_resource": 3, "metrics_collector": {"kind": "file", "path": "m.csv"}}
    )
    assert from_file.metrics_collector == MetricsCollector(kind="file", path="m.csv")
