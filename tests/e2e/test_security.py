"""A tenant who may only create HPOStudies, and trials that try to write what is not theirs, on
the local cluster with the chart's RBAC (docs/security.md).

- A trial template that asks for another ServiceAccount, host namespaces, a privileged container,
  an added capability or a hostPath volume is refused: the study is Invalid, no Job or pod exists,
  and the tenant can do nothing more than before.
- Each trial's token may get and patch its own HPOTrial's status and nothing else: 403 on another
  trial of its study, on another study's trial, on pods and on Secrets.
- A phase forged into a trial's status (with rights a trial does not even have) changes no verdict:
  the operator writes its record back and the study ends as if nothing happened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.cluster.cluster import LocalCluster
from tests.cluster.rest import ApiError, Kube
from tests.cluster.waiting import wait_for
from tests.support.logged_study import (
    GROUP_PATH,
    can_i,
    create,
    get_study,
    manifest,
    pods_of,
    trials_of,
    wait_phase,
)
from tests.support.operator_process import OperatorProcess, kubectl

pytestmark = pytest.mark.e2e

JSON = dict[str, Any]
TENANT = "tenant"
# What the tenant may not do, before and after creating a hostile study.
FORBIDDEN = [
    ("create", "pods"),
    ("create", "jobs.batch"),
    ("list", "secrets"),
    ("create", "rolebindings.rbac.authorization.k8s.io"),
    ("patch", "hpotrials.hpo.dev/status"),
]


@pytest.fixture
def tenant(cluster: LocalCluster, kube: Kube, namespace: str) -> Kube:
    """A client acting as a user who may create, read and delete HPOStudies in ``namespace`` only."""
    rbac = "/apis/rbac.authorization.k8s.io/v1/namespaces/" + namespace
    kube.create(f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": TENANT}})
    kube.create(
        f"{rbac}/roles",
        {
            "metadata": {"name": TENANT},
            "rules": [
                {
                    "apiGroups": ["hpo.dev"],
                    "resources": ["hpostudies", "hpotrials"],
                    "verbs": ["get", "list", "watch", "create", "delete"],
                }
            ],
        },
    )
    kube.create(
        f"{rbac}/rolebindings",
        {
            "metadata": {"name": TENANT},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": TENANT},
            "subjects": [{"kind": "ServiceAccount", "name": TENANT, "namespace": namespace}],
        },
    )
    return Kube(cluster.server, cluster.service_account_token(namespace, TENANT), str(cluster.ca_file))


def test_a_tenants_hostile_trial_template_is_refused_and_nothing_runs(
    operator: OperatorProcess, cluster: LocalCluster, kube: Kube, namespace: str, tenant: Kube, tmp_path: Path
) -> None:
    # An account of the namespace that a careless admin bound to cluster-admin.
    kube.create(f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": "powerful"}})
    kubectl(
        cluster, "create", "clusterrolebinding", f"{namespace}-powerful", "--clusterrole=cluster-admin",
        f"--serviceaccount={namespace}:powerful",
    )  # fmt: skip
    user = f"system:serviceaccount:{namespace}:{TENANT}"
    before = {(verb, res): can_i(cluster, user, verb, res, namespace) for verb, res in FORBIDDEN}
    assert not any(before.values()), before
    hostile = manifest("hostile", tmp_path, deadline="30s")
    pod = hostile["spec"]["trialTemplate"]["spec"]
    pod |= {
        "serviceAccountName": "powerful",
        "hostNetwork": True,
        "hostPID": True,
        "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
    }
    pod["containers"][0]["securityContext"] = {"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}}
    create(tenant, namespace, hostile)
    study = wait_phase(kube, namespace, "hostile", {"Failed", "Succeeded", "Running"}, 30)
    assert study["status"]["phase"] == "Failed", study["status"]
    invalid = next(c for c in study["status"]["conditions"] if c["type"] == "Invalid")
    assert (invalid["status"], invalid["reason"]) == ("True", "TemplateRefused")
    for field in ("serviceAccountName", "hostNetwork", "hostPID", "hostPath", "privileged", "SYS_ADMIN"):
        assert field in invalid["message"], (field, invalid["message"])
    # Decided before anything was created: no trial, no Job, no pod, no account.
    assert trials_of(kube, namespace, "hostile") == []
    assert kube.get(f"/apis/batch/v1/namespaces/{namespace}/jobs")["items"] == []
    assert pods_of(kube, namespace) == []
    after = {(verb, res): can_i(cluster, user, verb, res, namespace) for verb, res in FORBIDDEN}
    assert after == before
    kubectl(cluster, "delete", "clusterrolebinding", f"{namespace}-powerful")


def test_a_trials_token_may_patch_its_own_trial_only_and_a_forged_phase_changes_no_verdict(
    operator: OperatorProcess, cluster: LocalCluster, kube: Kube, namespace: str, tmp_path: Path
) -> None:
    # Slow epochs: the trials are still running while their tokens are tried.
    pod_security = {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001}
    container_security = {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False}
    for name in ("alpha", "beta"):
        body = manifest(name, tmp_path, deadline="40s", parallel=2, epoch_seconds=1.0)
        body["spec"]["trialTemplate"]["spec"]["securityContext"] = pod_security
        body["spec"]["trialTemplate"]["spec"]["containers"][0]["securityContext"] = container_security
        create(kube, namespace, body)

    def running(trial: JSON) -> bool:
        return bool((trial.get("status") or {}).get("phase") == "Running")

    def ready() -> list[JSON]:
        # A running trial of each study, and a second trial of alpha's (in any phase).
        trials = trials_of(kube, namespace)
        alpha = [t for t in trials if t["spec"]["study"] == "alpha"]
        beta = [t for t in trials if t["spec"]["study"] == "beta"]
        return trials if len(alpha) >= 2 and any(map(running, alpha)) and any(map(running, beta)) else []

    trials = wait_for(ready, 60, 0.2, lambda: f"trials: {trials_of(kube, namespace)}")
    mine = next(t for t in trials if t["spec"]["study"] == "alpha" and running(t))
    sibling = next(t for t in trials if t["spec"]["study"] == "alpha" and t is not mine)
    other = next(t for t in trials if t["spec"]["study"] == "beta" and running(t))
    name = mine["metadata"]["name"]
    account = kube.get(f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}")
    assert account["metadata"]["ownerReferences"][0]["uid"] == mine["metadata"]["uid"]
    pod = next(p for p in pods_of(kube, namespace) if p["metadata"]["labels"].get("hpo.dev/trial") == name)
    assert pod["spec"]["serviceAccountName"] == name
    # What the baseline allows reaches the pod as written.
    assert pod["spec"]["securityContext"] == pod_security
    assert pod["spec"]["containers"][0]["securityContext"] == container_security
    as_trial = Kube(cluster.server, cluster.service_account_token(namespace, name), str(cluster.ca_file))
    forged = {"seq": 99, "resource": 9, "value": 100.0, "time": 0.0}
    append = [{"op": "add", "path": "/status/reports/-", "value": forged}]
    for target in (sibling, other):
        path = f"{GROUP_PATH}/namespaces/{namespace}/hpotrials/{target['metadata']['name']}/status"
        with pytest.raises(ApiError) as denied:
            as_trial.patch(path, append, content_type="application/json-patch+json")
        assert denied.value.status == 403, (target["metadata"]["name"], denied.value)
    for path in (f"/api/v1/namespaces/{namespace}/pods", f"/api/v1/namespaces/{namespace}/secrets"):
        with pytest.raises(ApiError) as denied:
            as_trial.get(path)
        assert denied.value.status == 403, path
    own = as_trial.get(f"{GROUP_PATH}/namespaces/{namespace}/hpotrials/{name}/status")
    assert own["metadata"]["name"] == name
    as_trial.close()

    # With full rights on the status, forge another trial's phase: the operator writes back Running.
    target = other["metadata"]["name"]
    kube.patch(
        f"{GROUP_PATH}/namespaces/{namespace}/hpotrials/{target}/status",
        {"status": {"phase": "Failed", "reason": "Forged", "exitCode": 1}},
    )

    def restored() -> bool:
        status = kube.get(f"{GROUP_PATH}/namespaces/{namespace}/hpotrials/{target}").get("status") or {}
        return status.get("reason") != "Forged"

    wait_for(restored, 20, 0.2, f"the operator writes {target}'s status back")
    for name in ("alpha", "beta"):
        study = wait_phase(kube, namespace, name, {"Succeeded", "Failed"}, 90)
        assert study["status"]["phase"] == "Succeeded", (name, study["status"])
    beta = get_study(kube, namespace, "beta")
    assert beta["status"]["trials"]["failed"] == 0, beta["status"]["trials"]
    final = kube.get(f"{GROUP_PATH}/namespaces/{namespace}/hpotrials/{target}")
    assert final["status"].get("reason") != "Forged" and final["status"]["phase"] != "Failed"
