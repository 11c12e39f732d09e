"""HPOStudies whose trials log every report they delivered (and their pid) to a file of their own, so
that "no report lost" is checked against what the trial processes wrote; the fault and security
e2e tests use them. ``can_i`` asks the cluster what a user may do.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from tests.cluster.cluster import LocalCluster
from tests.cluster.rest import Kube
from tests.support.e2e_study import create_study
from tests.support.e2e_study import get_study as get_study
from tests.support.e2e_study import trials_of as trials_of
from tests.support.e2e_study import wait_phase as wait_phase

JSON = dict[str, Any]
GROUP_PATH = "/apis/hpo.dev/v1alpha1"
create = create_study

# Reads its x, trains R "epochs" of EPOCH_SECONDS, reports 1 - (x - 0.3)^2 scaled by how far it
# trained, and appends each report with its delivery (whether, and when) and pid to
# REPORT_LOG_DIR/<trial>.jsonl.
# CRASH_EXIT / CRASH_KILL: trial indices ("*": all) that exit 3, or SIGKILL themselves (as the
# OOM killer does: exit 137), one epoch in, before their first report (a trial that reported below
# its rung's cut-off may be pruned before its exit is seen; the first verdict stands).
FAKE_TRAINER = """
import json, os, signal, sys, time, hpo_trial
x = float(hpo_trial.hyperparameters()["x"])
epoch = float(os.environ["EPOCH_SECONDS"])
trial = os.environ["HPO_TRIAL"]
index = trial.rsplit("-", 1)[1]
def chosen(var):
    names = os.environ.get(var, "").split(",")
    return "*" in names or index in names
for resource in range(1, int(os.environ["HPO_MAX_RESOURCE"]) + 1):
    time.sleep(epoch)
    if chosen("CRASH_EXIT"):
        sys.exit(3)
    if chosen("CRASH_KILL"):
        os.kill(os.getpid(), signal.SIGKILL)
    value = round((1 - (x - 0.3) ** 2) * (1 - 0.5 ** resource), 6)
    # report() only queues; flush() waits for the delivery, whose moment the reliability tests need.
    delivered = hpo_trial.report(resource, value) and hpo_trial.flush(90)
    line = {
        "resource": resource,
        "value": value,
        "delivered": delivered,
        "deliveredAt": time.time(),
        "pid": os.getpid(),
    }
    with open(os.path.join(os.environ["REPORT_LOG_DIR"], trial + ".jsonl"), "a") as log:
        log.write(json.dumps(line) + "\\n")
"""


def manifest(
    name: str,
    log_dir: Path,
    *,
    deadline: str = "30s",
    parallel: int | str = "auto",
    epoch_seconds: float = 0.2,
    gpus: int = 1,
    env: dict[str, str] | None = None,
) -> JSON:
    variables = {"EPOCH_SECONDS": str(epoch_seconds), "REPORT_LOG_DIR": str(log_dir), **(env or {})}
    return {
        "apiVersion": "hpo.dev/v1alpha1",
        "kind": "HPOStudy",
        "metadata": {"name": name},
        "spec": {
            "metric": "accuracy",
            "mode": "max",
            "hpSpace": {"x": {"paramType": "uniform", "range": [0.0, 1.0]}},
            "minimumResource": 1,
            "maximumResource": 9,
            "reductionFactor": 3,
            "budget": {"deadline": deadline},
            "parallelTrials": parallel,
            "gpusPerTrial": gpus,
            "seed": 11,
            "trialTemplate": {
                "spec": {
                    "containers": [
                        {
                            "name": "trial",
                            "image": "hpo-fake-trainer:local",
                            "command": ["python", "-c", FAKE_TRAINER],
                            "env": [{"name": k, "value": v} for k, v in variables.items()],
                        }
                    ]
                }
            },
        },
    }


def pods_of(kube: Kube, namespace: str) -> list[JSON]:
    items: list[JSON] = kube.get(f"/api/v1/namespaces/{namespace}/pods")["items"]
    return items


def can_i(cluster: LocalCluster, user: str, verb: str, resource: str, namespace: str | None) -> bool:
    kind, _, sub = resource.partition("/")  # "pods/exec": resource pods, subresource exec
    args = ["kubectl", "auth", "can-i", verb, kind, f"--as={user}"]
    args += [f"--subresource={sub}"] if sub else []
    args += [f"--namespace={namespace}"] if namespace else ["--all-namespaces"]
    done = subprocess.run(
        args, capture_output=True, text=True, env={**os.environ, **cluster.env()}, timeout=30
    )
    answer = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert answer in ("yes", "no"), (args, done.stdout, done.stderr)
    return answer == "yes"
