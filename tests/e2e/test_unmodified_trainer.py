"""The operator runs a training script that knows nothing of hpo_trial (tests/fixtures/plain_trainer.py):
its hyper-parameter reaches it as a flag (``--x ${x}``) and its metric is read from what it prints, by
the metrics collector the operator wraps around the container's command (spec.metricsCollector), in
the trial's own pod. Against the local cluster (2 nodes x 2 GPUs); the process kubelet runs
``python3`` from the project's environment, where hpo_trial is installed, as the trial image has it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.cluster.rest import Kube
from tests.fixtures.plain_trainer import score
from tests.support.e2e_study import create_study, expected_best, trials_of, wait_phase
from tests.support.operator_process import OperatorProcess

pytestmark = pytest.mark.e2e

JSON = dict[str, Any]
PLAIN = str(Path(__file__).resolve().parents[1] / "fixtures" / "plain_trainer.py")


def plain_study(name: str, *args: str, **spec: Any) -> JSON:
    return {
        "apiVersion": "hpo.dev/v1alpha1",
        "kind": "HPOStudy",
        "metadata": {"name": name},
        "spec": {
            "metric": "score",
            "mode": "max",
            "hpSpace": {"x": {"paramType": "quniform", "range": [0.0, 1.0, 0.1]}},
            "minimumResource": 1,
            "maximumResource": 9,
            "reductionFactor": 3,
            "budget": {"deadline": "40s"},
            "gpusPerTrial": 1,
            "seed": 5,
            "metricsCollector": {"kind": "stdout"},
            "trialTemplate": {
                "spec": {
                    "containers": [
                        {
                            "name": "trial",
                            "image": "my-trainer:1.0",
                            "command": ["python", PLAIN],
                            "args": ["--x", "${x}", "--epochs", "9", "--epoch-seconds", "0.2", *args],
                        }
                    ]
                }
            },
            **spec,
        },
    }


def test_a_print_only_script_runs_through_the_collector_to_success(
    operator: OperatorProcess, kube: Kube, namespace: str
) -> None:
    create_study(kube, namespace, plain_study("plain"))
    study = wait_phase(kube, namespace, "plain", {"Succeeded", "Failed"}, 120)
    status = study["status"]
    assert status["phase"] == "Succeeded", status
    trials = trials_of(kube, namespace)
    reported = [t for t in trials if (t.get("status") or {}).get("reports")]
    assert len(reported) >= 4, [t["metadata"]["name"] for t in trials]
    for t in reported:
        x = t["spec"]["hyperparameters"]["x"]
        for report in t["status"]["reports"]:
            # What the script printed for the x it was given as a flag, with its loss as an extra.
            assert report["value"] == score(x, int(report["resource"])), (t["metadata"]["name"], report)
            assert report["extra"] == {"loss": round(1 - report["value"], 6)}
    assert any(t["status"].get("phase") == "Pruned" for t in trials)
    plan = status["plan"]
    name, value = expected_best(trials, [*plan["rungs"], plan["maximumResource"]])
    assert (status["best"]["trial"], status["best"]["value"]) == (name, value), status["best"]
    best_trial = next(t for t in trials if t["metadata"]["name"] == name)
    assert status["best"]["hyperparameters"] == best_trial["spec"]["hyperparameters"]
    # The Job ran the collector around the template's command, with the trial's value in place.
    jobs = kube.get(f"/apis/batch/v1/namespaces/{namespace}/jobs")["items"]
    job = next(j for j in jobs if j["metadata"]["name"] == name)
    container = job["spec"]["template"]["spec"]["containers"][0]
    x = best_trial["spec"]["hyperparameters"]["x"]
    assert container["command"][:5] == ["python3", "-m", "hpo_trial.collect", "--kind", "stdout"]
    assert container["command"][-8:] == [
        "python",
        PLAIN,
        "--x",
        repr(x),
        "--epochs",
        "9",
        "--epoch-seconds",
        "0.2",
    ]


def test_a_script_whose_metric_is_never_seen_is_failed_and_counts_as_a_failure(
    operator: OperatorProcess, kube: Kube, namespace: str
) -> None:
    manifest = plain_study("silent", "--log", "none", parallelTrials=1, maxFailedTrials=1)
    create_study(kube, namespace, manifest)
    study = wait_phase(kube, namespace, "silent", {"Succeeded", "Failed"}, 60)
    assert study["status"]["phase"] == "Failed", study["status"]
    (trial,) = trials_of(kube, namespace)
    status = trial["status"]
    assert (status["phase"], status["reason"], status["exitCode"]) == ("Failed", "NoReports", 0), status
    assert status["message"].startswith("the trial exited with status 0 without a report that counts")


def test_a_script_that_logs_only_to_tensorboard_runs_through_the_collector_to_success(
    operator: OperatorProcess, kube: Kube, namespace: str
) -> None:
    # torch's SummaryWriter writes the event files into the trial's own folder; the collector reads
    # them with the tensorboard package. $(HPO_CHECKPOINT_DIR) is expanded per trial by Kubernetes.
    events = "$(HPO_CHECKPOINT_DIR)/tb"
    manifest = plain_study(
        "tb",
        "--log", "tensorboard", "--log-dir", events,
        metricsCollector={"kind": "tensorboard", "path": events},
        budget={"deadline": "60s"},
    )  # fmt: skip
    create_study(kube, namespace, manifest)
    study = wait_phase(kube, namespace, "tb", {"Succeeded", "Failed"}, 150)
    status = study["status"]
    assert status["phase"] == "Succeeded", status
    trials = trials_of(kube, namespace)
    reported = [t for t in trials if (t.get("status") or {}).get("reports")]
    assert len(reported) >= 2, [t["metadata"]["name"] for t in trials]
    for t in reported:
        x = t["spec"]["hyperparameters"]["x"]
        for report in t["status"]["reports"]:
            # float32 in the event file: the value the script logged, to float32's precision.
            assert report["value"] == pytest.approx(score(x, int(report["resource"])), abs=1e-6), report
    plan = status["plan"]
    name, value = expected_best(trials, [*plan["rungs"], plan["maximumResource"]])
    assert (status["best"]["trial"], status["best"]["value"]) == (name, value), status["best"]
